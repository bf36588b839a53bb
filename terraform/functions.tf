# The seven 2nd-gen functions. Three source folders (functions/dispatcher, worker,
# aggregator) hold the entry points; each function runs one entry point of one folder.
#
# trigger = "pubsub": fed by a push subscription this configuration owns (pubsub.tf), with
#   retries, backoff and a dead-letter topic. The function is deployed as an HTTP function;
#   functions-framework turns the Pub/Sub push body into the CloudEvent the
#   `@functions_framework.cloud_event` entry point expects.
# trigger = "http": called directly: the API by IAM-authenticated callers, the webhook by
#   GitHub, the sweep by Cloud Scheduler.

locals {
  # name: the function; source: its folder under functions/; entry_point: the Python
  # function in that folder's main.py; trigger: "pubsub" (push subscription on `topic`, a
  # key of local.topic_names) or "http"; identity: key of the service account it runs as
  # (iam.tf); secrets: environment variable => key of local.secrets (secrets.tf).
  functions = {
    dispatcher = {
      name        = "archdeploy-dispatcher"
      description = "Turns a DeployRequest from the requests topic into a run and its build tasks."
      source      = "dispatcher"
      entry_point = "dispatch"
      trigger     = "pubsub"
      topic       = "requests"
      identity    = "dispatcher"
      # reads github:// architectures (what the webhook queues)
      secrets = { ARCHDEPLOY_GITHUB_TOKEN = "github_token" }
    }
    api = {
      name        = "archdeploy-api"
      description = "HTTP: POST a DeployRequest, GET a run. IAM-authenticated callers only."
      source      = "dispatcher"
      entry_point = "dispatch_http"
      trigger     = "http"
      topic       = null
      identity    = "api"
      # reads github:// architectures posted to it
      secrets = { ARCHDEPLOY_GITHUB_TOKEN = "github_token" }
    }
    webhook = {
      name        = "archdeploy-webhook"
      description = "GitHub push webhook, verified by its X-Hub-Signature-256 HMAC."
      source      = "dispatcher"
      entry_point = "webhook"
      trigger     = "http"
      topic       = null
      identity    = "webhook"
      # Only the HMAC secret: the webhook queues a github:// request and never calls GitHub.
      secrets = { ARCHDEPLOY_WEBHOOK_SECRET = "webhook_secret" }
    }
    worker = {
      name        = "archdeploy-worker"
      description = "Builds (Cloud Build) or deploys (Cloud Run) the one service of a task."
      source      = "worker"
      entry_point = "run_task"
      trigger     = "pubsub"
      topic       = "tasks"
      identity    = "worker"
      # fetches github:// build sources
      secrets = { ARCHDEPLOY_GITHUB_TOKEN = "github_token" }
    }
    aggregator = {
      name        = "archdeploy-aggregator"
      description = "Applies task completions and moves each run to its next phase."
      source      = "aggregator"
      entry_point = "aggregate"
      trigger     = "pubsub"
      topic       = "completions"
      identity    = "aggregator"
      secrets     = {}
    }
    build-events = {
      name        = "archdeploy-build-events"
      description = "Turns finished Cloud Build builds (cloud-builds topic) into task completions."
      source      = "aggregator"
      entry_point = "build_events"
      trigger     = "pubsub"
      topic       = "build_events"
      identity    = "aggregator"
      secrets     = {}
    }
    dead-letters = {
      name        = "archdeploy-dead-letters"
      description = "Messages Pub/Sub gave up on: their tasks fail, so their runs finish."
      source      = "aggregator"
      entry_point = "dead_letters"
      trigger     = "dead-letter"
      topic       = null
      identity    = "aggregator"
      secrets     = {}
    }
    sweep = {
      name        = "archdeploy-sweep"
      description = "Fails tasks past their deadline so every run finishes; called by Cloud Scheduler."
      source      = "aggregator"
      entry_point = "sweep"
      trigger     = "http"
      topic       = null
      identity    = "aggregator"
      secrets     = {}
    }
  }

  # Sizing defaults; var.function_settings overrides any of them per function. Event
  # functions stay at or under 540 s; more than one request at a time needs a whole cpu.
  function_defaults = {
    dispatcher   = { memory = "512M", cpu = "1", timeout_seconds = 300, min_instances = 0, max_instances = 10, concurrency = 8 }
    api          = { memory = "512M", cpu = "1", timeout_seconds = 60, min_instances = 0, max_instances = 5, concurrency = 8 }
    webhook      = { memory = "512M", cpu = "1", timeout_seconds = 60, min_instances = 0, max_instances = 5, concurrency = 8 }
    worker       = { memory = "1Gi", cpu = "1", timeout_seconds = 540, min_instances = 0, max_instances = 20, concurrency = 8 }
    aggregator   = { memory = "512M", cpu = "1", timeout_seconds = 300, min_instances = 0, max_instances = 10, concurrency = 8 }
    build-events = { memory = "512M", cpu = "1", timeout_seconds = 120, min_instances = 0, max_instances = 10, concurrency = 8 }
    dead-letters = { memory = "512M", cpu = "1", timeout_seconds = 120, min_instances = 0, max_instances = 2, concurrency = 8 }
    sweep        = { memory = "512M", cpu = "1", timeout_seconds = 300, min_instances = 0, max_instances = 1, concurrency = 1 }
  }

  function_config = {
    for k, d in local.function_defaults : k => {
      memory          = coalesce(try(var.function_settings[k].memory, null), d.memory)
      cpu             = coalesce(try(var.function_settings[k].cpu, null), d.cpu)
      timeout_seconds = coalesce(try(var.function_settings[k].timeout_seconds, null), d.timeout_seconds)
      min_instances   = coalesce(try(var.function_settings[k].min_instances, null), d.min_instances)
      max_instances   = coalesce(try(var.function_settings[k].max_instances, null), d.max_instances)
      concurrency     = coalesce(try(var.function_settings[k].concurrency, null), d.concurrency)
    }
  }

  # The settings model (shared/settings.py) reads these. Every function gets all of them:
  # each one builds the same Settings at start, and the gcp backend requires a project and
  # a source bucket everywhere. Secrets are added per function (local.functions[*].secrets).
  function_env = {
    ARCHDEPLOY_BACKEND                   = "gcp"
    ARCHDEPLOY_PROJECT                   = var.project_id
    ARCHDEPLOY_REGION                    = var.region
    ARCHDEPLOY_TOPIC_REQUESTS            = google_pubsub_topic.main["requests"].name
    ARCHDEPLOY_TOPIC_TASKS               = google_pubsub_topic.main["tasks"].name
    ARCHDEPLOY_TOPIC_COMPLETIONS         = google_pubsub_topic.main["completions"].name
    ARCHDEPLOY_TOPIC_RESULTS             = google_pubsub_topic.main["results"].name
    ARCHDEPLOY_FIRESTORE_DATABASE        = var.firestore_database
    ARCHDEPLOY_FIRESTORE_COLLECTION      = var.firestore_collection
    ARCHDEPLOY_SOURCE_BUCKET             = google_storage_bucket.sources.name
    ARCHDEPLOY_IMAGE_REPO                = google_artifact_registry_repository.images.repository_id
    ARCHDEPLOY_DEFAULT_SERVICE_ACCOUNT   = local.runtime_account
    ARCHDEPLOY_BUILD_SERVICE_ACCOUNT     = local.cloud_build_account
    ARCHDEPLOY_BUILD_CONCURRENCY         = tostring(var.build_concurrency)
    ARCHDEPLOY_DEPLOY_CONCURRENCY        = tostring(var.deploy_concurrency)
    ARCHDEPLOY_BUILD_TIMEOUT_SECONDS     = tostring(var.build_timeout_seconds)
    ARCHDEPLOY_DEPLOY_TIMEOUT_SECONDS    = tostring(var.deploy_timeout_seconds)
    ARCHDEPLOY_ASYNC_BUILDS              = "true"
    ARCHDEPLOY_WEBHOOK_BRANCHES          = jsonencode(var.webhook_branches)
    ARCHDEPLOY_WEBHOOK_ARCHITECTURE_PATH = var.webhook_architecture_path
    ARCHDEPLOY_GITHUB_API_URL            = var.github_api_url
  }
}

