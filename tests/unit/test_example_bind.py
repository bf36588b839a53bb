"""The example services listen on loopback locally and on every interface on Cloud Run."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SERVICES = Path(__file__).resolve().parents[2] / "examples" / "services"


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{path.parent.name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "path", [SERVICES / "common/registration.py", SERVICES / "director/main.py"]
)
def test_bind_host(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bind_host = _load(path).bind_host
    monkeypatch.delenv("K_SERVICE", raising=False)
    monkeypatch.delenv("ARCHDEPLOY_SERVICE_ID", raising=False)
    assert bind_host() == "127.0.0.1"  # run by hand
    monkeypatch.setenv("K_SERVICE", "director")
    assert bind_host() == "0.0.0.0"  # Cloud Run
    monkeypatch.setenv("ARCHDEPLOY_SERVICE_ID", "abc/p/default/director/x")
    assert bind_host() == "127.0.0.1"  # archdeploy's local deployer
