"""Real service processes for tests: free loopback ports, the environment a subprocess of the service runs with, a
Celery worker subprocess, the API under uvicorn (stoppable and restartable), and waiting for a condition."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from app.store.settings import Settings

REPO = Path(__file__).resolve().parents[2]
MAX_DATASET_BYTES = 32 * 1024
# What an API server of the tests runs with: migrated by the test, a 32 KiB dataset limit, fast event polling.
API_ENV = {"GKD_MIGRATE_ON_START": "false", "GKD_MAX_DATASET_BYTES": str(MAX_DATASET_BYTES),
           "GKD_SSE_POLL_SECONDS": "0.2"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of an API or worker subprocess on `settings`: one thread, CPU, offline, fast polling."""
    return {
        **os.environ,
        "GKD_HOME": str(settings.home),
        "GKD_DATABASE_URL": settings.database_url,
        "GKD_BROKER_URL": settings.broker_url,
        "GKD_TASK_QUEUE": settings.task_queue,
        "GKD_WORKER_NUM_THREADS": "1",
        "GKD_WORKER_DEVICE": "cpu",
        "GKD_METRICS_EVERY_STEPS": "1",
        "GKD_HEARTBEAT_SECONDS": "1",
        "GKD_CANCEL_CHECK_SECONDS": "0",
        "GKD_BROKER_POLLING_SECONDS": "0.2",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        **extra,
    }


def start_worker(settings: Settings, log: Path, name: str = "test", **extra: str) -> subprocess.Popen[bytes]:
    """A Celery worker subprocess (`python -m worker.cli`) on `settings`, logging to `log`."""
    handle = log.open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "--name", f"{name}-{secrets.token_hex(3)}@%h"],
            cwd=REPO, env=service_env(settings, **extra), stdout=handle, stderr=subprocess.STDOUT,
        )
    finally:
        handle.close()


def stop(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL if it does not end in time."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05,
             tail: Callable[[], str] | None = None) -> Any:
    """`predicate()`'s first truthy value, polled every `interval`; AssertionError (with `tail()`) after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail() if tail else ''}")
        time.sleep(interval)


class Server:
    """`uvicorn --factory app.main:create_app` on a fixed port (`API_ENV`, then `env`); can be stopped and started
    again. `production=True` starts the container's entry point instead (`python -m app.server`: the header bound
    and the graceful-shutdown timeout of GKD_* settings)."""

    def __init__(self, settings: Settings, log: Path, port: int | None = None, production: bool = False,
                 **env: str) -> None:
        self.settings, self.log, self.env = settings, log, {**API_ENV, **env}
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.production = production
        self.process: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        if self.production:
            return [sys.executable, "-m", "app.server"]
        return [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--host", "127.0.0.1",
                "--port", str(self.port), "--log-level", "warning"]

    def start(self, wait: bool = True) -> Server:
        handle = self.log.open("ab")
        env = {"GKD_HOST": "127.0.0.1", "GKD_PORT": str(self.port), **self.env}
        self.process = subprocess.Popen(
            self.argv(), cwd=REPO, env=service_env(self.settings, **env), stdout=handle, stderr=subprocess.STDOUT,
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
