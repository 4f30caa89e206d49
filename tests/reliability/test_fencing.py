"""Fencing: a worker cut off from the database past `stale_after_seconds` while another worker takes its job over.

Worker A reaches PostgreSQL through a proxy of its own and runs the job on a queue of its own. Once A is training,
its proxy is cut: A goes on computing while its writes retry, its heartbeat stops, a sweeper re-enqueues the job and
one of the stack's workers (B) claims it with fencing token 2 and resumes it. Then A's connections come back. A's
next write carries token 1 and is refused (`FencedOff`): A stops, nothing of it lands after B's claim, the events
stay contiguous, and the result equals an uninterrupted run with the same seed, tensor for tensor.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.reliability.conftest import PG_HOST, PG_PORT, WORKER_ENV, Stack, TcpProxy, report, worker_pid
from tests.reliability.test_worker_crash import final_tensors
from tests.support.servers import start_worker, stop, wait_for
from tests.support.service import all_events, job_of, new_key, register_teacher, submit, upload

pytestmark = [pytest.mark.slow, pytest.mark.services]

HYPER = {"epochs": 8, "seed": 1234}


def test_a_worker_cut_off_past_the_threshold_is_fenced_off(stack: Stack, api: TestClient,
                                                           tiny_teacher: Path) -> None:
    headers = {"Authorization": f"Bearer {new_key(stack.settings)}"}
    teacher = register_teacher(stack.settings, headers, tiny_teacher)
    dataset = upload(api, headers, 48)
    stack.wait_workers_ready(2)
    reference = submit(api, headers, teacher, dataset, **HYPER)["id"]  # on the stack's workers, never cut

    proxy = TcpProxy()
    settings = stack.settings.model_copy(update={"task_queue": f"fence-{secrets.token_hex(4)}"})
    log = stack.home / f"fenced-{secrets.token_hex(3)}.log"
    url = settings.database_url.replace(f"{PG_HOST}:{PG_PORT}", f"127.0.0.1:{proxy.port}")
    # A keeps retrying a write for longer than the outage, so the write it retries is the one the fence refuses.
    first = start_worker(settings, log, name="first", GKD_DATABASE_URL=url, **WORKER_ENV, GKD_DB_RETRY_ATTEMPTS="14")
    tail = lambda: log.read_text(errors="replace")[-5000:] if log.exists() else ""  # noqa: E731
    try:
        wait_for(lambda: log.exists() and " ready." in log.read_text(errors="replace"), 60, "worker A ready",
                 interval=0.2, tail=tail)
        with TestClient(create_app(settings), raise_server_exceptions=False) as own_queue:
            job_id = submit(own_queue, headers, teacher, dataset, **HYPER)["id"]
        wait_for(lambda: job_of(api, headers, job_id)["progress"].get("step", 0) >= 4, 120, "A to train",
                 tail=tail)
        assert worker_pid(stack.settings, job_id) == first.pid
        proxy.cut()
        cut_at = time.monotonic()
        taken = wait_for(lambda: (j := job_of(api, headers, job_id))["attempts"] == 2 and j, 60,
                         "a stack worker to claim the job", interval=0.2, tail=stack.tail)
        taken_after = time.monotonic() - cut_at
        second = worker_pid(stack.settings, job_id)
        assert second != first.pid and taken["status"] == "running"
        wait_for(lambda: job_of(api, headers, job_id)["progress"].get("step", 0) > taken["progress"].get("step", 0),
                 60, "B to train", tail=stack.tail)
        proxy.restore()
        outage = time.monotonic() - cut_at
        wait_for(lambda: "was superseded" in log.read_text(errors="replace"), 60, "A to be fenced off",
                 interval=0.2, tail=tail)
        assert first.poll() is None, "the fenced-off worker process goes on serving other jobs"

        done = wait_for(lambda: (j := job_of(api, headers, job_id))["status"] in ("succeeded", "failed") and j,
                        150, "the job to finish", interval=0.2, tail=stack.tail)
        assert done["status"] == "succeeded", (done["error"], stack.tail())
        assert done["attempts"] == 2 and worker_pid(stack.settings, job_id) == second

        events = all_events(api, headers, job_id)
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert [e["data"]["status"] for e in events if e["type"] == "status"] == ["queued", "running", "succeeded"]
        resumes = [i for i, e in enumerate(events) if e["type"] == "log" and "resumes the job" in e["message"]]
        assert len(resumes) == 1
        after = [e["data"]["step"] for e in events[resumes[0]:] if e["type"] == "metrics"
                 and not e["data"].get("eval")]
        assert after == sorted(set(after)), f"a write of the fenced-off worker landed after the claim: {after}"
        assert after[-1] == done["progress"]["total_steps"]

        wait_for(lambda: job_of(api, headers, reference)["status"] == "succeeded", 150, "the reference run",
                 tail=stack.tail)
        expected, got = final_tensors(api, headers, reference), final_tensors(api, headers, job_id)
        assert expected.keys() == got.keys()
        same = sum(bool((expected[k] == got[k]).all()) for k in expected)
        assert same == len(expected)
        report(f"fencing: A cut off at step >= 4; a stack worker claimed with token 2 {taken_after:.1f} s later; "
               f"outage {outage:.1f} s; A fenced off at its next write after the restore and stopped; "
               f"{len(events)} events seq 1..{len(events)}, metrics steps after the claim {after[0]}..{after[-1]} "
               f"once each; {same}/{len(expected)} tensors of the final model identical to an uninterrupted run")
    finally:
        stop(first)
        proxy.close()
