# Topics, and how the event functions are fed.
#
# Why push subscriptions and not Eventarc triggers: an Eventarc trigger (a function's
# event_trigger) creates and owns its Pub/Sub subscription, and neither the trigger nor the
# function resource can give that subscription a dead-letter policy, a bounded backoff or
# an expiration policy. archdeploy needs all three: delivery is at-least-once, a failure
# is retried with backoff, and a poison message is set aside after max_delivery_attempts
# instead of being retried for the whole retention period. So each event function gets a
# push subscription owned here, authenticated with an OIDC token of a dedicated service
# account that may invoke these functions and nothing else.

locals {
  # The settings model's defaults (shared/settings.py): the functions receive these names.
  topics = {
    requests    = "archdeploy-requests"
    tasks       = "archdeploy-tasks"
    completions = "archdeploy-completions"
    results     = "archdeploy-results"
  }
  # Cloud Build publishes build status changes to a topic of exactly this name.
  cloud_builds_topic = "cloud-builds"

  topic_names = merge(local.topics, { build_events = local.cloud_builds_topic })
  topic_ids = merge(
    { for k, t in google_pubsub_topic.main : k => t.id },
    { build_events = "projects/${var.project_id}/topics/${local.cloud_builds_topic}" },
  )

  # Event functions and the topic each consumes.
  consumers = { for k, f in local.functions : k => f if f.trigger == "pubsub" }

  # Cloud Build publishes every status change of every build in the project (QUEUED,
  # WORKING, ...), with the status as a message attribute. Only finished builds matter, so
  # the rest never reach the function; it still ignores anything else it is handed.
  terminal_build_statuses = ["SUCCESS", "FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED", "EXPIRED"]
  build_status_filter     = join(" OR ", [for s in local.terminal_build_statuses : "attributes.status = \"${s}\""])
}

resource "google_pubsub_topic" "main" {
  for_each = local.topics

  name = each.value

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "cloud_builds" {
  count = var.create_cloud_builds_topic ? 1 : 0

  name = local.cloud_builds_topic

  depends_on = [google_project_service.apis]
}

# One dead-letter topic per consumer, each with a pull subscription that keeps what lands
# there (a topic without a subscription drops its messages) for inspection and replay.
resource "google_pubsub_topic" "dead_letter" {
  for_each = local.consumers

  name = "${each.value.name}-dead-letter"

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_subscription" "dead_letter" {
  for_each = local.consumers

  name                       = "${each.value.name}-dead-letter"
  topic                      = google_pubsub_topic.dead_letter[each.key].id
  ack_deadline_seconds       = 60
  message_retention_duration = "${var.dead_letter_retention_days * 86400}s"
  retain_acked_messages      = false

  expiration_policy {
    ttl = "" # never expires, however quiet
  }
}

resource "google_pubsub_subscription" "push" {
  for_each = local.consumers

  name  = each.value.name
  topic = local.topic_ids[each.value.topic]

  # For push, the ack deadline is how long Pub/Sub waits for the function to answer.
  ack_deadline_seconds       = min(600, max(10, local.function_config[each.key].timeout_seconds))
  message_retention_duration = "604800s"
  filter                     = each.key == "build-events" ? local.build_status_filter : null

  push_config {
    # The /projects/P/topics/T path gives the CloudEvent that functions-framework builds
    # from the push body its proper source.
    push_endpoint = "${google_cloudfunctions2_function.fn[each.key].service_config[0].uri}/projects/${var.project_id}/topics/${local.topic_names[each.value.topic]}"

    oidc_token {
      service_account_email = google_service_account.sa["pubsub-push"].email
      audience              = google_cloudfunctions2_function.fn[each.key].service_config[0].uri
    }
  }

  retry_policy {
    minimum_backoff = "${var.retry_minimum_backoff_seconds}s"
    maximum_backoff = "${var.retry_maximum_backoff_seconds}s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter[each.key].id
    max_delivery_attempts = var.max_delivery_attempts
  }

  expiration_policy {
    ttl = "" # the default deletes a subscription after 31 idle days
  }

  lifecycle {
    precondition {
      condition     = var.retry_minimum_backoff_seconds <= var.retry_maximum_backoff_seconds
      error_message = "retry_minimum_backoff_seconds must not exceed retry_maximum_backoff_seconds."
    }
  }

  depends_on = [
    google_pubsub_topic.cloud_builds,
    google_cloud_run_service_iam_member.pubsub_push,
    google_service_account_iam_member.pubsub_token_creator,
    google_pubsub_topic_iam_member.dead_letter_publisher,
  ]
}

# Task and completion messages that exhausted their deliveries are also pushed to the
# dead-letters function, which fails the task (or moves the run on), so a dead-lettered
# task fails its run instead of hanging it. The pull subscriptions above keep a copy.
locals {
  dead_letter_handled = { for k in ["worker", "aggregator", "build-events"] : k => local.consumers[k] }
}

resource "google_pubsub_topic" "dead_letter_parking" {
  name = "archdeploy-dead-letters-parking"

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_subscription" "dead_letter_parking" {
  name                       = "archdeploy-dead-letters-parking"
  topic                      = google_pubsub_topic.dead_letter_parking.id
  message_retention_duration = "${var.dead_letter_retention_days * 86400}s"

  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription" "dead_letter_push" {
  for_each = local.dead_letter_handled

  name                 = "${each.value.name}-dead-letter-handler"
  topic                = google_pubsub_topic.dead_letter[each.key].id
  ack_deadline_seconds = 120

  push_config {
    push_endpoint = "${google_cloudfunctions2_function.fn["dead-letters"].service_config[0].uri}/projects/${var.project_id}/topics/${google_pubsub_topic.dead_letter[each.key].name}"

    oidc_token {
      service_account_email = google_service_account.sa["pubsub-push"].email
      audience              = google_cloudfunctions2_function.fn["dead-letters"].service_config[0].uri
    }
  }

  retry_policy {
    minimum_backoff = "${var.retry_minimum_backoff_seconds}s"
    maximum_backoff = "${var.retry_maximum_backoff_seconds}s"
  }

  # What even the dead-letters function cannot handle is parked for a person.
  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter_parking.id
    max_delivery_attempts = var.max_delivery_attempts
  }

  expiration_policy {
    ttl = ""
  }

  depends_on = [google_cloud_run_service_iam_member.pubsub_push_dead_letters]
}
