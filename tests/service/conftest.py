"""Fixtures of the service tests: a real database (SQLite file and PostgreSQL, parametrised), the app
behind TestClient, API keys of fresh tenants, and a tiny real teacher model.

Isolation: each PostgreSQL test session gets its own database (dropped at the end), the SQLite database is
a file per session, and every test works inside tenants of its own, so tests never see each other's rows.
"""

from __future__ import annotations

import io
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.store.db import session_scope, upgrade
from app.store.keys import create_key
from app.store.settings import Settings
from tests.support.postgres import temporary_postgres_database

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
REDIS_URL = "redis://127.0.0.1:6379/0"


def _reachable(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'gkd.db'}"
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def postgresql_url() -> Iterator[str]:
    if not _reachable(5432):
        pytest.skip("PostgreSQL is not listening on 127.0.0.1:5432")
    with temporary_postgres_database(PG_SERVER, prefix="gkd_test") as url:
        yield url


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


def new_key(settings: Settings, tenant: str | None = None) -> str:
    with session_scope(settings.database_url) as session:
        plain, _ = create_key(session, tenant or f"t-{secrets.token_hex(6)}")
    return plain


@pytest.fixture
def auth(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {new_key(settings)}"}


@pytest.fixture
def other_auth(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {new_key(settings)}"}


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.factories import make_tiny_teacher

    return make_tiny_teacher(tmp_path_factory.mktemp("teacher") / "tiny")


def tenant_id_of(settings: Settings, headers: dict[str, str]) -> str:
    from app.store.keys import tenant_for_key

    with session_scope(settings.database_url) as session:
        tenant = tenant_for_key(session, headers["Authorization"].removeprefix("Bearer "))
        assert tenant is not None
        return tenant.id


def register_teacher(settings: Settings, headers: dict[str, str], path: Path, name: str = "tiny") -> str:
    from app.registry import import_directory

    tenant_id = tenant_id_of(settings, headers)
    with session_scope(settings.database_url) as session:
        return import_directory(session, path, name, tenant_id=tenant_id).id


def csv_bytes(rows: list[dict[str, str]]) -> bytes:
    import csv

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def upload_dataset(client: TestClient, headers: dict[str, str], rows: list[dict[str, str]] | None = None,
                   name: str = "train.csv") -> dict:
    from tests.factories import sentiment_rows

    body = csv_bytes(rows or sentiment_rows(24))
    response = client.post("/v1/datasets", headers=headers, files={"file": (name, body, "text/csv")})
    assert response.status_code == 201, response.text
    return response.json()
