"""Following a run as a person: a live table on a terminal, plain lines otherwise.

It reads only the run store, so it follows an embedded run and a run on Google Cloud
the same way. rich draws only on a terminal and is imported only then: a pipe, a file or
a CI log gets plain lines, each whole (never wrapped at 80 columns) and as written (an
error's `[...]` is not taken for markup).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING

import click

from shared.cli.lazy_console import is_terminal, plain_text
from shared.core.runtime import run_view as current
from shared.messages import RunResult, RunStatus, ServiceResult
from shared.ports import RunStore

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

_STYLE = {
    "deployed": "green",
    "built": "cyan",
    "failed": "bold red",
    "skipped": "yellow",
    "not deployed": "yellow",
    "timed_out": "red",
    "cancelled": "yellow",
    "building": "blue",
    "deploying": "blue",
    "queued": "dim",
    "waiting": "dim",
    "planned": "dim",
    "unchanged": "green dim",
    "rolled back": "magenta",
    "staging": "blue",
    "verifying": "blue",
    "promoting": "blue",
    "reverting": "magenta",
    "staged": "cyan",
    "promoted": "green",
}


def short_image(image: str | None) -> str:
    if not image:
        return ""
    name, _, digest = image.partition("@")
    return f"{name.rsplit('/', 1)[-1]}@{digest[:19]}" if digest else name


COLUMNS = ("service", "dataflow", "status", "build", "deploy", "image", "url")


def _title(result: RunResult) -> str:
    title = f"run {result.run_id}: {result.status.value} ({result.phase.value})"
    if result.duration_seconds is not None:
        title += f" in {result.duration_seconds:.1f}s"
    return title


def _rows(result: RunResult) -> tuple[list[str], list[list[str]]]:
    """The table's column names and its cells, one row per service (no markup)."""
    released = any(svc.staged_revision for svc in result.services.values())
    rows = [
        [
            svc.service,
            svc.dataflow or "(director)",
            svc.status,
            f"{svc.build_seconds:.1f}s" if svc.build_seconds is not None else "",
            f"{svc.deploy_seconds:.1f}s" if svc.deploy_seconds is not None else "",
            short_image(svc.image),
            svc.url or "",
            *([release_cell(svc)] if released else []),
        ]
        for svc in result.services.values()
    ]
    return [*COLUMNS, *(["release"] if released else [])], rows


def result_table(result: RunResult) -> Table:
    from rich.table import Table

    names, rows = _rows(result)
    table = Table(title=_title(result), title_justify="left", expand=False)
    for column in names:
        table.add_column(column, no_wrap=column in ("service", "status", "url", "release"))
    for row in rows:
        status = row[2]
        row[2] = _styled(status)
        table.add_row(*row)
    return table


def plain_table(result: RunResult) -> str:
    """The result table as text for a reader that is not a terminal: the title, then
    columns two spaces apart, `-` for an empty cell, every cell whole."""
    names, rows = _rows(result)
    cells = [names, *[[cell or "-" for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(names))]
    lines = [_title(result)]
    for row in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return plain_text("\n".join(lines))


def print_result(result: RunResult, *, as_json: bool, err: Console) -> None:
    """The end of `up` and `status`: the RunResult as JSON (`--json`), else its table on
    stdout (rich on a terminal, `plain_table` otherwise); then its errors on stderr."""
    if as_json:
        click.echo(result.model_dump_json(indent=2))
    elif is_terminal(sys.stdout):
        from rich.console import Console

        Console(highlight=False).print(result_table(result))
    else:
        click.echo(plain_table(result))
    if is_terminal(sys.stderr):
        print_errors(result, err)
        return
    for line in error_lines(result):
        click.echo(plain_text(line), err=True)


def _styled(status: str) -> str:
    style = _STYLE.get(status)
    return f"[{style}]{status}[/]" if style else status


def release_cell(svc: ServiceResult) -> str:
    """A released service's staged revision, its traffic share and its checks."""
    if not svc.staged_revision:
        return ""
    share = f"{svc.promoted_percent}%" if svc.promoted_percent is not None else "0%"
    passed = sum(c.passed for c in svc.checks)
    checks = f", checks {passed}/{len(svc.checks)}" if svc.checks else ""
    return f"{svc.staged_revision} {share}{checks}" + (" (reverted)" if svc.rolled_back else "")


def print_errors(result: RunResult, console: Console) -> None:
    if result.error:
        console.print(f"[bold red]error:[/] {result.error}", highlight=False)
    for err in result.errors:
        console.print(
            f"[bold red]{err.service}[/] ({err.phase.value}): {err.error}", highlight=False
        )


def error_lines(result: RunResult) -> list[str]:
    """`print_errors` as plain lines."""
    lines = [f"error: {result.error}"] if result.error else []
    return lines + [f"{err.service} ({err.phase.value}): {err.error}" for err in result.errors]


def follow(
    store: RunStore,
    run_id: str,
    *,
    stream: IO[str],
    done: threading.Event | None = None,
    interval: float = 0.1,
    timeout: float | None = None,
) -> RunResult:
    """Show the run, read from the store, until it has a final result (or `done` is set:
    the work is over, and the view is read at once rather than at the next tick)."""
    return follow_view(
        lambda: current(store, run_id),
        stream=stream,
        done=done,
        interval=interval,
        timeout=timeout,
    )


def follow_view(
    fetch: Callable[[], RunResult | None],
    *,
    stream: IO[str],
    done: threading.Event | None = None,
    interval: float = 0.1,
    timeout: float | None = None,
) -> RunResult:
    """Show what `fetch()` answers (a store read, an HTTP GET) until the run ends."""
    deadline = None if timeout is None else time.monotonic() + timeout

    def poll() -> tuple[RunResult | None, bool]:
        # `done()` first: once the work is over, the view read after it is final.
        out = done is not None and done.is_set()
        expired = deadline is not None and time.monotonic() > deadline
        view = fetch()
        over = view is not None and view.status is not RunStatus.RUNNING
        return view, view is not None and (over or out or expired)

    if is_terminal(stream):
        from rich.console import Console
        from rich.live import Live

        console = Console(file=stream, highlight=False)
        # Transient: the final table is printed once, by the caller, when the run ends.
        with Live(console=console, refresh_per_second=10, transient=True) as live:

            def show(view: RunResult) -> None:
                live.update(result_table(view))

            return _until_over(poll, show, interval, done)
    return _until_over(poll, _line_printer(stream), interval, done)


def _until_over(
    poll: Callable[[], tuple[RunResult | None, bool]],
    show: Callable[[RunResult], None],
    interval: float,
    done: threading.Event | None = None,
) -> RunResult:
    """One store read per tick: show it, and stop when it is the last. A tick ends early
    when `done` is set, so the final view does not wait out the interval."""
    while True:
        view, over = poll()
        if view is not None:
            show(view)
        if over and view is not None:
            return view
        if done is None:
            time.sleep(interval)
        elif done.wait(interval) and view is None:
            time.sleep(interval)  # over, but nothing to show yet: do not spin


def _line_printer(stream: IO[str]) -> Callable[[RunResult], None]:
    """A line each time a service changes status: for logs and pipes."""
    seen: dict[str, str] = {}

    def show(view: RunResult) -> None:
        for svc in view.services.values():
            if seen.get(svc.service) != svc.status:
                seen[svc.service] = svc.status
                detail = svc.error or svc.url or short_image(svc.image)
                line = f"  {svc.service:<24} {svc.status:<12} {detail}"
                stream.write(plain_text(line) + "\n")
                stream.flush()

    return show
