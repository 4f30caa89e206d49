"""Shared FastAPI dependencies: settings, a database session per request, the caller's tenant."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from sqlalchemy.orm import Session

from app.db import sessionmaker_for
from app.errors import ApiError
from app.orm import Tenant
from app.settings import Settings
from app.store import tenant_for_key


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    session = sessionmaker_for(settings.database_url)()
    try:
        yield session
    finally:
        session.close()


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
