"""The dashboard's HTML, rendered on the server from a `RunView` (no front-end toolchain).

Every value is escaped. `#live` is the part `static/dashboard.js` refreshes while a run
is in progress; the page around it never reloads.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from html import escape
from importlib.resources import files
from string import Template
from urllib.parse import quote

from shared.doors.dashboard.view import Bar, Row, RunSummary, RunView, Trigger

_SYMBOL = {
    "succeeded": "✓",
    "failed": "✗",
    "timed_out": "~",
    "running": "▶",
    "pending": "…",
    "skipped": "⤼",
    "cancelled": "⊘",
}


def _asset(name: str) -> str:
    return (files("shared.doors.dashboard") / name).read_text(encoding="utf-8")


def asset(name: str) -> str | None:
    """A static file's text (`dashboard.js`, `dashboard.css`), or None if unknown."""
    if name not in ("dashboard.js", "dashboard.css"):
        return None
    return _asset(f"static/{name}")


def page(title: str, body: str, prefix: str) -> str:
    return Template(_asset("templates/page.html")).substitute(
        title=escape(title), body=body, static=escape(f"{prefix}/static")
    )


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _secs(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.1f}s" if seconds < 120 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _tick(seconds: float, span: float) -> str:
    return f"{seconds:.2f}s" if span < 10 else _secs(seconds)


def _slug(word: str) -> str:
    return escape(word.replace(" ", "-"))


def _trigger(t: Trigger, with_who: bool = True) -> str:
    if not with_who:
        t = replace(t, who="")
    if t.kind != "push":
        same = t.who.lower() == t.kind.lower()
        return escape(t.kind) + (
            "" if same or not t.who else f" <span class=who>({escape(t.who)})</span>"
        )
    commit = f" <code>{escape(t.commit[:12])}</code>" if t.commit else ""
    by = f" <span class=who>by {escape(t.who)}</span>" if t.who else ""
    return f"push to <b>{escape(t.repository)}</b> <code>{escape(t.branch)}</code>{commit}{by}"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(
        f"<span class='st-{_slug(s)}'>{n} {escape(s)}</span>" for s, n in sorted(counts.items())
    )


def runs_page(runs: list[RunSummary], prefix: str) -> str:
    return page("archdeploy runs", runs_live(runs, prefix), prefix)


def runs_live(runs: list[RunSummary], prefix: str) -> str:
    """The runs list (the `#live` part of the runs page)."""
    head = (
        "<tr><th>Run</th><th>Status</th><th>Trigger</th><th>Who asked</th><th>Environment</th>"
        "<th>Started</th><th class=num>Duration</th><th>Services</th></tr>"
    )
    rows = "".join(
        f"<tr class=run><td><a href='{escape(prefix)}/runs/{quote(r.run_id)}'>"
        f"<code>{escape(r.run_id)}</code></a></td>"
        f"<td><span class='badge st-{_slug(r.status)}'>{escape(r.status)}</span></td>"
        f"<td>{_trigger(r.trigger, with_who=False)}</td><td>{escape(r.trigger.who)}</td>"
        f"<td>{escape(r.environment)}</td>"
        f"<td>{_when(r.created_at)}</td><td class=num>{_secs(r.seconds) or 'running'}</td>"
        f"<td>{_counts(r.counts)}</td></tr>"
        for r in runs
    )
    empty = "" if runs else "<p>No runs yet: start one with <code>archdeploy up</code>.</p>"
    return (
        f"<div id=live data-src='{escape(prefix)}/live' data-every=3000 data-finished=false>"
        f"<h1>Runs</h1><table>{head}{rows}</table>{empty}</div>"
    )


def run_page(view: RunView, prefix: str) -> str:
    back = f"<p class=back><a href='{escape(prefix)}/'>← all runs</a></p>"
    return page(_title(view), back + run_live(view, prefix), prefix)


def _title(view: RunView) -> str:
    return f"{view.status} · {view.run_id} · archdeploy"


def run_live(view: RunView, prefix: str) -> str:
    """The run's header, timeline, services table and errors (the `#live` part)."""
    src = f"{prefix}/runs/{quote(view.run_id)}/live"
    return (
        f"<div id=live data-src='{escape(src)}' data-every=1000 "
        f"data-finished={'true' if view.finished else 'false'} "
        f"data-status='{escape(view.status)}' data-title='{escape(_title(view))}'>"
        f"{_run_header(view)}{_timeline(view)}{_services(view)}{_errors(view)}</div>"
    )


