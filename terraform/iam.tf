# Service accounts and every grant archdeploy needs; README.md has the same list as a
# table, each grant with its reason. Grants are on the narrowest resource that exists when
# Terraform runs: a topic, a bucket, a secret, a repository, one function, one account.
# Project-level grants are only for things created later at run time (builds, Cloud Run
# services, Firestore documents, log entries). No basic role (owner, editor, viewer).

locals {
  service_accounts = {
    dispatcher  = "archdeploy-dispatcher: turns Pub/Sub DeployRequests into runs"
    api         = "archdeploy-api: the HTTP door (POST a request, GET a run)"
    webhook     = "archdeploy-webhook: GitHub push webhook"
    worker      = "archdeploy-worker: builds and deploys one service per task"
    aggregator  = "archdeploy-aggregator, -build-events and -sweep: moves runs on"
    scheduler   = "Cloud Scheduler's identity when it calls archdeploy-sweep"
    pubsub-push = "Pub/Sub's identity when it pushes to archdeploy's event functions"
    fn-builder  = "Cloud Build's identity when it builds archdeploy's own functions"
    builder     = "Cloud Build's identity when it builds the images of deployed services"
    runtime     = "Default identity for services archdeploy deploys (no roles)"
  }

  # Who may publish where. Dispatching (dispatch_request) creates a run and publishes its
  # tasks, and publishes a result when the run ends at once (an invalid request, nothing
  # to build); the webhook only queues a DeployRequest for the dispatcher; the worker
  # reports completions; the aggregator functions release the next tasks and publish the
  # result.
  topic_publishers = {
    "dispatcher/tasks"   = { account = "dispatcher", topic = "tasks" }
    "dispatcher/results" = { account = "dispatcher", topic = "results" }
    "api/tasks"          = { account = "api", topic = "tasks" }
    "api/results"        = { account = "api", topic = "results" }
    "webhook/requests"   = { account = "webhook", topic = "requests" }
    "worker/completions" = { account = "worker", topic = "completions" }
    "aggregator/tasks"   = { account = "aggregator", topic = "tasks" }
    "aggregator/results" = { account = "aggregator", topic = "results" }
  }

  # Firestore: read and write runs; the webhook only looks a run up (duplicate delivery).
  datastore_roles = {
    dispatcher = "roles/datastore.user"
    api        = "roles/datastore.user"
    webhook    = "roles/datastore.viewer"
    worker     = "roles/datastore.user"
    aggregator = "roles/datastore.user"
  }

  # Secret Manager: "account/secret key" => secret. The GitHub token reads github://
  # architectures (dispatcher, api) and build sources (worker).
  secret_accessors = merge(
    { "webhook/webhook_secret" = google_secret_manager_secret.webhook_secret.secret_id },
    local.github_token_given ? {
      for account in ["dispatcher", "api", "worker"] :
      "${account}/github_token" => google_secret_manager_secret.github_token.secret_id
    } : {},
  )

  # gs:// architectures: the functions that load a request's architecture may read them.
  architecture_readers = {
    for pair in setproduct(["dispatcher", "api"], var.architecture_buckets) :
    "${pair[0]}/${pair[1]}" => { account = pair[0], bucket = pair[1] }
  }

  # Accounts the worker deploys Cloud Run services as (it needs actAs on each). Emails are
  # spelled out, not read from the resource, so they are known when Terraform plans.
  runtime_account  = "archdeploy-runtime@${var.project_id}.iam.gserviceaccount.com"
  runtime_accounts = toset(concat([local.runtime_account], var.runtime_service_accounts))

  # The account Cloud Build runs image builds as: the worker names it in every build
  # (Build.service_account), so it needs actAs on it, whichever account it is.
  build_account_needs_act_as = true

  sa_member = { for k, sa in google_service_account.sa : k => "serviceAccount:${sa.email}" }
}

resource "google_service_account" "sa" {
  for_each = local.service_accounts

  account_id   = "archdeploy-${each.key}"
  display_name = "archdeploy ${each.key}"
  description  = each.value

  depends_on = [google_project_service.apis]
}

# Resource name of a service account from its email: accounts of the form
# NAME@PROJECT.iam.gserviceaccount.com live in PROJECT; Google's default accounts
# (…@developer…, …@cloudbuild…) in this project.
locals {
  account_resource = {
    for email in setunion(local.runtime_accounts, [local.cloud_build_account]) : email => format(
      "projects/%s/serviceAccounts/%s",
      can(regex("@([a-z0-9-]+)\\.iam\\.gserviceaccount\\.com$", email)) ? regex("@([a-z0-9-]+)\\.iam\\.gserviceaccount\\.com$", email)[0] : var.project_id,
      email,
    )
  }
}

