"""Real processes for the reliability tests: a throwaway Redis of our own (stoppable), a TCP proxy in front of
PostgreSQL that the tests can cut (a database outage without touching the machine's PostgreSQL), and a pool
of real Celery worker subprocesses that can be SIGKILLed and restarted.

The machine's own Redis and PostgreSQL are never stopped: the PostgreSQL outage is the proxy refusing and
dropping connections, the broker outage is our private redis-server being stopped.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.store.settings import Settings
from tests.support.servers import free_port, start_worker, wait_for
from tests.support.service import reachable

PG_HOST, PG_PORT = "127.0.0.1", 5432


# ------------------------------------------------------------------------------------------------- Redis


class RedisServer:
    """Our own redis-server on a free port; `stop()`/`start()` simulate a broker outage."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        log = (self.dir / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for(lambda: reachable(self.port), 10, "redis-server to listen")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None
        wait_for(lambda: not reachable(self.port), 10, "redis-server to stop")


# ----------------------------------------------------------------------------------------------- TCP proxy


class TcpProxy:
    """Forwards 127.0.0.1:<port> to PostgreSQL. `cut()` drops every open connection and refuses new ones
    (what clients see while the database restarts); `restore()` lets connections through again."""

    def __init__(self, upstream: tuple[str, int] = (PG_HOST, PG_PORT)) -> None:
        self.upstream = upstream
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.open: set[socket.socket] = set()
        self.refusing = False
        self.closed = False
        self.cuts = 0
        self.refused = 0
        self.accepted = 0
        threading.Thread(target=self._accept, name="pg-proxy", daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing:
                self.refused += 1
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            self.accepted += 1
            with self.lock:
                self.open.update((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                self._close(sock)

    def _close(self, sock: socket.socket) -> None:
        with self.lock:
            self.open.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def cut(self) -> int:
        """Refuse new connections and reset every open one; returns how many sockets were dropped."""
        self.refusing = True
        self.cuts += 1
        with self.lock:
            sockets = list(self.open)
        for sock in sockets:
            self._close(sock)
        return len(sockets)

    def restore(self) -> None:
        self.refusing = False

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()


# ----------------------------------------------------------------------------------------------- workers


WORKER_ENV = {
    "GKD_STALE_AFTER_SECONDS": "4",
    "GKD_SWEEPER_INTERVAL_SECONDS": "0.5",
    "GKD_REQUEUE_AFTER_SECONDS": "1",
    "GKD_HEARTBEAT_SECONDS": "0.5",
    "GKD_STATE_EVERY_STEPS": "3",
    "GKD_METRICS_EVERY_STEPS": "2",
    "GKD_CANCEL_CHECK_SECONDS": "60",  # cancellation must be seen at the progress write itself
    "GKD_MAX_ATTEMPTS": "2",
}
METRICS_EVERY = int(WORKER_ENV["GKD_METRICS_EVERY_STEPS"])


class Stack:
    """PostgreSQL (direct for the API, through the proxy for the workers), our Redis, N workers."""

    def __init__(self, settings: Settings, proxy: TcpProxy, redis: RedisServer, home: Path) -> None:
        self.settings, self.proxy, self.redis, self.home = settings, proxy, redis, home
        self.log = home / "workers.log"
        self.workers: list[subprocess.Popen[bytes]] = []
        self.worker_url = settings.database_url.replace(f"{PG_HOST}:{PG_PORT}", f"127.0.0.1:{proxy.port}")

    def start_worker(self) -> subprocess.Popen[bytes]:
        process = start_worker(self.settings, self.log, GKD_DATABASE_URL=self.worker_url, **WORKER_ENV)
        self.workers.append(process)
        return process

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [w for w in self.workers if w.poll() is None]

    def kill(self, pid: int) -> None:
        process = next(w for w in self.workers if w.pid == pid)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def wait_workers_ready(self, count: int, timeout: float = 60) -> None:
        """Until `count` worker processes have logged 'ready' since they started."""
        wait_for(lambda: self.log.exists() and self.log.read_text(errors="replace").count(" ready.") >= count,
                 timeout, f"{count} workers ready", interval=0.2, tail=self.tail)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-5000:] if self.log.exists() else ""

    def stop(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                process.terminate()
        for process in self.workers:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


@pytest.fixture(scope="session")
def reliability_database() -> Iterator[str]:
    """A database of the reliability stack's own: its workers live for the whole session and sweep every stale
    job they can see, so on the service tests' database they would take over those tests' jobs."""
    from tests.support.postgres import temporary_postgres_database
    from tests.support.service import PG_SERVER

    if not reachable(5432):
        pytest.skip("PostgreSQL is not listening on 127.0.0.1:5432")
    with temporary_postgres_database(PG_SERVER, prefix="gkd_rel") as url:
        yield url


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, reliability_database: str) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("reliability")
    redis = RedisServer(home / "redis").start()
    proxy = TcpProxy()
    settings = Settings(home=home / "home", database_url=reliability_database, broker_url=redis.url,
                        task_queue=f"rel-{secrets.token_hex(4)}", sse_poll_seconds=0.2,
                        enqueue_timeout_seconds=0.5, migrate_on_start=False)
    settings.ensure_dirs()
    stack = Stack(settings, proxy, redis, home)
    stack.start_worker()
    stack.start_worker()
    try:
        yield stack
    finally:
        stack.stop()
        proxy.close()
        redis.stop()


@pytest.fixture(scope="session")
def api(stack: Stack) -> Iterator[TestClient]:
    with TestClient(create_app(stack.settings), raise_server_exceptions=False) as client:
        yield client


def worker_pid(settings: Settings, job_id: str) -> int:
    """The pid of the worker holding the job (`jobs.worker` is "host:pid"; the API does not show it)."""
    from app.store.db import session_scope
    from app.store.orm import Job

    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.worker
        return int(job.worker.rsplit(":", 1)[1])


def report(line: str) -> None:
    """Measured numbers go to the terminal (-s) and to a file docs/reliability.md quotes from."""
    print(line)
    path = os.environ.get("GKD_RELIABILITY_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


@pytest.fixture(scope="session")
def live_server(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """`uvicorn app.main:create_app` as a real process on the stack's PostgreSQL (memory broker: nothing
    consumes its tasks), with its own storage directory and a 32 KiB dataset limit."""
    from tests.support.servers import Server

    home = tmp_path_factory.mktemp("live-home")
    settings = Settings(home=home, database_url=stack.settings.database_url, broker_url="memory://",
                        task_queue=f"live-{secrets.token_hex(4)}", migrate_on_start=False)
    settings.ensure_dirs()
    server = Server(settings, home / "api.log").start()
    try:
        yield server
    finally:
        server.stop()
