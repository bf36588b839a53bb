"""The `archdeploy` command. Human progress goes to stderr; `--json` output to stdout.

Exit codes: 0 the run succeeded, 1 it failed, 2 usage or validation error. An
`ArchdeployError` is one clear message, never a traceback (`--debug` shows one).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from shared.cli import process
from shared.cli.lazy_console import lazy_console
from shared.cli.local import no_wait_option, state_file_option
from shared.errors import (
    EXIT_OK,
    EXIT_RUN_FAILED,
    EXIT_USAGE,
    ArchdeployError,
    RunNotFound,
    UsageError,
)

if TYPE_CHECKING:  # the messages (pydantic models) load only in the commands that use them
    from shared.messages import RunResult

F = TypeVar("F", bound=Callable[..., Any])
err = lazy_console(stderr=True, highlight=False)


# Commands defined in modules of their own, imported when named (or listed, by `--help`):
# a command that is not one of them pays neither their imports nor their decorators.
_ELSEWHERE = {"dev": "shared.cli.dev", "rollback": "shared.cli.release", "ui": "shared.cli.ui"}


class _Group(click.Group):
    """Turns every ArchdeployError into one message and its exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *_ELSEWHERE})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _ELSEWHERE and cmd_name not in self.commands:
            from importlib import import_module

            self.add_command(getattr(import_module(_ELSEWHERE[cmd_name]), cmd_name))
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # `archdeploy runs | head -1`: the reader left, say nothing
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(141)  # 128 + SIGPIPE, as a shell reports it
        except (ArchdeployError, OSError) as exc:
            if ctx.meta.get("debug"):
                raise
            from rich.markup import escape

            from shared.cli.local import as_usage_error

            known = exc if isinstance(exc, ArchdeployError) else as_usage_error(exc)
            # Escaped: messages quote YAML such as `[argv]`, which markup would swallow.
            text = f"[bold red]error:[/] {escape(str(known))}"
            err.print(text, markup=True, highlight=False, soft_wrap=True)
            ctx.exit(known.exit_code)
        except KeyboardInterrupt:
            err.print("interrupted")
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where embedded runs keep state (default: .archdeploy beside the architecture file).",
)
@click.pass_context
def cli(ctx: click.Context, debug: bool, state_dir: Path | None) -> None:
    """Deploy a whole microservice architecture, declared in one YAML file, in parallel."""
    from shared import logs

    process.command_chosen(ctx.invoked_subcommand)
    ctx.meta["debug"] = debug
    ctx.meta["state_dir"] = state_dir
    logs.configure(json_lines=False, level="DEBUG" if debug else "WARNING")


def _settings(ctx: click.Context, file: str | None = None, **overrides: Any) -> Any:
    """Settings, with the state folder anchored beside `file` unless given explicitly."""
    from shared.cli.local import anchored_state_dir
    from shared.settings import load_settings

    if ctx.meta.get("state_dir") is not None:
        overrides["state_dir"] = ctx.meta["state_dir"]
    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    state_dir = anchored_state_dir(settings, file)
    if state_dir == settings.state_dir:
        return settings
    return settings.model_copy(update={"state_dir": state_dir})


def _load(file: str, strict: bool, environment: str | None, check_paths: bool) -> Any:
    from shared.architecture.loading import load_architecture

    loaded = load_architecture(
        file, strict=strict, check_paths_exist=check_paths, environment=environment
    )
    for warning in loaded.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    return loaded


def _file_options(func: F) -> F:
    func = click.option("--strict", is_flag=True, help="Unknown keys are errors.")(func)
    func = click.option(
        "--environment", "-e", default=None, help="Apply this deployment_environments entry."
    )(func)
    return click.argument("file", type=click.Path(dir_okay=False))(func)


@cli.command()
@_file_options
def validate(file: str, strict: bool, environment: str | None) -> None:
    """Check an architecture file (fields, names, dependencies, paths)."""
    loaded = _load(file, strict, environment, check_paths=True)
    arch = loaded.architecture
    services = sum(1 for _ in arch.services())
    click.echo(
        f"{file}: ok ({services} services in {len(arch.dataflows)} dataflows, "
        f"{len(loaded.warnings)} warnings)"
    )


