"""Fixtures of the service tests: a real database (SQLite file and PostgreSQL, parametrised), the app
behind TestClient, and API keys of fresh tenants (helpers: tests/support/service.py).

Isolation: each PostgreSQL test session gets its own database (dropped at the end), the SQLite database is
a file per session, and every test works inside tenants of its own, so tests never see each other's rows.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.store.settings import Settings
from tests.support.service import new_key


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path / "home",
        database_url=db_url,
        broker_url="memory://",
        migrate_on_start=False,
        task_queue=f"test-{secrets.token_hex(4)}",
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def auth(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {new_key(settings)}"}


@pytest.fixture
def other_auth(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {new_key(settings)}"}
