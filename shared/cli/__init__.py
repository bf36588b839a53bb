"""The `archdeploy` command (`shared.cli.main`), its progress view and `archdeploy dev`."""
