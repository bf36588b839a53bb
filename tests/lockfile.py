"""What uv.lock pins, for the tests that compare installs and shipped requirements to it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "uv.lock"


def normalized(name: str) -> str:
    """A distribution's name as PEP 503 compares it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions() -> dict[str, str]:
    """Normalized name -> the version uv.lock pins."""
    lock = tomllib.loads(LOCK.read_text())
    return {normalized(p["name"]): p["version"] for p in lock["package"] if "version" in p}
