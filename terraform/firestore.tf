# The run store: Firestore in Native mode. A project's "(default)" database exists at most
# once, so set create_firestore_database = false when it is already there.

resource "google_firestore_database" "runs" {
  count = var.create_firestore_database ? 1 : 0

  name                    = var.firestore_database
  location_id             = local.firestore_location
  type                    = "FIRESTORE_NATIVE"
  delete_protection_state = var.firestore_delete_protection ? "DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"
  # `terraform destroy` leaves the data alone; delete the database by hand if you mean it.
  deletion_policy = "ABANDON"

  depends_on = [google_project_service.apis]
}

locals {
  firestore_database_name = "projects/${var.project_id}/databases/${var.firestore_database}"
}

# The waiting tasks of a run's phase in admission order (`waiting_tasks` in
# shared/adapters/gcp/firestore_scheduling.py): equality on phase and status, ordered by rank.
resource "google_firestore_index" "waiting_tasks" {
  project     = var.project_id
  database    = var.firestore_database
  collection  = "tasks"
  query_scope = "COLLECTION"

  fields {
    field_path = "phase"
    order      = "ASCENDING"
  }
  fields {
    field_path = "status"
    order      = "ASCENDING"
  }
  fields {
    field_path = "rank"
    order      = "ASCENDING"
  }

  depends_on = [google_firestore_database.runs, google_project_service.apis]
}
