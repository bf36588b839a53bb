# --- where -------------------------------------------------------------------------------

variable "project_id" {
  description = "Google Cloud project that runs archdeploy (and, by default, the services it deploys)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project ID: 6 to 30 lowercase letters, digits or hyphens, starting with a letter and not ending with a hyphen."
  }
}

variable "region" {
  description = "Region of the functions, the Artifact Registry repositories and, by default, the buckets, the Firestore database and the scheduler job; also ARCHDEPLOY_REGION, the default region of deployed services."
  type        = string
  default     = "europe-west1"

  validation {
    condition     = can(regex("^[a-z]+(-[a-z]+)+[0-9]+$", var.region))
    error_message = "region must be a Google Cloud region such as europe-west1 or us-central1."
  }
}

variable "scheduler_region" {
  description = "Region of the Cloud Scheduler job (null: var.region). Set it if Cloud Scheduler is not offered in var.region."
  type        = string
  default     = null

  validation {
    condition     = var.scheduler_region == null || can(regex("^[a-z]+(-[a-z]+)+[0-9]+$", var.scheduler_region))
    error_message = "scheduler_region must be null or a Google Cloud region such as europe-west1."
  }
}

variable "labels" {
  description = "Labels added to every resource that takes labels (app = \"archdeploy\" is always added)."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.labels : can(regex("^[a-z][a-z0-9_-]{0,62}$", k)) && can(regex("^[a-z0-9_-]{0,63}$", v))])
    error_message = "labels: keys must start with a lowercase letter; keys and values use lowercase letters, digits, _ and -, at most 63 characters."
  }
}

# --- storage -----------------------------------------------------------------------------

variable "bucket_location" {
  description = "Location of the two buckets (null: var.region)."
  type        = string
  default     = null
}

variable "source_bucket_name" {
  description = "Bucket where workers stage build sources, ARCHDEPLOY_SOURCE_BUCKET (null: \"<project_id>-archdeploy-sources\"). Bucket names are global."
  type        = string
  default     = null

  validation {
    condition     = var.source_bucket_name == null || can(regex("^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$", var.source_bucket_name))
    error_message = "source_bucket_name must be 3 to 63 lowercase letters, digits, dots, hyphens or underscores, starting and ending with a letter or digit."
  }
}

variable "source_retention_days" {
  description = "Staged build sources (objects under sources/ in the source bucket) are deleted after this many days."
  type        = number
  default     = 30

  validation {
    condition     = var.source_retention_days >= 1 && floor(var.source_retention_days) == var.source_retention_days
    error_message = "source_retention_days must be a whole number of days, at least 1."
  }
}

variable "force_destroy_buckets" {
  description = "Let `terraform destroy` delete the buckets even when they still hold objects."
  type        = bool
  default     = false
}

variable "image_repo" {
  description = "Artifact Registry docker repository that Cloud Build pushes deployed services' images to (ARCHDEPLOY_IMAGE_REPO)."
  type        = string
  default     = "archdeploy"

  validation {
    condition     = can(regex("^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$", var.image_repo))
    error_message = "image_repo must be a repository ID: lowercase letters, digits and hyphens, starting with a letter, at most 63 characters."
  }
}

# --- Firestore ---------------------------------------------------------------------------

variable "create_firestore_database" {
  description = "Create the Firestore database. Set false when the project already has it (a project's (default) database can exist only once)."
  type        = bool
  default     = true
}

variable "firestore_database" {
  description = "Firestore database ID (ARCHDEPLOY_FIRESTORE_DATABASE): \"(default)\" or a named database."
  type        = string
  default     = "(default)"

  validation {
    condition     = var.firestore_database == "(default)" || can(regex("^[a-z][a-z0-9-]{2,61}[a-z0-9]$", var.firestore_database))
    error_message = "firestore_database must be \"(default)\" or 4 to 63 lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "firestore_location" {
  description = "Firestore location, a region or a multi-region such as eur3 or nam5 (null: var.region). It cannot be changed later."
  type        = string
  default     = null
}

variable "firestore_collection" {
  description = "Top-level collection that holds the runs (ARCHDEPLOY_FIRESTORE_COLLECTION)."
  type        = string
  default     = "archdeploy_runs"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,100}$", var.firestore_collection))
    error_message = "firestore_collection must be 1 to 100 letters, digits, _ or -."
  }
}

variable "firestore_delete_protection" {
  description = "Turn on Firestore delete protection for a database this configuration creates."
  type        = bool
  default     = true
}

variable "restrict_datastore_to_database" {
  description = "Grant roles/datastore.user with an IAM condition naming archdeploy's database only. Turn off if your organisation's tooling rejects conditional bindings."
  type        = bool
  default     = true
}

# --- delivery ----------------------------------------------------------------------------

variable "max_delivery_attempts" {
  description = "Deliveries of one Pub/Sub message to a function before it is moved to that consumer's dead-letter topic."
  type        = number
  default     = 5

  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100 && floor(var.max_delivery_attempts) == var.max_delivery_attempts
    error_message = "max_delivery_attempts must be a whole number from 5 to 100 (Pub/Sub's limits)."
  }
}

