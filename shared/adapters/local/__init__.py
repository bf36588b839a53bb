"""Adapters for one machine: in-process bus, SQLite store, OCI images, local processes."""
