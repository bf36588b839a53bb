"""Local fake servers for Google APIs (Cloud Build, Cloud Run, Cloud Storage).

The real client libraries talk to them over gRPC or HTTP, so a request of the wrong
shape fails a test exactly as it would fail against Google.
"""
