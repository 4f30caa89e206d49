"""Issue 20 finding 7: a cancel is honoured during a job's set-up (reading the data, loading the teacher, building the
teacher cache and the student), with a real worker: the job ends `cancelled` without ever starting to train."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.store.db import upgrade
from app.store.settings import Settings
from tests.support.broker import forget_redis_queue
from tests.support.servers import start_worker, stop
from tests.support.service import (
    REDIS_URL,
    all_events,
    job_of,
    new_key,
    reachable,
    register_teacher,
    submit,
    upload,
)

pytestmark = [pytest.mark.slow, pytest.mark.services]


@pytest.mark.parametrize("backend", ["sqlite+embedded", "postgresql+redis"])
def test_a_cancel_during_set_up_ends_the_job_cancelled_before_training(tmp_path: Path, tiny_teacher: Path,
                                                                       backend: str,
                                                                       request: pytest.FixtureRequest) -> None:
    urls: dict[str, str] = {}
    if backend == "postgresql+redis":
        if not reachable(6379):
            pytest.skip("Redis is not listening on 127.0.0.1:6379")
        urls = {"database_url": request.getfixturevalue("postgresql_url"), "broker_url": REDIS_URL}
    settings = Settings(home=tmp_path / "home", task_queue=f"setup-{secrets.token_hex(4)}",
                        broker_polling_seconds=0.2, **urls)
    upgrade(settings.database_url)
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log)
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as api:
            headers = {"Authorization": f"Bearer {new_key(settings)}"}
            teacher = register_teacher(settings, headers, tiny_teacher)
            job = submit(api, headers, teacher, upload(api, headers, 400), epochs=3)
            deadline = time.monotonic() + 120
            while job_of(api, headers, job["id"])["status"] == "queued":  # claimed: set-up begins
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.02)
            cancel = api.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
            assert cancel.status_code == 200 and cancel.json()["status"] in ("cancelling", "cancelled")
            while job_of(api, headers, job["id"])["status"] == "cancelling":
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.05)
            final = job_of(api, headers, job["id"])
            events = all_events(api, headers, job["id"])
    finally:
        stop(worker)
        if settings.broker_url.startswith("redis"):
            forget_redis_queue(REDIS_URL, settings.task_queue)
    assert final["status"] == "cancelled", log.read_text()[-3000:]
    assert final["error"] is None and final["progress"]["step"] == 0
    # Nothing of training happened: no "training started", no step metrics, no training phase, no checkpoint.
    assert not [e for e in events if e["type"] == "log" and "training started" in e["message"]], events
    assert not [e for e in events if e["type"] in ("metrics", "checkpoint")]
    assert not [e for e in events if e["type"] == "phase" and e["data"].get("phase") == "training"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "status" and events[-1]["data"]["status"] == "cancelled"
