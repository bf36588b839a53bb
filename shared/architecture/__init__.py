"""The architecture file: its model, the YAML reader, the checks, and loading a file."""
