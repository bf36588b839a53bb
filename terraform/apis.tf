# Every API archdeploy's resources and functions call. Left on when this configuration is
# destroyed: other workloads in the project may use them too.
#
# Eventarc is not here on purpose: the event functions are fed by Pub/Sub push
# subscriptions that this configuration owns (see pubsub.tf and README.md).
locals {
  apis = toset([
    "artifactregistry.googleapis.com", # function images and the deployed services' images
    "cloudbuild.googleapis.com",       # builds the functions and archdeploy's service images
    "cloudfunctions.googleapis.com",   # the seven 2nd-gen functions
    "cloudscheduler.googleapis.com",   # the deadline sweep every minute
    "firestore.googleapis.com",        # the run store
    "iam.googleapis.com",              # service accounts
    "logging.googleapis.com",          # build and function logs
    "pubsub.googleapis.com",           # requests, tasks, completions, results, cloud-builds
    "run.googleapis.com",              # 2nd-gen functions run on Cloud Run; so do deployed services
    "secretmanager.googleapis.com",    # the webhook secret and the GitHub token
    "storage.googleapis.com",          # function archives and staged build sources
  ])
}

resource "google_project_service" "apis" {
  for_each = local.apis

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}
