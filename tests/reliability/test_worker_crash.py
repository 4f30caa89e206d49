"""Promise 1: a worker SIGKILLed mid-training. The job is swept, redelivered and resumes from its last saved
training state (events show it), and its final weights equal those of an uninterrupted run with the same
seed, tensor for tensor. A job whose workers keep dying is `failed` after GKD_MAX_ATTEMPTS.

(tests/service/test_crash_resume.py proves resume-not-from-zero on both backends; this adds bit-equality
of the weights and the attempt limit, with real processes on PostgreSQL + Redis.)
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.reliability.conftest import Stack, report, worker_pid
from tests.support.servers import wait_for
from tests.support.service import all_events, final_tensors, job_of, new_key, register_teacher, submit, upload

pytestmark = [pytest.mark.slow, pytest.mark.services]


def test_killed_worker_resumes_to_identical_weights_then_attempt_limit(stack: Stack, api: TestClient,
                                                                       tiny_teacher: Path) -> None:
    headers = {"Authorization": f"Bearer {new_key(stack.settings)}"}
    teacher = register_teacher(stack.settings, headers, tiny_teacher)
    dataset = upload(api, headers, 48)
    stack.wait_workers_ready(2)
    hyper = {"epochs": 8, "seed": 1234}
    reference = submit(api, headers, teacher, dataset, **hyper)["id"]
    crashed = submit(api, headers, teacher, dataset, **hyper)["id"]

    # Kill the worker of `crashed` once it is past a saved training state (every 3 steps).
    job = wait_for(lambda: (j := job_of(api, headers, crashed))["progress"].get("step", 0) >= 8 and j,
                   120, "the job to pass step 8", tail=stack.tail)
    assert job["status"] == "running"
    step_at_kill = job["progress"]["step"]
    stack.kill(worker_pid(stack.settings, job["id"]))
    killed_at = time.monotonic()
    stack.start_worker()

    done = wait_for(lambda: (j := job_of(api, headers, crashed))["status"] in ("succeeded", "failed") and j,
                    150, "the resumed job to finish", interval=0.2, tail=stack.tail)
    recovery = time.monotonic() - killed_at
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2
    wait_for(lambda: job_of(api, headers, reference)["status"] == "succeeded", 120, "the reference job",
             interval=0.2, tail=stack.tail)

    events = all_events(api, headers, crashed)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    resumes = [e for e in events if e["type"] == "log" and "resumes the job (attempt 2)" in e["message"]]
    trained = [e for e in events if e["type"] == "log" and "resumed from step" in e["message"]]
    assert resumes and trained, [e["message"] for e in events]
    resumed_from = trained[0]["data"]["resumed_from_step"]
    assert 0 < resumed_from < done["progress"]["total_steps"] and resumed_from % 3 == 0

    ours, theirs = final_tensors(api, headers, crashed), final_tensors(api, headers, reference)
    assert ours.keys() == theirs.keys() and ours
    import torch

    differing = [name for name in ours if not torch.equal(ours[name], theirs[name])]
    assert differing == [], f"{len(differing)} of {len(ours)} tensors differ after resume"
    report(f"promise 1: killed at step {step_at_kill}, resumed from step {resumed_from} (attempt 2), "
           f"{len(ours)}/{len(ours)} final tensors bit-identical to the uninterrupted run, "
           f"kill->succeeded {recovery:.1f}s")

    # Attempt limit (GKD_MAX_ATTEMPTS=2 in this stack): kill the job's worker on attempts 1 and 2.
    doomed = submit(api, headers, teacher, dataset, epochs=40)["id"]
    for attempt in (1, 2):
        job = wait_for(lambda a=attempt: (j := job_of(api, headers, doomed))["attempts"] == a
                       and j["status"] == "running" and j["progress"].get("step", 0) >= 2 and j,
                       120, f"attempt {attempt} to train", tail=stack.tail)
        stack.kill(worker_pid(stack.settings, job["id"]))
        stack.start_worker()
    failed = wait_for(lambda: (j := job_of(api, headers, doomed))["status"] != "running" and j, 60,
                      "the attempt limit", interval=0.2, tail=stack.tail)
    assert failed["status"] == "failed" and failed["attempts"] == 2
    assert "gave up after 2 attempts" in failed["error"]
    statuses = [e["data"]["status"] for e in all_events(api, headers, doomed) if e["type"] == "status"]
    assert statuses == ["queued", "running", "failed"]
    report("promise 1: worker killed on attempts 1 and 2 -> job failed: " + failed["error"])
