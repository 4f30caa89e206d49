"""What makes a text storable: PostgreSQL refuses NUL in text and JSONB, and a lone UTF-16 surrogate cannot be
encoded as UTF-8, so a row holding one answers 500 on every later read. One check, for configs, request bodies,
data files and model configs alike."""

from __future__ import annotations

import re

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable_reason(value: str) -> str | None:
    """Why `value` cannot be stored (one short phrase), or None when it can."""
    found = _UNSTORABLE.search(value)
    if found is None:
        return None
    if found.group() == "\x00":
        return "must not contain NUL characters"
    return "must be valid Unicode (a lone surrogate is not)"
