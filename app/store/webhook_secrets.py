"""Signing secrets of webhook endpoints: made here, shown to the tenant once, kept encrypted.

The worker must sign with the plain secret (Standard Webhooks signatures are HMAC-SHA256), so a one-way hash will not
do; the database holds it encrypted with Fernet (`cryptography`), whose key is GKD_WEBHOOK_SECRET_KEY or, by default,
a key generated once in <home>/webhook_secret.key (mode 0600). A copy of the database alone therefore does not give
the secrets away; the database together with the key does.
"""

from __future__ import annotations

import base64
import os
import secrets
import time
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from app.store.settings import Settings

SECRET_PREFIX = "whsec_"
KEY_FILE = "webhook_secret.key"


def new_secret() -> str:
    """`whsec_` and 32 random bytes in base64: the form the `standardwebhooks` package accepts."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key_from_file(path: Path) -> bytes:
    """The key in `path`, created (exclusively, 0600) by the first process that needs it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(100):  # another process created it a moment ago and may still be writing it
            key = path.read_bytes().strip()
            if key:
                return key
            time.sleep(0.02)
        raise RuntimeError(f"{path} is empty; remove it or set GKD_WEBHOOK_SECRET_KEY") from None
    key = Fernet.generate_key()
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key


def fernet(settings: Settings) -> Fernet:
    if settings.webhook_secret_key:
        return Fernet(settings.webhook_secret_key.encode())
    settings.home.mkdir(parents=True, exist_ok=True)
    return Fernet(_key_from_file(settings.home / KEY_FILE))


def seal(settings: Settings, secret: str) -> str:
    return fernet(settings).encrypt(secret.encode()).decode()


def unseal(settings: Settings, sealed: str) -> str:
    """The plain secret; `ValueError` when the key is not the one it was sealed with."""
    try:
        return fernet(settings).decrypt(sealed.encode()).decode()
    except InvalidToken as exc:
        raise ValueError("the webhook secret cannot be decrypted with this GKD_WEBHOOK_SECRET_KEY") from exc
