"""Check a deployed example architecture from its RunResult.

    archdeploy up examples/architecture.yaml --json > result.json
    python examples/check.py result.json        # or: ... --json | python examples/check.py

For every service in the result it prints the image digest, the URL, the health
(GET <url>/healthz) and whether the director (GET <director_url>/services) lists it.
Exits 1 if any deployed application service is unhealthy or not registered, else 0.
Stdlib only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

TIMEOUT = 5.0  # seconds per request


def fetch_json(url: str) -> tuple[int | None, Any, str]:
    """GET `url`: (status or None when unreachable, decoded JSON body or None, note)."""
    opener = _opener_for(url)
    try:
        with opener.open(url, timeout=TIMEOUT) as response:
            return response.status, _decode(response.read()), ""
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, _decode(exc.read()), ""
    except (OSError, http.client.HTTPException) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return None, None, f"unreachable: {reason}"


def registered_services(director_url: str | None) -> tuple[set[str] | None, str]:
    """The names the director lists, or None (and why) when it cannot be asked."""
    if not director_url:
        return None, "no director URL in the result"
    status, body, note = fetch_json(director_url.rstrip("/") + "/services")
    if status != 200 or not isinstance(body, dict) or not isinstance(body.get("services"), dict):
        return None, f"director answered {status or note}"
    return set(body["services"]), ""


def health(url: str, path: str) -> tuple[bool, str]:
    status, body, note = fetch_json(url.rstrip("/") + path)
    if status is None:
        return False, note
    detail = body.get("error") if isinstance(body, dict) else None
    text = f"HTTP {status}" + (f" ({detail})" if detail else "")
    return 200 <= status < 300, text


def check(result: dict[str, Any], *, health_path: str, director_name: str) -> list[str]:
    """Print one block per service; return the problems that make the check fail."""
    director_url = result.get("director_url")
    services: dict[str, dict[str, Any]] = result.get("services") or {}
    if not director_url and director_name in services:
        director_url = services[director_name].get("url")
    registered, why_unknown = registered_services(director_url)
    problems: list[str] = []
    print(f"run {result.get('run_id', '?')}: {result.get('status', '?')}; director {director_url}")
    for name in sorted(services):
        entry = services[name]
        is_director = name == director_name or bool(
            director_url and entry.get("url") == director_url
        )
        problems += _check_service(name, entry, is_director, registered, why_unknown, health_path)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("result", nargs="?", default="-", help="RunResult JSON file; - is stdin")
    parser.add_argument("--health-path", default="/healthz")
    parser.add_argument("--director", default="director", help="the director's service name")
    args = parser.parse_args(argv)
    try:
        result = _load(args.result)
    except (OSError, ValueError) as exc:
        print(f"check: cannot read a RunResult from {args.result}: {exc}", file=sys.stderr)
        return 2
    problems = check(result, health_path=args.health_path, director_name=args.director)
    for problem in problems:
        print(f"FAIL {problem}")
    if not problems:
        print("OK: every deployed application service is healthy and registered")
    return 1 if problems else 0


def _check_service(
    name: str,
    entry: dict[str, Any],
    is_director: bool,
    registered: set[str] | None,
    why_unknown: str,
    health_path: str,
) -> list[str]:
    url = entry.get("url")
    print(f"{name}{' (director)' if is_director else ''}: {entry.get('status', '?')}")
    print(f"  image       {_digest(entry.get('image'))}")
    print(f"  url         {url or '-'}")
    if not url:
        print(f"  error       {entry.get('error') or 'not deployed'}")
        return []
    healthy, health_text = health(url, health_path)
    print(f"  health      {'ok' if healthy else 'UNHEALTHY'}: {health_text}")
    problems = [] if healthy else [f"{name}: unhealthy: {health_text}"]
    if is_director:
        return problems
    if registered is None:
        print(f"  registered  unknown: {why_unknown}")
        return [*problems, f"{name}: registration unknown: {why_unknown}"]
    print(f"  registered  {'yes' if name in registered else 'NO'}")
    return problems + ([] if name in registered else [f"{name}: not registered with the director"])


def _digest(image: str | None) -> str:
    if not image:
        return "-"
    return image.rpartition("@")[2] if "@" in image else f"{image} (not pinned by digest)"


def _load(source: str) -> dict[str, Any]:
    text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    document = json.loads(text)
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    return document


def _decode(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def _opener_for(url: str) -> urllib.request.OpenerDirector:
    # Local services must not be sent through a proxy meant for the internet.
    host = urllib.parse.urlsplit(url).hostname or ""
    local = host in ("127.0.0.1", "localhost", "::1")
    handlers = [urllib.request.ProxyHandler({})] if local else []
    return urllib.request.build_opener(*handlers)


if __name__ == "__main__":
    sys.exit(main())
