terraform {
  # optional() object attributes, startswith() and preconditions need 1.3; 1.5 is the
  # oldest release this was written against.
  required_version = ">= 1.5.0"

  required_providers {
    google = {
      source = "hashicorp/google"
      # 6.x: build_config.service_account on 2nd-gen functions, secret_manager `auto` replication.
      version = ">= 6.0, < 7.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = ">= 2.4, < 3.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.5, < 4.0"
    }
  }
}
