"""The hot read path: GET routes that clients poll, answered in one worker-thread hop and one database round trip.

Polling job status is most of what an API process does, so these reads skip what the general session dependency
costs per request:

- the pool's pre-ping (an extra round trip per request): a read is idempotent, so when its pooled connection turns
  out dead (the database restarted) it is simply run again on a fresh one;
- a second thread hop to close the session, and FastAPI's re-validation of the returned model: session, query,
  close and serialisation (pydantic, to JSON bytes) all happen in the same worker thread;
- a GIL convoy: the reads share a small thread limiter (`Settings.read_threads`) instead of the 40-thread default
  pool; each read is sub-millisecond work plus a round trip, and 40 threads contending for the GIL under load
  stretched the slowest requests (p99) several-fold (benchmarks/api.py).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TypeVar

import anyio
from fastapi import Response
from pydantic import BaseModel
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from app.db import engine_for, make_engine

log = logging.getLogger(__name__)
T = TypeVar("T")


@functools.lru_cache(maxsize=16)
def read_engine_for(url: str) -> Engine:
    """An autocommit pool without pre-ping (no BEGIN, ROLLBACK or ping round trips). SQLite: the main engine."""
    if url.startswith("sqlite"):
        return engine_for(url)
    return make_engine(url, pre_ping=False, autocommit=True)


@functools.lru_cache(maxsize=16)
def read_sessionmaker_for(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=read_engine_for(url), expire_on_commit=False)


def run_read(url: str, read: Callable[[Session], T]) -> T:
    """`read(session)` on a read session that is closed before returning; run again once on a dropped connection.

    Under PostgreSQL's READ COMMITTED every statement sees its own snapshot, inside a transaction or not, so the
    autocommit session changes nothing a read can observe."""
    sessions = read_sessionmaker_for(url)
    for attempt in (1, 2):
        try:
            with sessions() as session:
                return read(session)
        except DBAPIError as exc:
            # The dead connection was invalidated (and with it the pool's older ones); the retry connects anew.
            if attempt == 2 or not exc.connection_invalidated:
                raise
            log.info("read hit a dropped database connection; running it again: %s", exc.orig)
    raise AssertionError("unreachable")


class Reads:
    """One per app (`app.state.reads`): runs reads in its own few worker threads."""

    def __init__(self, database_url: str, threads: int) -> None:
        self.database_url = database_url
        self.limiter = anyio.CapacityLimiter(threads)

    async def __call__(self, read: Callable[[Session], T]) -> T:
        return await anyio.to_thread.run_sync(run_read, self.database_url, read, limiter=self.limiter)

    async def json(self, read: Callable[[Session], BaseModel]) -> Response:
        """The model `read` returns, serialised to a JSON response in the same thread hop."""
        body = await self(lambda session: read(session).model_dump_json().encode())
        return Response(body, media_type="application/json")
