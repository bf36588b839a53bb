"""What the HTTP door refuses before it reads a request: browsers and foreign folders.

A web page the developer has open can POST to `http://127.0.0.1:PORT` of `archdeploy dev`.
A browser sends such a request with an `Origin` header, and without a CORS preflight only
for the "simple" content types (text/plain, forms), which the door does not read. So:
a request whose `Origin` is not the door's own (or one of `ARCHDEPLOY_HTTP_ALLOWED_ORIGINS`)
is refused with 403, and a local `source_root` must resolve (links resolved) inside the
door's allowed folder (`ARCHDEPLOY_HTTP_SOURCE_ROOT`, default: its working directory):
the workers build whatever folder it names.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import UsageError

if TYPE_CHECKING:
    from shared.messages import DeployRequest

REMOTE_ROOTS = ("gs://", "github://")
SOURCE_ROOT_SETTING = "ARCHDEPLOY_HTTP_SOURCE_ROOT"


class Forbidden(UsageError):
    """A request refused: 403 for where it comes from or what it may read, 400 when a
    field it needs is missing or malformed."""

    def __init__(self, field: str, message: str, fix: str, status: int = 403) -> None:
        super().__init__(message)
        self.field, self.fix, self.status = field, fix, status


def check_origin(request: Any, allowed: tuple[str, ...] = ()) -> None:
    """Refuse a browser request from another site; requests without `Origin` pass."""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    own = f"{request.scheme}://{request.host}".lower()
    if origin.lower().rstrip("/") in {own, *(o.lower().rstrip("/") for o in allowed)}:
        return
    raise Forbidden(
        "Origin",
        f"requests from origin {origin[:200]!r} are refused: this door serves no web page",
        "call it from curl or `archdeploy up --endpoint`, or list the origin in "
        "ARCHDEPLOY_HTTP_ALLOWED_ORIGINS",
    )


def check_source_root(request: DeployRequest, base: Path) -> None:
    """A local `source_root` stays inside `base`; inline text needs one at all."""
    root = request.source_root
    if not root:
        if request.architecture is not None:
            raise Forbidden(
                "source_root",
                "no source_root: the architecture's relative source paths have nowhere to resolve",
                f"add ?source_root=/abs/path/of/the/checkout (inside {base}), or send "
                '{"architecture_uri": ...} for a gs:// or github:// file',
                status=400,
            )
        return
    if root.startswith(REMOTE_ROOTS):
        return
    fix = f"send a folder inside {base} (set {SOURCE_ROOT_SETTING} on the server to widen it)"
    if "://" in root or "\0" in root or not Path(root).is_absolute():
        message = f"source_root {root[:200]!r} is not an absolute path"
        raise Forbidden("source_root", message, fix, status=400)
    try:
        inside = Path(root).resolve().is_relative_to(base.resolve())
    except (OSError, RuntimeError):
        inside = False
    if not inside:
        raise Forbidden(
            "source_root", f"source_root {root[:200]!r} is outside the allowed {base}", fix
        )
