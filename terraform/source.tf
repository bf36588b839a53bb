# Each function's source archive, assembled by Terraform alone from a fresh clone:
#
#   main.py           functions/<folder>/main.py, at the archive root (functions-framework
#                     loads ./main.py)
#   requirements.txt  functions/<folder>/requirements.txt: what that main.py imports at
#                     run time, through shared/ (tests/integration/test_terraform.py checks it)
#   shared/**/*.py    the project's library
#
# archive_file sorts the entries and writes no timestamps, so the same files make the
# same zip; the object is named by the zip's MD5, so a code change uploads a new object
# and redeploys the functions built from it, and nothing else.

locals {
  repo_root        = "${path.module}/.."
  function_sources = toset([for f in values(local.functions) : f.source])
  shared_files     = sort(fileset("${local.repo_root}/shared", "**/*.py"))
}

data "archive_file" "function_source" {
  for_each = local.function_sources

  type        = "zip"
  output_path = "${path.module}/.build/${each.key}.zip"

  source {
    filename = "main.py"
    content  = file("${local.repo_root}/functions/${each.key}/main.py")
  }

  source {
    filename = "requirements.txt"
    content  = file("${local.repo_root}/functions/${each.key}/requirements.txt")
  }

  dynamic "source" {
    for_each = local.shared_files
    content {
      filename = "shared/${source.value}"
      content  = file("${local.repo_root}/shared/${source.value}")
    }
  }
}

resource "google_storage_bucket_object" "function_source" {
  for_each = data.archive_file.function_source

  name   = "functions/${each.key}-${each.value.output_md5}.zip"
  bucket = google_storage_bucket.functions.name
  source = each.value.output_path

  lifecycle {
    create_before_destroy = true
  }
}
