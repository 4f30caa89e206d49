"""Shared FastAPI dependencies: settings, a database session per request, the caller's tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import Depends, Header, Query, Request
from sqlalchemy.orm import Session

from app.db import sessionmaker_for
from app.errors import ApiError
from app.orm import Tenant
from app.settings import Settings
from app.store import tenant_for_key


async def get_settings(request: Request) -> Settings:
    # async: no I/O, so FastAPI need not hand it to the thread pool (one thread hop less per request).
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_session(settings: SettingsDep) -> AsyncIterator[Session]:
    # Creating a Session does no I/O, so it happens on the event loop (no thread hop). Closing it does I/O (the
    # rollback, returning the connection), so it runs in a worker thread, shielded from cancellation and outside
    # the thread pool's capacity limit, as FastAPI does for the exit of a sync generator dependency.
    session = sessionmaker_for(settings.database_url)()
    try:
        yield session
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(session.close, limiter=anyio.CapacityLimiter(1))


SessionDep = Annotated[Session, Depends(get_session)]


def get_current_tenant(
    session: SessionDep, authorization: Annotated[str | None, Header()] = None
) -> Tenant:
    challenge = {"WWW-Authenticate": "Bearer"}
    if not authorization:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer gkd_...'", code="missing_api_key",
                       headers=challenge)
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "malformed Authorization header; expected 'Bearer gkd_...'", headers=challenge)
    tenant = tenant_for_key(session, token.strip())
    # Detach the tenant first: the rollback would expire it and the route's first `tenant.id` would read the row
    # again. Routes only read its columns.
    if tenant is not None:
        session.expunge(tenant)
    # The lookup reads rows; end that transaction so the route starts its own.
    session.rollback()
    if tenant is None:
        raise ApiError(401, "invalid or revoked API key", code="invalid_api_key", headers=challenge)
    return tenant


CurrentTenant = Annotated[Tenant, Depends(get_current_tenant)]


class Page:
    """`limit` and `after` query parameters of list endpoints."""

    def __init__(
        self,
        request: Request,
        limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
        after: Annotated[str | None, Query(max_length=100)] = None,
    ) -> None:
        settings: Settings = request.app.state.settings
        self.limit = min(limit or settings.page_limit_default, settings.page_limit_max)
        self.after = after


PageDep = Annotated[Page, Depends()]