@cli.command()
@_file_options
@click.pass_context
def preflight(ctx: click.Context, file: str, strict: bool, environment: str | None) -> None:
    """Check that Google Cloud is ready for FILE: APIs, repositories, accounts, secrets.

    Exits 2 when a check fails; each failure comes with its fix."""
    from shared.adapters.gcp.preflight import run_preflight

    arch = _load(file, strict, environment, check_paths=False).architecture
    found = run_preflight(arch, _settings(ctx))
    click.echo(found.text)
    sys.exit(0 if found.ok else 2)


@cli.command()
def schema() -> None:
    """Print the architecture file's JSON Schema (for editor completion)."""
    import json

    from shared.architecture.loading import architecture_json_schema

    click.echo(json.dumps(architecture_json_schema(), indent=2, ensure_ascii=False))


@cli.command()
@_file_options
@click.option(
    "--dataflow", "-d", "dataflows", multiple=True, help="Only this dataflow (repeatable)."
)
@click.option("--director-url", default=None, help="Use this director instead of deploying it.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--release", is_flag=True, help="Plan a release: stage, verify, promote.")
def plan(
    file: str,
    strict: bool,
    environment: str | None,
    dataflows: tuple[str, ...],
    director_url: str | None,
    as_json: bool,
    release: bool,
) -> None:
    """Show what `up` would do: tasks by phase and the env each deploy gets."""
    from shared.cli.plan_text import show_plan

    loaded = _load(file, strict, environment, check_paths=False)
    click.echo(show_plan(loaded, dataflows, director_url, as_json=as_json, release=release))


@cli.command()
@_file_options
@click.option(
    "--dataflow", "-d", "dataflows", multiple=True, help="Only this dataflow (repeatable)."
)
@click.option("--director-url", default=None, help="Use this director instead of deploying it.")
@click.option(
    "--parallelism",
    "-j",
    type=click.IntRange(1, 4096),
    default=None,
    help="Tasks run at once (default 32).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the RunResult as JSON on stdout.")
@click.option(
    "--endpoint",
    metavar="URL",
    default=None,
    help="Submit to this dispatcher HTTP function (e.g. `archdeploy dev`'s) and follow there.",
)
@click.option("--no-cache", is_flag=True, help="Build and deploy everything, even if unchanged.")
@click.option(
    "--rollback-on-failure",
    is_flag=True,
    help="If deploys fail, put every service back on what it served before.",
)
@click.option("--release", is_flag=True, help="Stage, verify, then promote (see README).")
@no_wait_option
@click.pass_context
def up(
    ctx: click.Context,
    file: str,
    strict: bool,
    environment: str | None,
    dataflows: tuple[str, ...],
    director_url: str | None,
    parallelism: int | None,
    as_json: bool,
    endpoint: str | None,
    no_cache: bool,
    rollback_on_failure: bool,
    release: bool,
    no_wait: bool,
) -> None:
    """Build every service in parallel, then deploy them, and show the result.

    Unchanged services are neither rebuilt nor redeployed (`--no-cache` forces both).
    """
    loaded = _load(file, strict, environment, check_paths=True)
    options: dict[str, Any] = {
        "source_root": str(loaded.base_dir) if loaded.base_dir else None,
        "dataflows": list(dataflows),
        "director_url": director_url,
        "environment": environment,
        "requested_by": "cli",
        "no_cache": no_cache,
        "rollback_on_failure": rollback_on_failure,
        "release": release,
    }
    settings = _settings(ctx, file, parallelism=parallelism)
    from shared.cli.submit import submit_up

    result, code = submit_up(settings, loaded, file, options, endpoint, wait=not no_wait, say=_say)
    sys.exit(_report(result, as_json, code))


def _say(line: str) -> None:
    err.print(line, highlight=False, markup=False, soft_wrap=True)


def _report(result: RunResult, as_json: bool, exit_code: int | None = None) -> int:
    """Print the result; returns the exit code it calls for (`exit_code` overrides it)."""
    from shared.cli.progress import print_result
    from shared.messages import RunStatus

    print_result(result, as_json=as_json, err=err)
    code = EXIT_OK if result.status is RunStatus.SUCCEEDED else EXIT_RUN_FAILED
    return code if exit_code is None else exit_code


