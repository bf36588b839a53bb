output "function_urls" {
  description = "URL of every function, by key (dispatcher, api, webhook, worker, aggregator, build-events, sweep)."
  value       = { for k, f in google_cloudfunctions2_function.fn : k => f.service_config[0].uri }
}

output "api_url" {
  description = "archdeploy-api: POST a DeployRequest, GET /runs/RUN_ID. Send `Authorization: Bearer $(gcloud auth print-identity-token)` as one of var.api_invokers."
  value       = google_cloudfunctions2_function.fn["api"].service_config[0].uri
}

output "webhook_url" {
  description = "Payload URL of the GitHub webhook (content type application/json, push events, secret: the webhook_secret output)."
  value       = google_cloudfunctions2_function.fn["webhook"].service_config[0].uri
}

output "webhook_secret" {
  description = "The GitHub webhook secret to paste into the repository's webhook settings."
  value       = google_secret_manager_secret_version.webhook_secret.secret_data
  sensitive   = true
}

output "topics" {
  description = "Topic names by role: requests, tasks, completions, results, build_events."
  value       = local.topic_names
}

output "dead_letter_subscriptions" {
  description = "Where poison messages end up, by consumer: pull from these to inspect or replay."
  value       = { for k, s in google_pubsub_subscription.dead_letter : k => s.name }
}

output "source_bucket" {
  description = "ARCHDEPLOY_SOURCE_BUCKET: where workers stage build sources."
  value       = google_storage_bucket.sources.name
}

output "image_repository" {
  description = "Where Cloud Build pushes the deployed services' images."
  value       = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
}

output "runtime_service_account" {
  description = "A role-less identity for deployed services: name it as a service's service_account in the architecture file."
  value       = google_service_account.sa["runtime"].email
}

output "service_accounts" {
  description = "archdeploy's service accounts by role."
  value       = { for k, sa in google_service_account.sa : k => sa.email }
}

output "settings_environment" {
  description = "The ARCHDEPLOY_* variables the functions run with: export them to point the CLI at this installation."
  value       = local.function_env
}
