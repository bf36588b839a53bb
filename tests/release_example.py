"""The example as release tests drive it through the CLI (e2e and hostile): a copy whose
released services answer a version, and each service's `role` read from its stable URL."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ROLES = {"ingest": "takes orders in", "enrich": "enriches orders"}  # the services released


def role(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url + "/", timeout=10) as answer:
        return str(json.load(answer)["role"])


def roles(urls: dict[str, str]) -> dict[str, str]:
    return {name: role(urls[name]) for name in ROLES}


class ExampleCopy:
    """A copy of the example under `root`, its state folder beside it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "state"
        shutil.copytree(EXAMPLES, root / "example")
        self.file = root / "example" / "architecture.yaml"
        self.base = yaml.safe_load(self.file.read_text())

    def answer_version(self, version: str) -> dict[str, Any]:
        """Make ingest and enrich answer `role (version)`; returns a fresh copy of the
        file's document to change and `write`."""
        for name, says in ROLES.items():
            main = self.root / "example" / "services" / name / "main.py"
            text = (EXAMPLES / "services" / name / "main.py").read_text()
            main.write_text(text.replace(f'"{says}"', f'"{says} ({version})"'))
        document: dict[str, Any] = json.loads(json.dumps(self.base))
        return document

    def write(self, document: dict[str, Any]) -> None:
        self.file.write_text(yaml.safe_dump(document, sort_keys=False))
