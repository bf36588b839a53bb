"""What the example's released services answer, for release tests that drive the example
through the CLI (e2e and hostile): each service's `role`, read from its stable URL."""

from __future__ import annotations

import json
import urllib.request

ROLES = {"ingest": "takes orders in", "enrich": "enriches orders"}  # the services released


def role(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url + "/", timeout=10) as answer:
        return str(json.load(answer)["role"])


def roles(urls: dict[str, str]) -> dict[str, str]:
    return {name: role(urls[name]) for name in ROLES}
