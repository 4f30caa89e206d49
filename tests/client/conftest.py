"""A real service for the client tests: uvicorn subprocesses on free loopback ports (SQLite + the embedded
broker), a real Celery worker for the job flow, and API keys of fresh tenants (tests/support/servers.py)."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.store.settings import Settings
from tests.support.factories import sentiment_rows, write_csv
from tests.support.servers import API_ENV, Server, start_worker, stop
from tests.support.service import new_key


@pytest.fixture(scope="session")
def service_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("client-service")
    settings = Settings(home=home, database_url=f"sqlite:///{home / 'gkd.db'}", broker_url="",
                        task_queue=f"client-test-{secrets.token_hex(4)}", migrate_on_start=False)
    settings.ensure_dirs()
    from app.store.db import upgrade

    upgrade(settings.database_url)
    return settings


@pytest.fixture(scope="session")
def server(service_settings: Settings) -> Iterator[Server]:
    server = Server(service_settings, service_settings.home / "api.log").start()
    yield server
    server.stop()


@pytest.fixture
def spare_server(service_settings: Settings, tmp_path: Path) -> Iterator[Server]:
    """A second API server on the same database, for tests that stop and restart it."""
    server = Server(service_settings, tmp_path / "spare-api.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def worker(service_settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    process = start_worker(service_settings, service_settings.home / "worker.log", name="client-test", **API_ENV)
    yield process
    stop(process)


@pytest.fixture
def api_key(service_settings: Settings) -> str:
    return new_key(service_settings)


@pytest.fixture
def client(server: Server, api_key: str) -> Iterator[object]:
    from gkd.client import Client

    with Client(server.url, api_key, timeout=20, max_retries=2) as client:
        yield client


def write_rows(path: Path, n: int, seed: int = 0) -> Path:
    return write_csv(path, sentiment_rows(n, seed=seed))
