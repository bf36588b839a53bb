# The deadline sweep: every minute, Cloud Scheduler calls archdeploy-sweep with an OIDC
# token of archdeploy-scheduler, the one account allowed to invoke it. A task that never
# reports is failed there, so every run finishes.

resource "google_cloud_scheduler_job" "sweep" {
  name        = "archdeploy-sweep"
  description = "Fails archdeploy tasks past their deadline and moves their runs on."
  region      = local.scheduler_region
  schedule    = var.sweep_schedule
  time_zone   = "Etc/UTC"
  # Scheduler accepts 15 s to 30 min; the function stops at its own timeout anyway.
  attempt_deadline = "${min(1800, max(15, local.function_config["sweep"].timeout_seconds))}s"

  # The next run is a minute away: a failed sweep is not retried.
  retry_config {
    retry_count = 0
  }

  http_target {
    http_method = "POST"
    uri         = google_cloudfunctions2_function.fn["sweep"].service_config[0].uri

    oidc_token {
      service_account_email = google_service_account.sa["scheduler"].email
      audience              = google_cloudfunctions2_function.fn["sweep"].service_config[0].uri
    }
  }

  depends_on = [
    google_project_service.apis,
    google_cloud_run_service_iam_member.scheduler_sweep,
  ]
}
