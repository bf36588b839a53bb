# Two private buckets: build sources that workers stage (read by Cloud Build), and the
# functions' own source archives (read when a function is built). Neither is ever public.

resource "google_storage_bucket" "sources" {
  name                        = local.source_bucket
  location                    = local.bucket_location
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy_buckets

  # Staged sources are content-addressed (sources/<service>/<sha256>.tar.gz): an old one is
  # only needed again if the same tree is rebuilt, and then it is uploaded again.
  lifecycle_rule {
    condition {
      age            = var.source_retention_days
      matches_prefix = ["sources/"]
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket" "functions" {
  name                        = local.functions_bucket
  location                    = local.bucket_location
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy_buckets

  depends_on = [google_project_service.apis]
}
