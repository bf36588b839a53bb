"""`archdeploy rollback [RUN_ID]`: undo what a release promoted, as a run of its own."""

from __future__ import annotations

import click

from shared.cli.local import no_wait_option, state_file_option


@click.command()
@click.argument("run_id", required=False)
@state_file_option
@click.option("--json", "as_json", is_flag=True, help="Print the RunResult as JSON on stdout.")
@no_wait_option
@click.pass_context
def rollback(
    ctx: click.Context, run_id: str | None, file: str | None, as_json: bool, no_wait: bool
) -> None:
    """Put every service a release promoted back on what served before it.

    RUN_ID is a release run (default: the last one that promoted something). Services go
    back dependents first, as one run; the release's staged revisions stay tagged.
    """
    import sys

    from shared.cli.local import open_store
    from shared.cli.main import _report, _say, _settings
    from shared.core.rollback import last_promoted_run, promoted_services
    from shared.messages import DeployRequest

    settings = _settings(ctx, file)
    store = open_store(settings, _say)
    run_id = run_id or last_promoted_run(store)
    request = DeployRequest(rollback_of=run_id, requested_by="cli")
    if settings.bus_kind == "pubsub":
        from shared.cli.remote import up_over_pubsub

        sys.exit(_report(up_over_pubsub(settings, request), as_json))
    from shared.cli.local import EXIT_INTERRUPTED, prepare, up_embedded

    prepare(settings.state_dir)
    count = len(promoted_services(run_id, store))
    result, interrupted = up_embedded(settings, request, count, wait=not no_wait, say=_say)
    sys.exit(_report(result, as_json, EXIT_INTERRUPTED if interrupted else None))
