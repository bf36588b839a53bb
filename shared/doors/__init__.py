"""How events arrive: Pub/Sub CloudEvents, the HTTP API and the GitHub webhook."""
