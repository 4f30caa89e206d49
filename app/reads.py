"""The hot read path: GET routes that clients poll, answered in one worker-thread hop and one database round trip.

Polling job status is most of what an API process does, so these reads skip what the general session dependency
costs per request:

- the pool's pre-ping (an extra round trip per request): a read is idempotent, so when its pooled connection turns
  out dead (the database restarted) it is simply run again on a fresh one;
- a second thread hop to close the session, and FastAPI's re-validation of the returned model: session, query,
  close and serialisation (pydantic, to JSON bytes) all happen in the same worker thread;
- a GIL convoy: the reads run in a small pool of their own (`Settings.read_threads`) instead of the 40-thread default
  pool; each read is sub-millisecond work plus a round trip, and 40 threads contending for the GIL under load
  stretched the slowest requests (p99) several-fold (benchmarks/api.py);
- anyio's thread hop (capacity limiter, cancel scope, its worker's queue): the pool is `app.read_threads`, a
  queue and an asyncio future per call, about 12 µs of CPU per hop against 85 to 100 µs for
  `anyio.to_thread.run_sync`. A read whose request is cancelled runs to its end in its thread and is dropped; it
  changes nothing;
- the ORM's object loading: reads select plain columns (`row_select`) on a Core connection, so a row reads like
  the mapped object but costs no identity map, instance state or attribute instrumentation (the ORM's
  `Session.get` was a third of a job read's CPU in a py-spy profile: docs/performance.md).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Response
from pydantic import BaseModel
from sqlalchemy import Connection, Engine, Select, event, inspect, select
from sqlalchemy.exc import DBAPIError

from app.read_threads import ReadThreads
from app.store.db import engine_for, make_engine

log = logging.getLogger(__name__)
T = TypeVar("T")


@functools.lru_cache(maxsize=16)
def read_engine_for(url: str) -> Engine:
    """An autocommit pool without pre-ping (no BEGIN, ROLLBACK or ping round trips). SQLite: the main engine."""
    if url.startswith("sqlite"):
        return engine_for(url)
    engine = make_engine(url, pre_ping=False, autocommit=True)
    event.listen(engine, "connect", _utf8_json_loads)
    return engine


_json_decode = json.JSONDecoder().decode


def json_from_utf8(data: str | bytes) -> Any:
    """`json.loads(data)` for the UTF-8 text PostgreSQL sends: without `json.loads`' guess of the encoding (UTF-8,
    -16 or -32) and its argument checks. A job row has six JSON columns and a page of the list twenty rows, and
    decoding them was a tenth of a list request's CPU (docs/performance.md)."""
    return _json_decode(data if isinstance(data, str) else data.decode("utf-8", "surrogatepass"))


def _utf8_json_loads(dbapi_connection: Any, _record: Any) -> None:
    """On each new connection of the read pool only (psycopg's loaders are set per connection, not globally)."""
    from psycopg.types.json import set_json_loads  # PostgreSQL only: the embedded SQLite needs no psycopg

    set_json_loads(json_from_utf8, dbapi_connection)


@functools.cache
def row_select(entity: type[Any], attributes: tuple[str, ...] | None = None) -> Select[Any]:
    """`select(entity)` as its table's columns labelled with the mapped attribute names (`meta`, not `metadata`):
    the rows it returns read like the mapped objects, so the response models' `of()` take either. `attributes`:
    only those (what a response model reads); every column the driver describes, converts and SQLAlchemy wraps
    costs CPU on each read."""
    props = inspect(entity).column_attrs
    chosen = props if attributes is None else [props[name] for name in attributes]
    return select(*(prop.columns[0].label(prop.key) for prop in chosen))


def run_read(url: str, read: Callable[[Connection], T]) -> T:
    """`read(connection)` on a pooled read connection returned before this returns; run again once on a dropped
    connection.

    Under PostgreSQL's READ COMMITTED every statement sees its own snapshot, inside a transaction or not, so the
    autocommit connection changes nothing a read can observe. (SQLite: the main engine; the connection's implicit
    transaction is rolled back when it is returned.)"""
    engine = read_engine_for(url)
    for attempt in (1, 2):
        try:
            with engine.connect() as connection:
                return read(connection)
        except DBAPIError as exc:
            # The dead connection was invalidated (and with it the pool's older ones); the retry connects anew.
            if attempt == 2 or not exc.connection_invalidated:
                raise
            log.info("read hit a dropped database connection; running it again: %s", exc.orig)
    raise AssertionError("unreachable")


class Reads:
    """One per app (`app.state.reads`): runs reads in its own few worker threads (`app.read_threads`)."""

    def __init__(self, database_url: str, threads: int) -> None:
        self.database_url = database_url
        self.threads = ReadThreads(threads)

    async def __call__(self, read: Callable[[Connection], T]) -> T:
        return await self.threads(functools.partial(run_read, self.database_url, read))

    async def json(self, read: Callable[[Connection], BaseModel]) -> Response:
        """The model `read` returns, serialised to a JSON response in the same thread hop."""
        body = await self(lambda session: read(session).model_dump_json().encode())
        return Response(body, media_type="application/json")