variable "retry_minimum_backoff_seconds" {
  description = "Pub/Sub waits at least this long before redelivering a message a function failed."
  type        = number
  default     = 10

  validation {
    condition     = var.retry_minimum_backoff_seconds >= 0 && var.retry_minimum_backoff_seconds <= 600
    error_message = "retry_minimum_backoff_seconds must be between 0 and 600."
  }
}

variable "retry_maximum_backoff_seconds" {
  description = "Upper bound of Pub/Sub's exponential redelivery backoff."
  type        = number
  default     = 600

  validation {
    condition     = var.retry_maximum_backoff_seconds > 0 && var.retry_maximum_backoff_seconds <= 600
    error_message = "retry_maximum_backoff_seconds must be more than 0 and at most 600."
  }
}

variable "dead_letter_retention_days" {
  description = "How long dead-lettered messages are kept on the dead-letter subscriptions for inspection."
  type        = number
  default     = 7

  validation {
    condition     = var.dead_letter_retention_days >= 1 && var.dead_letter_retention_days <= 31 && floor(var.dead_letter_retention_days) == var.dead_letter_retention_days
    error_message = "dead_letter_retention_days must be a whole number from 1 to 31."
  }
}

variable "create_cloud_builds_topic" {
  description = "Create the `cloud-builds` topic Cloud Build publishes build status to. Set false when the project already has it."
  type        = bool
  default     = true
}

variable "sweep_schedule" {
  description = "Cron schedule (UTC) of the deadline sweep that fails tasks which never reported."
  type        = string
  default     = "* * * * *"

  validation {
    condition     = length(split(" ", trimspace(var.sweep_schedule))) == 5
    error_message = "sweep_schedule must be a five-field cron expression such as \"* * * * *\"."
  }
}

# --- the functions -----------------------------------------------------------------------

variable "function_settings" {
  description = <<-EOT
    Per-function overrides of memory, cpu, timeout_seconds, min_instances, max_instances and
    concurrency, keyed by dispatcher, api, webhook, worker, aggregator, build-events, sweep.
    Unset attributes keep the defaults in functions.tf. More than one concurrent request per
    instance needs at least one cpu.
  EOT
  type = map(object({
    memory          = optional(string)
    cpu             = optional(string)
    timeout_seconds = optional(number)
    min_instances   = optional(number)
    max_instances   = optional(number)
    concurrency     = optional(number)
  }))
  default = {}

  validation {
    condition     = alltrue([for k in keys(var.function_settings) : contains(["dispatcher", "api", "webhook", "worker", "aggregator", "build-events", "sweep"], k)])
    error_message = "function_settings keys must be among: dispatcher, api, webhook, worker, aggregator, build-events, sweep."
  }
  validation {
    # Pub/Sub waits at most 600 s for a push; event functions are capped at 540 s.
    condition     = alltrue([for v in values(var.function_settings) : v.timeout_seconds == null ? true : (v.timeout_seconds >= 1 && v.timeout_seconds <= 540)])
    error_message = "function_settings[*].timeout_seconds must be from 1 to 540."
  }
  validation {
    condition     = alltrue([for v in values(var.function_settings) : v.max_instances == null ? true : v.max_instances >= 1])
    error_message = "function_settings[*].max_instances must be at least 1."
  }
  validation {
    condition     = alltrue([for v in values(var.function_settings) : v.min_instances == null ? true : v.min_instances >= 0])
    error_message = "function_settings[*].min_instances must be 0 or more."
  }
  validation {
    condition     = alltrue([for v in values(var.function_settings) : v.concurrency == null ? true : (v.concurrency >= 1 && v.concurrency <= 1000)])
    error_message = "function_settings[*].concurrency must be from 1 to 1000."
  }
  validation {
    condition     = alltrue([for v in values(var.function_settings) : v.memory == null ? true : can(regex("^[0-9]+(M|Mi|G|Gi)$", v.memory))])
    error_message = "function_settings[*].memory must look like 512M, 1Gi or 2G."
  }
}

variable "build_concurrency" {
  description = "Image builds at once across all workers (ARCHDEPLOY_BUILD_CONCURRENCY)."
  type        = number
  default     = 10

  validation {
    condition     = var.build_concurrency >= 1 && floor(var.build_concurrency) == var.build_concurrency
    error_message = "build_concurrency must be a whole number, at least 1."
  }
}

variable "deploy_concurrency" {
  description = "Cloud Run deploys at once across all workers (ARCHDEPLOY_DEPLOY_CONCURRENCY)."
  type        = number
  default     = 20

  validation {
    condition     = var.deploy_concurrency >= 1 && floor(var.deploy_concurrency) == var.deploy_concurrency
    error_message = "deploy_concurrency must be a whole number, at least 1."
  }
}

variable "build_timeout_seconds" {
  description = "Cloud Build timeout of one image build (ARCHDEPLOY_BUILD_TIMEOUT_SECONDS). Builds are asynchronous, so this may exceed the worker's timeout."
  type        = number
  default     = 1200

  validation {
    condition     = var.build_timeout_seconds > 0 && var.build_timeout_seconds <= 86400
    error_message = "build_timeout_seconds must be more than 0 and at most 86400."
  }
}

