"""The service commands: db upgrade, keys create/revoke, models import, and `serve` printing a stable key."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from app.cli import cli
from tests.support.servers import REPO, free_port


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {"GKD_HOME": str(tmp_path / "home"), "GKD_DATABASE_URL": "", "GKD_BROKER_URL": ""}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_keys_and_models(env: dict, tiny_teacher: Path) -> None:
    code, out = run("db", "upgrade")
    assert code == 0 and "head" in out
    code, out = run("keys", "create", "--tenant", "acme")
    assert code == 0
    key = next(line for line in out.splitlines() if line.startswith("gkd_"))
    code, out = run("models", "import", str(tiny_teacher), "--name", "tiny", "--tenant", "acme")
    assert code == 0 and "mdl_" in out
    code, out = run("models", "import", str(tiny_teacher.parent / "nope"), "--name", "x")
    assert code != 0

    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.store.settings import Settings

    # No key cache, so the revocation below is refused on the very next request (the cache: test_api_basics).
    with TestClient(create_app(Settings(api_key_cache_seconds=0)), raise_server_exceptions=False) as client:
        headers = {"Authorization": f"Bearer {key}"}
        models = client.get("/v1/models", headers=headers).json()["data"]
        assert [m["name"] for m in models] == ["tiny"]
        code, out = run("keys", "revoke", key[:12])
        assert code == 0 and "revoked" in out
        assert client.get("/v1/models", headers=headers).status_code == 401
    code, _ = run("keys", "revoke", "gkd_nothing_like_this")
    assert code != 0


def _serve_once(home: Path) -> tuple[str, str]:
    port = free_port()
    env = {**os.environ, "GKD_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("GKD_DATABASE_URL", None)
    env.pop("GKD_BROKER_URL", None)
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--no-worker", "--port", str(port)],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.3)
        key = (home / "local_api_key").read_text().strip()
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {key}"}).json()
        assert any(m["name"] == "all-MiniLM-L6-v2" and m["owner"] == "global" for m in models["data"])
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    return key, output


@pytest.mark.slow
def test_serve_prints_the_same_local_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    key, output = _serve_once(home)
    assert key in output and "curl" in output
    assert stat.S_IMODE((home / "local_api_key").stat().st_mode) == 0o600
    again, output = _serve_once(home)
    assert again == key and key in output


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:  # a zombie waiting for its reaper has ended too
        return handle.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
def test_serve_starts_a_webhook_worker_and_stops_its_workers_on_sigterm(tmp_path: Path) -> None:
    """Both workers are webhook workers here (GKD_WORKER_QUEUES reaches them), so none loads torch."""
    port = free_port()
    env = {**os.environ, "GKD_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
           "GKD_WORKER_QUEUES": "webhooks"}
    env.pop("GKD_DATABASE_URL", None)
    env.pop("GKD_BROKER_URL", None)
    log = tmp_path / "serve.log"
    with log.open("wb") as handle:
        process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)], cwd=REPO, env=env,
                                   stdout=handle, stderr=subprocess.STDOUT)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not pids:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("worker: pid "):  # "worker: pid N, webhooks pid M"
                    pids = [int(word.strip(",")) for word in line.split() if word.strip(",").isdigit()]
            time.sleep(0.3)
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)
        while True:  # uvicorn runs (its signal handling is what ended serve early)
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        process.terminate()
        process.wait(timeout=60)
        deadline = time.monotonic() + 40
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert not any(_alive(pid) for pid in pids), "gkd serve left its workers running"
    finally:
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
