"""Engines, sessions and migrations. One engine per database URL and process."""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)
T = TypeVar("T")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str, *, pre_ping: bool = True, autocommit: bool = False) -> Engine:
    """SQLite with its pragmas, or PostgreSQL (psycopg 3) on a pool that pings a connection before lending it.

    `pre_ping=False` and `autocommit=True` make the read pool of `app.reads`, whose callers retry on a dropped
    connection themselves and need no transaction (PostgreSQL only)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    isolation = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    return create_engine(postgres_driver_url(url), pool_pre_ping=pre_ping, pool_size=10, max_overflow=10, **isolation)


def postgres_driver_url(url: str) -> str:
    """A bare `postgresql://` URL names psycopg 3 explicitly (SQLAlchemy's default would be psycopg2)."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


@functools.lru_cache(maxsize=16)
def engine_for(url: str) -> Engine:
    return make_engine(url)


@functools.lru_cache(maxsize=16)
def sessionmaker_for(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=engine_for(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    session = sessionmaker_for(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def with_retries(fn: Callable[[], T], *, attempts: int = 6, what: str = "database write") -> T:
    """Run `fn` (one whole transaction), retrying transient OperationalErrors with jittered backoff."""
    delay = 0.2
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except (OperationalError, DBAPIError) as exc:
            transient = isinstance(exc, OperationalError) or getattr(exc, "connection_invalidated", False)
            if not transient or attempt == attempts:
                raise
            log.warning("%s failed (attempt %d/%d): %s; retrying", what, attempt, attempts, exc.orig)
            time.sleep(delay + random.uniform(0, delay))
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


def migrations_dir() -> Path:
    import migrations

    return Path(migrations.__file__).resolve().parent


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` to `revision` (idempotent)."""
    from alembic import command
    from alembic.config import Config

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    engine = engine_for(url)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
