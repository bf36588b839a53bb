# Copy to terraform.tfvars (git-ignored), fill in, then `terraform apply`.
# Only project_id is required; everything else shows its default or an example.

project_id = "my-archdeploy-project"
region     = "europe-west1"

# Who may call archdeploy-api (POST a DeployRequest, GET a run). Never allUsers.
api_invokers = [
  "group:deployers@example.com",
  # "serviceAccount:ci@my-ci-project.iam.gserviceaccount.com",
]

# Who may publish DeployRequests on the archdeploy-requests topic.
request_publishers = []

# Accounts the deployed Cloud Run services run as (service_account in the architecture
# file). archdeploy-runtime is always allowed; add yours here.
runtime_service_accounts = [
  # "orders-api@my-archdeploy-project.iam.gserviceaccount.com",
]

# The account Cloud Build runs image builds as: `gcloud builds get-default-service-account`.
# null means the legacy PROJECT_NUMBER@cloudbuild.gserviceaccount.com.
# cloud_build_service_account = "123456789012-compute@developer.gserviceaccount.com"

# GitHub push webhook. Leave webhook_secret unset to have one generated
# (`terraform output -raw webhook_secret`). Pass secrets with TF_VAR_github_token rather
# than writing them here.
webhook_branches          = ["main"]
webhook_architecture_path = "services.yaml"
# github_token           = "set TF_VAR_github_token instead"

# Buckets holding architectures that requests name as gs://BUCKET/OBJECT.
architecture_buckets = []

# Firestore: set false if the project already has this database.
create_firestore_database = true
firestore_database        = "(default)"
# firestore_location      = "eur3"

# Delivery: attempts before a message is dead-lettered, and the redelivery backoff.
max_delivery_attempts         = 5
retry_minimum_backoff_seconds = 10
retry_maximum_backoff_seconds = 600

# Staged build sources are deleted after this many days.
source_retention_days = 30

# Capacity.
build_concurrency      = 10
deploy_concurrency     = 20
deploy_timeout_seconds = 480
function_settings = {
  worker = { max_instances = 20, concurrency = 8, memory = "1Gi" }
  # dispatcher = { timeout_seconds = 300 }
}

labels = {
  team = "platform"
}
