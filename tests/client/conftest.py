"""A real service for the client tests: uvicorn subprocesses on free loopback ports (SQLite + the embedded
broker), a real Celery worker for the job flow, and API keys of fresh tenants."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.store.settings import Settings

REPO = Path(__file__).resolve().parents[2]
MAX_DATASET_BYTES = 32 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "GKD_HOME": str(settings.home),
        "GKD_DATABASE_URL": settings.database_url,
        "GKD_BROKER_URL": settings.broker_url,
        "GKD_TASK_QUEUE": settings.task_queue,
        "GKD_MIGRATE_ON_START": "false",
        "GKD_MAX_DATASET_BYTES": str(MAX_DATASET_BYTES),
        "GKD_SSE_POLL_SECONDS": "0.2",
        "GKD_BROKER_POLLING_SECONDS": "0.2",
        "GKD_WORKER_NUM_THREADS": "1",
        "GKD_WORKER_DEVICE": "cpu",
        "GKD_METRICS_EVERY_STEPS": "1",
        "GKD_HEARTBEAT_SECONDS": "1",
        "GKD_CANCEL_CHECK_SECONDS": "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }


class Server:
    """`uvicorn --factory app.main:create_app` on a fixed port; can be stopped and started again."""

    def __init__(self, settings: Settings, log: Path, port: int | None = None) -> None:
        self.settings, self.log = settings, log
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> Server:
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning"],
            cwd=REPO, env=service_env(self.settings), stdout=handle, stderr=subprocess.STDOUT,
        )
        handle.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"API server exited:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"API server did not start:\n{self.log_tail()}")

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


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
    log = (service_settings.home / "worker.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "--name", f"client-test-{secrets.token_hex(3)}@%h"],
        cwd=REPO, env=service_env(service_settings), stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    yield process
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def make_key(settings: Settings) -> str:
    from app.store.db import session_scope
    from app.store.keys import create_key

    with session_scope(settings.database_url) as session:
        plain, _ = create_key(session, f"client-{secrets.token_hex(6)}")
    return plain


@pytest.fixture
def api_key(service_settings: Settings) -> str:
    return make_key(service_settings)


@pytest.fixture
def client(server: Server, api_key: str) -> Iterator[object]:
    from gkd.client import Client

    with Client(server.url, api_key, timeout=20, max_retries=2) as client:
        yield client


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.factories import make_tiny_teacher

    return make_tiny_teacher(tmp_path_factory.mktemp("client-teacher") / "tiny")


def register_teacher(settings: Settings, api_key: str, path: Path, name: str = "tiny") -> str:
    """Register `path` as a teacher of the key's tenant (what `gkd models import --tenant` does)."""
    from app.registry import import_directory
    from app.store.db import session_scope
    from app.store.keys import tenant_for_key

    with session_scope(settings.database_url) as session:
        tenant = tenant_for_key(session, api_key)
        assert tenant is not None
        return import_directory(session, path, name, tenant_id=tenant.id).id


def write_rows(path: Path, n: int, seed: int = 0) -> Path:
    from tests.factories import sentiment_rows, write_csv

    return write_csv(path, sentiment_rows(n, seed=seed))
