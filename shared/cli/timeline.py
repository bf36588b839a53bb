"""`archdeploy status --timeline`: the dashboard's timeline as text bars.

A pure function over the dashboard's `RunView`, so the terminal and the web page draw
the same thing. Each bar starts with its phase's letter and is filled with its outcome's
character, so it reads without colour.
"""

from __future__ import annotations

import shutil

import click

from shared.doors.dashboard.view import Bar, RunView, load_run
from shared.errors import EXIT_OK, EXIT_RUN_FAILED, RunNotFound
from shared.ports import RunStore

PHASE_LETTERS = {
    "build": "B",
    "director": "R",
    "deploy": "D",
    "rollback": "U",
    "stage": "S",
    "verify": "V",
    "promote": "P",
    "revert": "T",  # traffic back
}
OUTCOME_FILLS = {
    "succeeded": "=",
    "failed": "!",
    "running": ">",
    "pending": ".",
    "waiting": ".",
    "skipped": "-",
    "cancelled": "x",
    "timed_out": "~",
}
LEGEND = (
    "B build  R director  D deploy  U rollback  S stage  V verify  P promote  T revert  |  "
    "= ok  ! failed  > running  "
    "- skipped  x cancelled  ~ timed out"
)


def render_timeline(view: RunView, width: int = 100) -> str:
    """The run as text: a header, one line per service (name, bars on a shared axis,
    status, duration, why it waited), the axis, the legend, and every error in full."""
    name_width = min(24, max([7, *(len(r.service) for r in view.rows)]))
    track = max(10, width - name_width - 36)
    scale = track / view.seconds if view.seconds > 0 else 0.0
    lines = [_header(view), ""]
    for row in view.rows:
        cells = [" "] * track
        for bar in row.bars:
            _paint(cells, bar, scale, track)
        took = f"{row.seconds:.1f}s" if row.seconds is not None else ""
        status = f"{row.status:<12} {took:>7}"
        note = f"  {row.note}" if row.note else ""
        lines.append(f"{row.service[:name_width]:<{name_width}} |{''.join(cells)}| {status}{note}")
    lines.append(f"{'':<{name_width}} 0s{'':>{max(0, track - 6)}}{view.seconds:.1f}s")
    lines.append(LEGEND)
    for row in view.rows:
        if row.error:
            lines += ["", f"{row.service} ({row.error_phase}) error:", row.error]
    if view.error:
        lines += ["", "run error:", view.error]
    return "\n".join(lines)


def _header(view: RunView) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in sorted(view.counts.items()))
    t = view.trigger
    source = f" {t.repository}@{t.branch}" if t.repository else ""
    who = f" ({t.who})" if t.who and t.who.lower() != t.kind.lower() else ""
    return (
        f"run {view.run_id}  {view.status}  ({view.phase})  {view.seconds:.1f}s  "
        f"by {t.kind}{source}{who}  [{counts}]"
    )


def _paint(cells: list[str], bar: Bar, scale: float, track: int) -> None:
    # At least two cells (letter and outcome), so a skipped mark still says what it was.
    first = min(track - 2, int(bar.start * scale))
    last = max(first + 1, min(track - 1, int(bar.end * scale + 0.5) - 1))
    fill = OUTCOME_FILLS.get(bar.status, "?")
    for i in range(first, last + 1):
        cells[i] = fill
    cells[first] = PHASE_LETTERS.get(bar.phase, "?")


def print_timeline(store: RunStore, run_id: str) -> int:
    """Print the run's timeline on stdout, as wide as the terminal; returns the exit code
    (0 succeeded, 1 otherwise, as `status` does). Raises `RunNotFound`."""
    view = load_run(store, run_id)
    if view is None:
        raise RunNotFound(run_id)
    width = shutil.get_terminal_size((100, 24)).columns
    click.echo(render_timeline(view, width=max(60, min(width, 160))))
    return EXIT_OK if view.status == "succeeded" else EXIT_RUN_FAILED
