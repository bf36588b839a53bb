# The GitHub webhook secret (always) and a GitHub token (when given). Terraform writes the
# versions, so their values live in the Terraform state: keep the state private.

resource "random_password" "webhook_secret" {
  count = local.webhook_secret_given ? 0 : 1

  length  = 40
  special = false
}

locals {
  # nonsensitive: whether a value was given is not itself secret, and count needs it.
  webhook_secret_given = nonsensitive(var.webhook_secret != null)
  github_token_given   = nonsensitive(var.github_token != null)
}

resource "google_secret_manager_secret" "webhook_secret" {
  secret_id = "archdeploy-webhook-secret"

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "webhook_secret" {
  secret      = google_secret_manager_secret.webhook_secret.id
  secret_data = local.webhook_secret_given ? var.webhook_secret : random_password.webhook_secret[0].result
}

resource "google_secret_manager_secret" "github_token" {
  secret_id = "archdeploy-github-token"

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "github_token" {
  count = local.github_token_given ? 1 : 0

  secret      = google_secret_manager_secret.github_token.id
  secret_data = var.github_token
}

locals {
  # Secrets a function may receive as environment variables; functions.tf picks them by key.
  # A numeric version, so rotating through Terraform redeploys the functions that read it.
  secrets = {
    webhook_secret = {
      enabled   = true
      secret_id = google_secret_manager_secret.webhook_secret.secret_id
      version   = google_secret_manager_secret_version.webhook_secret.version
    }
    github_token = {
      enabled   = local.github_token_given
      secret_id = google_secret_manager_secret.github_token.secret_id
      version   = local.github_token_given ? google_secret_manager_secret_version.github_token[0].version : "latest"
    }
  }
}
