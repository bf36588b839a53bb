# The images archdeploy builds for deployed services (ARCHDEPLOY_IMAGE_REPO), and the
# functions' own images, kept apart so the worker's builds never touch the functions'.

resource "google_artifact_registry_repository" "images" {
  repository_id = var.image_repo
  location      = var.region
  format        = "DOCKER"
  description   = "Images of the services archdeploy deploys (pushed by Cloud Build)."

  depends_on = [google_project_service.apis]
}

resource "google_artifact_registry_repository" "functions" {
  repository_id = "archdeploy-functions"
  location      = var.region
  format        = "DOCKER"
  description   = "Images of archdeploy's own Cloud Functions."

  depends_on = [google_project_service.apis]
}