# --- Firestore -------------------------------------------------------------------------

resource "google_project_iam_member" "datastore" {
  for_each = local.datastore_roles

  project = var.project_id
  role    = each.value
  member  = local.sa_member[each.key]

  dynamic "condition" {
    for_each = var.restrict_datastore_to_database ? [local.firestore_database_name] : []
    content {
      title       = "archdeploy-database-only"
      description = "Only archdeploy's Firestore database"
      expression  = "resource.name == \"${condition.value}\""
    }
  }
}

# --- Pub/Sub ---------------------------------------------------------------------------

resource "google_pubsub_topic_iam_member" "publishers" {
  for_each = local.topic_publishers

  topic  = google_pubsub_topic.main[each.value.topic].name
  role   = "roles/pubsub.publisher"
  member = local.sa_member[each.value.account]
}

resource "google_pubsub_topic_iam_member" "request_publishers" {
  for_each = toset(var.request_publishers)

  topic  = google_pubsub_topic.main["requests"].name
  role   = "roles/pubsub.publisher"
  member = each.value
}

# Dead-lettering is done by the Pub/Sub service agent: it must be able to publish to the
# dead-letter topic and to acknowledge on the source subscription.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  for_each = local.consumers

  topic  = google_pubsub_topic.dead_letter[each.key].name
  role   = "roles/pubsub.publisher"
  member = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  for_each = local.consumers

  subscription = google_pubsub_subscription.push[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

# The Pub/Sub service agent mints the push OIDC tokens as archdeploy-pubsub-push (needed
# explicitly in projects created before April 2021; scoped to this one account).
resource "google_service_account_iam_member" "pubsub_token_creator" {
  service_account_id = google_service_account.sa["pubsub-push"].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent
}

# --- who may invoke which function (Cloud Run invoker on that function only) -------------

resource "google_cloud_run_service_iam_member" "pubsub_push" {
  for_each = local.consumers

  location = var.region
  service  = google_cloudfunctions2_function.fn[each.key].service_config[0].service
  role     = "roles/run.invoker"
  member   = local.sa_member["pubsub-push"]
}

# Pub/Sub pushes dead-lettered task and completion messages to the dead-letters function.
resource "google_cloud_run_service_iam_member" "pubsub_push_dead_letters" {
  location = var.region
  service  = google_cloudfunctions2_function.fn["dead-letters"].service_config[0].service
  role     = "roles/run.invoker"
  member   = local.sa_member["pubsub-push"]
}

resource "google_cloud_run_service_iam_member" "scheduler_sweep" {
  location = var.region
  service  = google_cloudfunctions2_function.fn["sweep"].service_config[0].service
  role     = "roles/run.invoker"
  member   = local.sa_member["scheduler"]
}

resource "google_cloud_run_service_iam_member" "api_invokers" {
  for_each = toset(var.api_invokers)

  location = var.region
  service  = google_cloudfunctions2_function.fn["api"].service_config[0].service
  role     = "roles/run.invoker"
  member   = each.value
}

# The one public function: GitHub cannot present a Google identity. The webhook checks the
# X-Hub-Signature-256 HMAC (constant-time) before it reads anything else.
resource "google_cloud_run_service_iam_member" "webhook_public" {
  location = var.region
  service  = google_cloudfunctions2_function.fn["webhook"].service_config[0].service
  role     = "roles/run.invoker"
  member   = "allUsers"
}

# --- secrets -----------------------------------------------------------------------------

resource "google_secret_manager_secret_iam_member" "accessors" {
  for_each = local.secret_accessors

  secret_id = each.value
  role      = "roles/secretmanager.secretAccessor"
  member    = local.sa_member[split("/", each.key)[0]]
}

# --- architecture files in Cloud Storage ---------------------------------------------------

resource "google_storage_bucket_iam_member" "architecture_readers" {
  for_each = local.architecture_readers

  bucket = each.value.bucket
  role   = "roles/storage.objectViewer"
  member = local.sa_member[each.value.account]
}

# --- the worker: builds and deploys ------------------------------------------------------

resource "google_project_iam_member" "worker" {
  for_each = toset([
    "roles/cloudbuild.builds.editor", # create builds and read their status
    "roles/run.developer",            # create, update and delete the deployed Cloud Run services
  ])

  project = var.project_id
  role    = each.value
  member  = local.sa_member["worker"]
}

# Cloud Run refuses callers without roles/run.invoker, so the worker grants it to each
# service's account on the services whose URLs it is handed (the director's, today), and
# to allUsers for `deployment.public` services. roles/run.developer "Can get but not set
# IAM policies" (run/docs/securing/managing-access); roles/run.admin could, but also
# everything else. This role holds just the two permissions.
resource "google_project_iam_custom_role" "run_invoker_admin" {
  role_id     = "archdeployRunInvokerAdmin"
  title       = "archdeploy: set who may invoke deployed services"
  description = "Read and set the IAM policy of Cloud Run services (invoker bindings)."
  permissions = ["run.services.getIamPolicy", "run.services.setIamPolicy"]
}

# A release checks each staged revision on its tag URL before moving traffic, with the
# worker's own ID token (shared/adapters/gcp/run_checks.py): Cloud Run admits it only if the
# worker holds roles/run.invoker on the service, which it cannot know of before deploying.
resource "google_project_iam_member" "worker_run_invoker" {
  project = var.project_id
  role    = "roles/run.invoker"
  member  = local.sa_member["worker"]
}

resource "google_project_iam_member" "worker_run_invoker_admin" {
  project = var.project_id
  role    = google_project_iam_custom_role.run_invoker_admin.id
  member  = local.sa_member["worker"]
}

# Cancelling submitted builds: the aggregator (a failed build with
# cancel_builds_on_failure, the deadline sweep), the dispatcher and api (a run
# superseded or cancelled). There is no narrower predefined role that can cancel.
resource "google_project_iam_member" "build_cancellers" {
  for_each = toset(["aggregator", "dispatcher", "api"])

  project = var.project_id
  role    = "roles/cloudbuild.builds.editor"
  member  = local.sa_member[each.value]
}

resource "google_storage_bucket_iam_member" "worker_sources" {
  for_each = toset([
    "roles/storage.objectAdmin",        # stage build sources (upload, check for an existing object)
    "roles/storage.legacyBucketReader", # storage.buckets.get: the worker checks the bucket exists
  ])

  bucket = google_storage_bucket.sources.name
  role   = each.value
  member = local.sa_member["worker"]
}

resource "google_service_account_iam_member" "worker_act_as_runtime" {
  for_each = local.runtime_accounts

  service_account_id = local.account_resource[each.value]
  role               = "roles/iam.serviceAccountUser"
  member             = local.sa_member["worker"]

  depends_on = [google_service_account.sa]
}

resource "google_service_account_iam_member" "worker_act_as_builder" {
  count = local.build_account_needs_act_as ? 1 : 0

  service_account_id = local.account_resource[local.cloud_build_account]
  role               = "roles/iam.serviceAccountUser"
  member             = local.sa_member["worker"]

  depends_on = [google_service_account.sa] # the build account may be created here
}

# --- Cloud Build, building deployed services' images -------------------------------------

resource "google_artifact_registry_repository_iam_member" "image_builder" {
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.writer"
  member     = "serviceAccount:${local.cloud_build_account}"

  depends_on = [google_service_account.sa] # the build account may be created here
}

resource "google_storage_bucket_iam_member" "image_builder_sources" {
  bucket = google_storage_bucket.sources.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${local.cloud_build_account}"

  depends_on = [google_service_account.sa] # the build account may be created here
}

resource "google_project_iam_member" "image_builder_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = "serviceAccount:${local.cloud_build_account}"

  depends_on = [google_service_account.sa] # the build account may be created here
}

# --- Cloud Build, building archdeploy's own functions -------------------------------------

resource "google_project_iam_member" "fn_builder" {
  for_each = toset([
    "roles/logging.logWriter", # build logs
    # Cloud Functions copies the source into its own gcf-v2-sources-* bucket, created on
    # first deploy, and the build reads it there: Google documents this role for a
    # function's build account.
    "roles/storage.objectAdmin",
  ])

  project = var.project_id
  role    = each.value
  member  = local.sa_member["fn-builder"]
}

resource "google_artifact_registry_repository_iam_member" "fn_builder" {
  location   = google_artifact_registry_repository.functions.location
  repository = google_artifact_registry_repository.functions.name
  role       = "roles/artifactregistry.writer"
  member     = local.sa_member["fn-builder"]
}

# Dead-lettering from the dead-letter handlers' own subscriptions into the parking topic.
resource "google_pubsub_topic_iam_member" "parking_publisher" {
  topic  = google_pubsub_topic.dead_letter_parking.name
  role   = "roles/pubsub.publisher"
  member = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_handler_subscriber" {
  for_each = local.dead_letter_handled

  subscription = google_pubsub_subscription.dead_letter_push[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}
