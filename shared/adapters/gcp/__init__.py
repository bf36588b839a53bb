"""Adapters for Google Cloud: Pub/Sub, Firestore, Cloud Storage, Cloud Build, Cloud Run."""
