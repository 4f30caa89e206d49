"""Server paths as a tenant may see them (issue 20, finding 12).

Error messages of the library name the files they read (`/srv/gkd/storage/models/<tenant>/<model>/config.json`),
which told a caller where the server keeps its files and under which tenant id. Before such a message leaves
the service (an API error, a job's `error`) its paths are rewritten relative to the ids the caller knows:
`models/<tenant>/mdl_x/config.json` -> `mdl_x/config.json`, `datasets/<tenant>/ds_y.csv` -> `ds_y.csv`,
`jobs/job_z/work/best` -> `job_z/work/best`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from pathlib import Path

from app.store.settings import Settings

_TAIL = r"(/[^\s'\"`,;:()\[\]{}<>]*)?"
"""The rest of a path after its root: up to a space, quote, bracket or punctuation that ends it in a message."""
_BY_TENANT = ("datasets", "models")  # <kind>/<tenant>/<id>...
_BY_ID = ("jobs", "tmp")  # <kind>/<id>...


def replace_paths(text: str, root: Path, show: Callable[[str], str]) -> str:
    """Every path at or below `root` in `text`, replaced by `show(the part below root)` ('' for root itself)."""
    spellings = {str(root).rstrip("/")}
    with contextlib.suppress(OSError):
        spellings.add(str(root.resolve()).rstrip("/"))
    for spelling in sorted(spellings, key=len, reverse=True):
        if not spelling or spelling not in text:
            continue
        pattern = re.compile(re.escape(spelling) + r"(?![^/\s'\"`,;:()\[\]{}<>])" + _TAIL)
        text = pattern.sub(lambda match: show((match.group(1) or "").strip("/").rstrip(".")), text)
    return text


def storage_view(relative: str) -> str:
    """A storage-relative path without the tenant directory (and without the `jobs/`, `tmp/` prefix)."""
    parts = [part for part in relative.split("/") if part]
    if parts and parts[0] in _BY_TENANT:
        parts = parts[2:]
    elif parts and parts[0] in _BY_ID:
        parts = parts[1:]
    return "/".join(parts) or "storage"


def public_text(text: str, settings: Settings) -> str:
    """`text` with the service's storage, teacher cache and home paths rewritten as a tenant may see them."""
    text = replace_paths(text, settings.storage, storage_view)
    if settings.cache_dir is not None:
        text = replace_paths(text, settings.cache_dir, lambda rel: "/".join(p for p in ("teacher-cache", rel) if p))
    return replace_paths(text, settings.home, lambda rel: rel or "home")
