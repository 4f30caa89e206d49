"""A worker killed mid-job (SIGKILL): the sweeper notices the silent heartbeat, re-enqueues, and another
worker resumes from the saved training state (not from step 0), as attempt 2."""

from __future__ import annotations

import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.store.db import upgrade
from app.store.settings import Settings
from tests.support.broker import forget_redis_queue
from tests.support.servers import start_worker
from tests.support.service import REDIS_URL, follow, new_key, reachable, register_teacher, submit, upload

pytestmark = [pytest.mark.slow, pytest.mark.services]

FAST_RECOVERY = {
    "GKD_STALE_AFTER_SECONDS": "3",
    "GKD_SWEEPER_INTERVAL_SECONDS": "1",
    "GKD_HEARTBEAT_SECONDS": "0.5",
    "GKD_STATE_EVERY_STEPS": "3",
}


@pytest.mark.parametrize("backend", ["sqlite+embedded", "postgresql+redis"])
def test_killed_worker_job_resumes(tmp_path: Path, tiny_teacher: Path, backend: str,
                                   request: pytest.FixtureRequest) -> None:
    home = tmp_path / "home"
    urls: dict[str, str] = {}
    if backend == "postgresql+redis":
        if not reachable(6379):
            pytest.skip("Redis is not listening on 127.0.0.1:6379")
        urls = {"database_url": request.getfixturevalue("postgresql_url"), "broker_url": REDIS_URL}
    settings = Settings(home=home, task_queue=f"crash-{secrets.token_hex(4)}", sse_poll_seconds=0.2,
                        broker_polling_seconds=0.2, **urls)
    upgrade(settings.database_url)
    log = tmp_path / "worker.log"
    first = start_worker(settings, log, **FAST_RECOVERY)
    second: subprocess.Popen | None = None
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as api:
            headers = {"Authorization": f"Bearer {new_key(settings)}"}
            teacher = register_teacher(settings, headers, tiny_teacher)
            dataset = upload(api, headers, 48)
            job = submit(api, headers, teacher, dataset, epochs=12)
            deadline = time.monotonic() + 120
            while api.get(f"/v1/jobs/{job['id']}", headers=headers).json()["progress"]["step"] < 8:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.05)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            killed_at = api.get(f"/v1/jobs/{job['id']}", headers=headers).json()
            assert killed_at["status"] == "running"

            second = start_worker(settings, log, **FAST_RECOVERY)
            events = follow(api, headers, job["id"], timeout=150)
            assert events[-1]["data"]["status"] == "succeeded", log.read_text()[-3000:]
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
            resumed = [e for e in events if e["type"] == "log" and "resumed from step" in e["message"]]
            assert resumed and resumed[0]["data"]["resumed_from_step"] > 0
            final = api.get(f"/v1/jobs/{job['id']}", headers=headers).json()
            assert final["attempts"] == 2
            assert final["progress"]["step"] == final["progress"]["total_steps"]
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=20)
        if settings.broker_url.startswith("redis"):
            forget_redis_queue(REDIS_URL, settings.task_queue)
