"""Promise 5: two workers, six jobs: each job runs exactly once (one claim, attempt 1, one `running` event),
both workers take part; a cancel reaches the worker within one progress interval (the worker reads the
status in the same transaction as each progress write; GKD_CANCEL_CHECK_SECONDS is 60 here, so only that
path can stop it)."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.store.db import session_scope
from app.store.orm import Job
from tests.reliability.conftest import METRICS_EVERY, Stack, report
from tests.support.servers import wait_for
from tests.support.service import all_events, job_of, new_key, register_teacher, submit, upload

pytestmark = [pytest.mark.slow, pytest.mark.services]


def test_six_jobs_two_workers_each_once(stack: Stack, api: TestClient, tiny_teacher: Path) -> None:
    headers = {"Authorization": f"Bearer {new_key(stack.settings)}"}
    teacher = register_teacher(stack.settings, headers, tiny_teacher)
    dataset = upload(api, headers, 16)
    stack.wait_workers_ready(2)
    started = time.monotonic()
    ids = [submit(api, headers, teacher, dataset, seed=i, epochs=20)["id"] for i in range(6)]
    wait_for(lambda: all(job_of(api, headers, i)["status"] in ("succeeded", "failed") for i in ids), 150,
             "six jobs", interval=0.3, tail=stack.tail)
    elapsed = time.monotonic() - started
    workers = set()
    for job_id in ids:
        job = job_of(api, headers, job_id)
        assert job["status"] == "succeeded" and job["attempts"] == 1, job
        events = all_events(api, headers, job_id)
        assert [e["data"]["status"] for e in events if e["type"] == "status"] == ["queued", "running", "succeeded"]
        assert sum("training started" in e["message"] for e in events) == 1
        with session_scope(stack.settings.database_url) as session:
            row = session.get(Job, job_id)
            assert row is not None
            workers.add(row.worker)
    assert len(workers) == 2, workers
    report(f"promise 5: 6 jobs on 2 workers in {elapsed:.1f}s, each attempt 1 with one running event; "
           f"split over {len(workers)} workers")


def test_cancel_reaches_worker_within_one_progress_interval(stack: Stack, api: TestClient,
                                                            tiny_teacher: Path) -> None:
    headers = {"Authorization": f"Bearer {new_key(stack.settings)}"}
    teacher = register_teacher(stack.settings, headers, tiny_teacher)
    dataset = upload(api, headers, 48)
    stack.wait_workers_ready(2)
    job = submit(api, headers, teacher, dataset, epochs=100)
    wait_for(lambda: job_of(api, headers, job["id"])["progress"].get("step", 0) >= 2 * METRICS_EVERY, 120,
             "training", tail=stack.tail)
    cancel = api.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelling"
    done = wait_for(lambda: (j := job_of(api, headers, job["id"]))["status"] != "cancelling" and j, 60,
                    "the worker to stop", interval=0.1, tail=stack.tail)
    assert done["status"] == "cancelled"
    events = all_events(api, headers, job["id"])
    status = {e["data"]["status"]: e for e in events if e["type"] == "status"}
    last_before = max(e["data"]["step"] for e in events
                      if e["type"] == "metrics" and e["seq"] < status["cancelling"]["seq"])
    assert not [e for e in events if e["type"] == "metrics" and e["seq"] > status["cancelling"]["seq"]]
    stopped_at = done["metrics"]["latest"]["step"]  # the step the trainer was at when it stopped
    assert stopped_at <= last_before + METRICS_EVERY, (last_before, stopped_at)
    latency = (datetime.fromisoformat(status["cancelled"]["created_at"])
               - datetime.fromisoformat(status["cancelling"]["created_at"])).total_seconds()
    report(f"promise 5: cancel requested after metrics step {last_before}; worker stopped at step {stopped_at} "
           f"(progress interval {METRICS_EVERY} steps), cancelling->cancelled {latency:.2f}s")
