# archdeploy on Google Cloud: see README.md beside this file for what is created and why.
#
# Files: apis.tf (services), storage.tf (buckets), registry.tf (Artifact Registry),
# firestore.tf, secrets.tf, pubsub.tf (topics, push subscriptions, dead letters),
# source.tf (function archives), functions.tf, iam.tf (service accounts and every grant),
# scheduler.tf (the deadline sweep), outputs.tf, variables.tf.

provider "google" {
  project = var.project_id
  region  = var.region

  # Every resource that takes labels gets these.
  default_labels = local.labels
}

# Read with the Cloud Resource Manager API, which (like Service Usage) is on in every new
# project; see README.md if yours has it off.
data "google_project" "this" {
  project_id = var.project_id
}

locals {
  project_number = data.google_project.this.number

  labels = merge(var.labels, { app = "archdeploy" })

  bucket_location    = coalesce(var.bucket_location, var.region)
  source_bucket      = coalesce(var.source_bucket_name, "${var.project_id}-archdeploy-sources")
  functions_bucket   = "${var.project_id}-archdeploy-functions"
  firestore_location = coalesce(var.firestore_location, var.region)
  scheduler_region   = coalesce(var.scheduler_region, var.region)

  # Google-managed identities this configuration grants roles to.
  pubsub_service_agent = "serviceAccount:service-${local.project_number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  # The account Cloud Build runs archdeploy's image builds as, named in every build
  # (ARCHDEPLOY_BUILD_SERVICE_ACCOUNT): archdeploy-builder unless another is given. Since
  # 2024 new projects default to the Compute Engine account (Cloud Build "default service
  # account change"), so naming one is the only predictable choice.
  cloud_build_account = coalesce(
    var.cloud_build_service_account,
    "archdeploy-builder@${var.project_id}.iam.gserviceaccount.com",
  )
}