variable "deploy_timeout_seconds" {
  description = "How long a worker waits for a Cloud Run revision to become ready (ARCHDEPLOY_DEPLOY_TIMEOUT_SECONDS). Must stay below the worker function's timeout."
  type        = number
  default     = 480

  validation {
    condition     = var.deploy_timeout_seconds > 0
    error_message = "deploy_timeout_seconds must be more than 0."
  }
}

# --- who may call what -------------------------------------------------------------------

variable "api_invokers" {
  description = "IAM members allowed to call archdeploy-api (POST a DeployRequest, GET a run), e.g. \"user:ops@example.com\", \"group:deployers@example.com\", \"serviceAccount:ci@PROJECT.iam.gserviceaccount.com\"."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.api_invokers : can(regex("^(user|group|serviceAccount|domain|principal|principalSet):.+", m))])
    error_message = "api_invokers must be IAM members such as user:..., group:..., serviceAccount:..., domain:...; allUsers and allAuthenticatedUsers are refused: the API is never public."
  }
}

variable "request_publishers" {
  description = "IAM members allowed to publish DeployRequests on the requests topic (Pub/Sub-triggered deployments)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.request_publishers : can(regex("^(user|group|serviceAccount|domain|principal|principalSet):.+", m))])
    error_message = "request_publishers must be IAM members such as user:..., group:..., serviceAccount:...; allUsers and allAuthenticatedUsers are refused."
  }
}

variable "runtime_service_accounts" {
  description = "Emails of the service accounts that deployed Cloud Run services run as (the `service_account` of services in architecture files). The worker may act as these only. archdeploy-runtime, created here, is always included."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for e in var.runtime_service_accounts : can(regex("^[^@\\s]+@[a-z0-9.-]+\\.gserviceaccount\\.com$", e))])
    error_message = "runtime_service_accounts must be full service account emails ending in .gserviceaccount.com."
  }
}

variable "cloud_build_service_account" {
  description = "Email of the account Cloud Build runs image builds as (ARCHDEPLOY_BUILD_SERVICE_ACCOUNT); builds then log to Cloud Logging only. null: archdeploy-builder, created here."
  type        = string
  default     = null

  validation {
    condition     = var.cloud_build_service_account == null || can(regex("^[^@\\s]+@[a-z0-9.-]+\\.gserviceaccount\\.com$", var.cloud_build_service_account))
    error_message = "cloud_build_service_account must be null or a full service account email."
  }
}

# --- GitHub webhook ----------------------------------------------------------------------

variable "webhook_branches" {
  description = "Branches whose pushes deploy (ARCHDEPLOY_WEBHOOK_BRANCHES)."
  type        = list(string)
  default     = ["main"]

  validation {
    condition     = length(var.webhook_branches) > 0 && alltrue([for b in var.webhook_branches : length(trimspace(b)) > 0])
    error_message = "webhook_branches must name at least one branch, none empty."
  }
}

variable "webhook_architecture_path" {
  description = "Path of the architecture file in the pushed repository (ARCHDEPLOY_WEBHOOK_ARCHITECTURE_PATH)."
  type        = string
  default     = "services.yaml"

  validation {
    condition     = length(trimspace(var.webhook_architecture_path)) > 0 && !startswith(var.webhook_architecture_path, "/")
    error_message = "webhook_architecture_path must be a non-empty path relative to the repository root."
  }
}

variable "webhook_secret" {
  description = "The GitHub webhook secret (stored in Secret Manager). null: a random 40-character secret is generated; read it with `terraform output -raw webhook_secret` and paste it into GitHub."
  type        = string
  default     = null
  sensitive   = true

  validation {
    condition     = var.webhook_secret == null || length(coalesce(var.webhook_secret, "x")) >= 20
    error_message = "webhook_secret must be at least 20 characters (or null to generate one)."
  }
}

variable "github_token" {
  description = "A GitHub token that can read the repositories whose pushes deploy (stored in Secret Manager, given as ARCHDEPLOY_GITHUB_TOKEN to the functions that read github:// architectures and sources: dispatcher, api, worker). null: no token, public repositories only."
  type        = string
  default     = null
  sensitive   = true
}

variable "github_api_url" {
  description = "GitHub REST API the functions read github:// locations from (ARCHDEPLOY_GITHUB_API_URL); GitHub Enterprise: https://HOST/api/v3."
  type        = string
  default     = "https://api.github.com"

  validation {
    condition     = can(regex("^https://[^\\s/]+(/.*)?$", var.github_api_url))
    error_message = "github_api_url must be an https:// URL."
  }
}

# --- architectures kept in Cloud Storage --------------------------------------------------

variable "architecture_buckets" {
  description = "Buckets holding architecture files that requests name as gs://BUCKET/OBJECT. The dispatcher and the API may read objects there (roles/storage.objectViewer on each bucket); nothing else."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for b in var.architecture_buckets : can(regex("^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$", b))])
    error_message = "architecture_buckets must be bucket names (no gs:// prefix)."
  }
}
