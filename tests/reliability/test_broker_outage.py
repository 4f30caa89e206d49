"""Promise 2: the broker is down when a job is submitted. The job is accepted (201) and stays `queued`; when
the broker is back the workers' sweeper enqueues it and it runs exactly once, even when the task is then
delivered twice more (the claim is one conditional UPDATE).

(tests/service/test_jobs.py::test_broker_down_leaves_job_queued_and_sweeper_enqueues proves the sweep itself
in-process with the memory broker; this runs it end to end with a real Redis we stop and start.)
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.store.db import session_scope
from app.store.orm import Job
from app.store.queue import send_run_job
from tests.reliability.conftest import Stack, report
from tests.support.servers import wait_for
from tests.support.service import all_events, job_of, new_key, register_teacher, submit, upload

pytestmark = [pytest.mark.slow, pytest.mark.services]


def test_job_submitted_while_broker_down_runs_exactly_once(stack: Stack, api: TestClient,
                                                           tiny_teacher: Path) -> None:
    headers = {"Authorization": f"Bearer {new_key(stack.settings)}"}
    teacher = register_teacher(stack.settings, headers, tiny_teacher)
    dataset = upload(api, headers, 24)
    stack.wait_workers_ready(2)

    stack.redis.stop()
    try:
        started = time.monotonic()
        job = submit(api, headers, teacher, dataset)
        submit_seconds = time.monotonic() - started
        assert api.get("/readyz").status_code == 503
        time.sleep(1.5)  # longer than the sweeper's requeue_after: nobody can take it while the broker is down
        with session_scope(stack.settings.database_url) as session:
            row = session.get(Job, job["id"])
            # (the sweepers keep trying: each try stamps enqueued_at before its send fails)
            assert row is not None and row.status == "queued" and row.attempts == 0 and row.worker is None
    finally:
        stack.redis.start()
    back = time.monotonic()

    done = wait_for(lambda: (j := job_of(api, headers, job["id"]))["status"] in ("succeeded", "failed") and j,
                    90, "the swept job to finish", interval=0.2, tail=stack.tail)
    latency = time.monotonic() - back
    assert done["status"] == "succeeded", done["error"]
    # Two more deliveries of the same task: both must be skipped by the atomic claim.
    celery = api.app.state.celery()  # type: ignore[attr-defined]
    assert send_run_job(celery, stack.settings, job["id"]) and send_run_job(celery, stack.settings, job["id"])
    time.sleep(2)
    final = job_of(api, headers, job["id"])
    events = all_events(api, headers, job["id"])
    statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
    assert final["attempts"] == 1 and final["status"] == "succeeded"
    assert statuses == ["queued", "running", "succeeded"]
    assert sum(e["type"] == "log" and "training started" in e["message"] for e in events) == 1
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    report(f"promise 2: submit with the broker down answered 201 in {submit_seconds:.2f}s, job stayed queued; "
           f"broker back -> succeeded {latency:.1f}s later, attempts 1, 2 extra deliveries skipped")
