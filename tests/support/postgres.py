"""A throwaway PostgreSQL database for tests and benchmarks that must not touch anyone else's data."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text

from app.store.db import engine_for, upgrade


@contextmanager
def temporary_postgres_database(server: str, prefix: str = "gkd_tmp") -> Iterator[str]:
    """A new, migrated PostgreSQL database on `server` (a URL without the database); dropped on exit.

    For tests and benchmarks that must not touch anyone else's data."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{server}/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        engine_for(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
