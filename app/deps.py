"""Shared FastAPI dependencies: settings, a database session per request, the caller's tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

import anyio
from fastapi import Depends, Header, Query, Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from app.errors import ApiError
from app.reads import Reads
from app.store.db import sessionmaker_for
from app.store.keys import hash_key, tenant_for_key
from app.store.orm import Tenant
from app.store.settings import Settings
from app.tenant_cache import TenantCache


async def get_settings(request: Request) -> Settings:
    # async: no I/O, so FastAPI need not hand it to the thread pool (one thread hop less per request).
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


@asynccontextmanager
async def _closing(session: Session) -> AsyncIterator[Session]:
    # Creating a Session does no I/O, so it happens on the event loop (no thread hop). Closing one that holds a
    # transaction does I/O (the rollback, returning the connection), so it runs in a worker thread, shielded from
    # cancellation and outside the thread pool's capacity limit, as FastAPI does for the exit of a sync generator
    # dependency. A session that holds none (never used, or already closed by the route) closes in place.
    try:
        yield session
    finally:
        if session.in_transaction():
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(session.close, limiter=anyio.CapacityLimiter(1))
        else:
            session.close()


async def get_session(settings: SettingsDep) -> AsyncIterator[Session]:
    async with _closing(sessionmaker_for(settings.database_url)()) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def reads_of(request: Request) -> Reads:
    """The app's hot-read runner. Not a dependency: routes take the `Request` (which FastAPI passes without solving
    anything) and call this, one sub-dependency less to solve per polled request (docs/performance.md)."""
    return request.app.state.reads


def _tenant_from_database(sessions: sessionmaker[Session], token: str) -> Tenant | None:
    with sessions() as session:
        tenant = tenant_for_key(session, token)
        # Detach the tenant with its columns loaded; routes only read them.
        if tenant is not None:
            session.expunge(tenant)
        return tenant


MISSING_KEY_MESSAGE = (
    "missing API key: send 'Authorization: Bearer gkd_...'. The Python client and the gkd CLI read it from "
    "GKD_API_KEY (or --api-key); a local `make run` prints its key and keeps it in var/local_api_key"
)


Authorization = Annotated[str | None, Header()]
"""The `Authorization` header as a route's own parameter, for routes that call `authenticate` themselves."""


async def get_current_tenant(request: Request, authorization: Authorization = None) -> Tenant:
    return await authenticate(request, authorization)


CurrentTenant = Annotated[Tenant, Depends(get_current_tenant)]


async def authenticate(request: Request, authorization: str | None) -> Tenant:
    """The caller's tenant from its API key, or a 401. Routes take it through `CurrentTenant`; the most polled one
    (a job's status) calls this itself with the header as its own parameter: a sub-dependency costs FastAPI a solve
    of its own on every request, and the OpenAPI document (one header parameter) is the same either way."""
    # async: a key seen in the last `api_key_cache_seconds` is answered from memory on the event loop, without a
    # thread hop or a database round trip; only a cache miss reads the database, in the thread pool. The settings
    # come from the app directly (what `get_settings` returns): one sub-dependency less to solve on every request.
    challenge = {"WWW-Authenticate": "Bearer"}
    if not authorization:
        raise ApiError(401, MISSING_KEY_MESSAGE, code="missing_api_key", headers=challenge)
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "malformed Authorization header; expected 'Bearer gkd_...'", headers=challenge)
    cache: TenantCache = request.app.state.tenant_cache

    def lookup() -> Awaitable[Tenant | None]:
        # The sessionmaker is looked up here, on the event loop: `sessionmaker_for`'s lru_cache is not atomic, and
        # a burst of first requests racing in threads would each build an engine with its own connection pool.
        sessions = sessionmaker_for(request.app.state.settings.database_url)
        return run_in_threadpool(_tenant_from_database, sessions, token)

    tenant = await cache.fetch(hash_key(token), lookup)
    if tenant is None:
        raise ApiError(401, "invalid or revoked API key", code="invalid_api_key", headers=challenge)
    return tenant


@dataclass(frozen=True)
class Page:
    """`limit` and `after` query parameters of list endpoints."""

    limit: int
    after: str | None


PageLimit = Annotated[int | None, Query(ge=1, le=1000)]
PageAfter = Annotated[str | None, Query(max_length=100)]


def page_of(request: Request, limit: int | None, after: str | None) -> Page:
    settings: Settings = request.app.state.settings
    return Page(min(limit or settings.page_limit_default, settings.page_limit_max), after)


async def get_page(request: Request, limit: PageLimit = None, after: PageAfter = None) -> Page:
    # async: a plain class dependency would be called in the thread pool, one thread hop per list request.
    return page_of(request, limit, after)


PageDep = Annotated[Page, Depends(get_page)]
