"""archdeploy's performance harness: `python -m benchmarks.run` (or `make bench`)."""
