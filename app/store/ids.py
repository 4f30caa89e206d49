"""Public ids: a prefix and 26 characters that sort by creation time (millisecond clock + randomness).

Sortable ids make cursor pagination a plain `WHERE id < :after ORDER BY id DESC`.
"""

from __future__ import annotations

import secrets
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


_last = [0, 0]  # (millis, random) of the previous id of this process
_lock = threading.Lock()


def new_id(prefix: str) -> str:
    """Ids made by one process increase strictly, even within one millisecond."""
    with _lock:
        millis = int(time.time() * 1000)
        if millis <= _last[0]:
            millis, rand = _last[0], (_last[1] + 1) % (1 << 80)
        else:
            rand = secrets.randbits(80)
        _last[0], _last[1] = millis, rand
    return f"{prefix}_{_encode(millis, 10)}{_encode(rand, 16)}"


def looks_like(value: str, prefix: str) -> bool:
    body = value.removeprefix(f"{prefix}_")
    return body != value and len(body) == 26 and all(c in _ALPHABET for c in body)