resource "google_cloudfunctions2_function" "fn" {
  for_each = local.functions

  name        = each.value.name
  location    = var.region
  description = each.value.description

  build_config {
    runtime           = "python311"
    entry_point       = each.value.entry_point
    service_account   = google_service_account.sa["fn-builder"].id
    docker_repository = google_artifact_registry_repository.functions.id

    source {
      storage_source {
        bucket = google_storage_bucket.functions.name
        object = google_storage_bucket_object.function_source[each.value.source].name
      }
    }
  }

  service_config {
    available_memory                 = local.function_config[each.key].memory
    available_cpu                    = local.function_config[each.key].cpu
    timeout_seconds                  = local.function_config[each.key].timeout_seconds
    min_instance_count               = local.function_config[each.key].min_instances
    max_instance_count               = local.function_config[each.key].max_instances
    max_instance_request_concurrency = local.function_config[each.key].concurrency
    # Pub/Sub push and GitHub reach the functions over the internet; every function but the
    # webhook still refuses any caller without run.invoker (iam.tf).
    ingress_settings               = "ALLOW_ALL"
    all_traffic_on_latest_revision = true
    service_account_email          = google_service_account.sa[each.value.identity].email
    environment_variables          = local.function_env

    dynamic "secret_environment_variables" {
      for_each = {
        for env_name, secret_key in each.value.secrets : env_name => local.secrets[secret_key]
        if local.secrets[secret_key].enabled
      }
      content {
        key        = secret_environment_variables.key
        project_id = var.project_id
        secret     = secret_environment_variables.value.secret_id
        version    = secret_environment_variables.value.version
      }
    }
  }

  lifecycle {
    precondition {
      condition     = local.function_config[each.key].concurrency == 1 || tonumber(local.function_config[each.key].cpu) >= 1
      error_message = "${each.value.name}: more than one concurrent request per instance needs cpu >= 1 (function_settings)."
    }
    precondition {
      condition     = each.key != "worker" || var.deploy_timeout_seconds < local.function_config["worker"].timeout_seconds
      error_message = "deploy_timeout_seconds must be below the worker's timeout_seconds, or the worker is stopped mid-deploy."
    }
  }

  depends_on = [
    google_project_service.apis,
    google_firestore_database.runs,
    google_project_iam_member.fn_builder,
    google_artifact_registry_repository_iam_member.fn_builder,
    google_secret_manager_secret_iam_member.accessors,
  ]
}