@cli.command()
@click.argument("run_id", required=False)
@state_file_option
@click.option("--json", "as_json", is_flag=True, help="Print the RunResult as JSON.")
@click.option("--timeline", is_flag=True, help="Draw each service's phases as text bars.")
@click.pass_context
def status(
    ctx: click.Context, run_id: str | None, file: str | None, as_json: bool, timeline: bool
) -> None:
    """Show a run (the latest by default), and what each local service serves."""
    from shared.cli.local import open_store, show_serving
    from shared.core.runtime import run_view as current

    settings = _settings(ctx, file)
    store = open_store(settings, _say)
    if settings.store_kind == "sqlite":
        show_serving(Path(settings.state_dir), _say)
    if run_id is None:
        runs = store.list_runs(1)
        if not runs:
            raise RunNotFound("(latest)")
        run_id = runs[0].run_id
    result = current(store, run_id)
    if result is None:
        raise RunNotFound(run_id)
    if timeline:
        from shared.cli.timeline import print_timeline

        sys.exit(print_timeline(store, run_id))
    sys.exit(_report(result, as_json))


@cli.command()
@click.argument("run_id")
@state_file_option
@click.pass_context
def cancel(ctx: click.Context, run_id: str, file: str | None) -> None:
    """Cancel a run: no new task starts, submitted builds are cancelled, and the run ends
    `cancelled` (listing what had deployed) once what is in flight has finished."""
    import getpass

    from shared.bootstrap import wire
    from shared.core.control import cancel_run

    settings = _settings(ctx, file)
    if settings.store_kind == "sqlite":
        from shared.cli.local import check_readable

        check_readable(settings.state_dir)
    run = cancel_run(run_id, wire(settings), by=getpass.getuser())
    if run is None:
        raise RunNotFound(run_id)
    state = run.status.value if run.status.terminal else "cancelling (tasks in flight finish)"
    click.echo(f"{run_id}: {state}")


@cli.command()
@click.option("--limit", "-n", type=click.IntRange(1, 1000), default=20)
@state_file_option
@click.pass_context
def runs(ctx: click.Context, limit: int, file: str | None) -> None:
    """List recent runs."""
    from shared.cli.local import open_store

    for run in open_store(_settings(ctx, file), _say).list_runs(limit):
        when = run.created_at.strftime("%Y-%m-%d %H:%M:%S")
        click.echo(
            f"{run.run_id}  {when}  {run.status.value:<10} {run.phase.value:<9} "
            f"{run.architecture_file}" + (f"  ({run.error})" if run.error else "")
        )


@cli.command()
@_file_options
@click.option(
    "--dataflow", "-d", "dataflows", multiple=True, help="Only this dataflow (repeatable)."
)
@click.option("--force", is_flag=True, help="Tear down even with teardown_protection set.")
@no_wait_option
@click.pass_context
def down(
    ctx: click.Context,
    file: str,
    strict: bool,
    environment: str | None,
    dataflows: tuple[str, ...],
    force: bool,
    no_wait: bool,
) -> None:
    """Stop and delete the deployed services of the architecture (or some dataflows)."""
    from shared.bootstrap import make_deployer
    from shared.core.plan import select_dataflows

    arch = _load(file, strict, environment, check_paths=False).architecture
    if arch.teardown_protection and not force:
        raise UsageError(
            f"{file}: teardown_protection is set for this environment; "
            "remove it from the file or pass --force"
        )
    selected = select_dataflows(arch, dataflows)
    specs = [s for f in selected for s in arch.dataflows[f].services.values() if s.deployment]
    if not dataflows and arch.service_manager_spec is not None:
        specs.append(arch.service_manager_spec)
    names = [s.name for s in specs]
    settings = _settings(ctx, file)
    if settings.deployer_kind == "local":
        from shared.cli.local import down_local

        project, env = arch.project_id, environment or ""
        click.echo(down_local(settings, names, project, env, wait=not no_wait, say=_say))
        return
    from shared.cli.remote import tear_down

    click.echo(tear_down(make_deployer(settings), arch, specs, say=_say))


def main() -> None:
    process.start()  # shared.cli.process: the collector waits, short commands exit at once
    try:
        cli.main(prog_name="archdeploy", standalone_mode=True)
    except SystemExit as exc:
        process.end(exc.code if isinstance(exc.code, int) else EXIT_USAGE)


if __name__ == "__main__":
    main()