def _run_header(view: RunView) -> str:
    halted = f" · <b>halted:</b> {escape(view.halted)}" if view.halted else ""
    error = f"<p class=runerror><b>run error:</b> {escape(view.error)}</p>" if view.error else ""
    return (
        f"<h1>Run <code>{escape(view.run_id)}</code> "
        f"<span id=run-status class='badge st-{_slug(view.status)}'>{escape(view.status)}</span>"
        f"</h1><p class=meta><b>phase</b> {escape(view.phase)} · <b>trigger</b> "
        f"{_trigger(view.trigger)} · <b>started</b> {_when(view.created_at)} · "
        f"<b>{'took' if view.finished else 'running for'}</b> {_secs(view.seconds)} · "
        f"<b>environment</b> {escape(view.environment)}{halted}<br>"
        f"{_counts(view.counts)}</p>{error}"
    )


def _timeline(view: RunView) -> str:
    span = view.seconds or 1.0
    rows = "".join(_timeline_row(row, span) for row in view.rows)
    ticks = "".join(
        f"<span class=tick style='left:{100 * i / 4:.2f}%'>{_tick(span * i / 4, span)}</span>"
        for i in range(5)
    )
    legend = "".join(
        f"<span class='bar o-{o}'>{_SYMBOL[o]} {o.replace('_', ' ')}</span>"
        for o in ("succeeded", "failed", "running", "skipped", "cancelled", "timed_out")
    )
    return (
        f"<div class=timeline role=table aria-label='timeline'>{rows}"
        f"<div class=axis><span></span><div class=axis-track>{ticks}</div></div></div>"
        f"<div class=legend>Outcomes:{legend}</div>"
    )


def _timeline_row(row: Row, span: float) -> str:
    bars = "".join(_bar(bar, span) for bar in row.bars)
    note = f"<div class=tl-note title='{escape(row.note)}'>{escape(row.note)}</div>"
    return (
        f"<div class=tl-row role=row data-service='{escape(row.service)}' "
        f"data-status='{escape(row.status)}'>"
        f"<div class=tl-name title='{escape(row.service)}'>{escape(row.service)}</div>"
        f"<div class=tl-track>{bars}</div>"
        f"<div class='tl-status st-{_slug(row.status)}'>{escape(row.status)}</div>"
        f"<div class=tl-secs>{_secs(row.seconds)}</div>{note}</div>"
    )


def _bar(bar: Bar, span: float) -> str:
    left = 100 * bar.start / span
    width = max(0.0, 100 * (bar.end - bar.start) / span)
    symbol = _SYMBOL.get(bar.status, "?")
    took = _secs(bar.end - bar.start)
    marker = " marker" if width < 6 and bar.status in ("skipped", "cancelled") else ""
    if marker and left > 70:
        marker += " marker-end"  # drawn leftwards from its moment, inside the track
    return (
        f"<div class='bar p-{escape(bar.phase)} o-{escape(bar.status)}{marker}' "
        f"data-phase='{escape(bar.phase)}' data-outcome='{escape(bar.status)}' "
        f"style='left:{min(left, 99.5):.3f}%;width:{min(width, 100 - left):.3f}%' "
        f"title='{escape(bar.label)} {took}'>{symbol} {escape(bar.label)}</div>"
    )


def _services(view: RunView) -> str:
    head = (
        "<tr><th>Service</th><th>Dataflow</th><th>Status</th><th>Image</th><th>URL</th>"
        "<th>Replaced</th><th class=num>Duration</th><th>Why</th></tr>"
    )
    body = "".join(
        f"<tr data-service='{escape(r.service)}'><td><b>{escape(r.service)}</b></td>"
        f"<td>{escape(r.dataflow or '')}</td>"
        f"<td class='st-{_slug(r.status)}'>{escape(r.status)}</td>"
        f"<td class='mono digest' title='{escape(r.image or '')}'>{escape(r.image or '')}</td>"
        f"<td>{_link(r.url)}</td><td class=mono>{escape(r.previous or '')}</td>"
        f"<td class=num>{_secs(r.seconds)}</td><td>{escape(r.note)}</td></tr>"
        for r in view.rows
    )
    return f"<h2>Services</h2><table class=services>{head}{body}</table>"


def _link(url: str | None) -> str:
    if not url:
        return ""
    if not url.startswith(("http://", "https://")):
        return escape(url)
    return f"<a href='{escape(url)}' rel=noreferrer>{escape(url)}</a>"


def _errors(view: RunView) -> str:
    failed = [r for r in view.rows if r.error]
    if not failed:
        return ""
    items = "".join(
        f"<details class=error data-key='{escape(r.service)}' data-service='{escape(r.service)}'"
        f"{' open' if i < 3 else ''}><summary>{escape(r.service)} ({escape(r.error_phase or '')})"
        f": {escape(r.error.splitlines()[0][:120] if r.error else '')}</summary>"
        f"<pre>{escape(r.error or '')}</pre></details>"
        for i, r in enumerate(failed)
    )
    return f"<section class=errors><h2>Errors</h2>{items}</section>"
