"""Pause and resume with a real API and a real Celery worker (one, concurrency 1): the paused job's worker saves
the training state at the next step and lets go, runs another job meanwhile, and the resumed job continues from
exactly that step to final weights equal, tensor for tensor, to an uninterrupted run with the same seed. A cancel
that comes while the worker is pausing wins: the job ends cancelled, its scratch removed."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from app.store.db import upgrade
from app.store.job_config import work_dir
from app.store.settings import Settings
from tests.support.broker import forget_redis_queue
from tests.support.servers import start_worker, stop, wait_for
from tests.support.service import (
    REDIS_URL,
    all_events,
    final_tensors,
    job_of,
    new_key,
    reachable,
    register_teacher,
    submit,
    upload,
)

pytestmark = [pytest.mark.slow, pytest.mark.services]

SEEDED = {"epochs": 6, "seed": 1234}  # 48 rows, batches of 8: 6 steps an epoch, 36 in all


@pytest.mark.parametrize("backend", ["postgresql+redis", "sqlite+embedded"])
def test_paused_job_frees_the_worker_and_resumes_bit_exactly(tmp_path: Path, tiny_teacher: Path, backend: str,
                                                             request: pytest.FixtureRequest) -> None:
    urls: dict[str, str] = {}
    if backend == "postgresql+redis":
        if not reachable(6379):
            pytest.skip("Redis is not listening on 127.0.0.1:6379")
        urls = {"database_url": request.getfixturevalue("postgresql_url"), "broker_url": REDIS_URL}
    settings = Settings(home=tmp_path / "home", task_queue=f"pause-{secrets.token_hex(4)}", sse_poll_seconds=0.2,
                        broker_polling_seconds=0.2, **urls)
    upgrade(settings.database_url)
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log)

    def tail() -> str:
        return log.read_text(errors="replace")[-3000:]

    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as api:
            headers = {"Authorization": f"Bearer {new_key(settings)}"}
            teacher = register_teacher(settings, headers, tiny_teacher)
            dataset = upload(api, headers, 48)
            paused_id = submit(api, headers, teacher, dataset, **SEEDED)["id"]

            wait_for(lambda: job_of(api, headers, paused_id)["progress"].get("step", 0) >= 8, 120,
                     "the job to pass step 8", tail=tail)
            asked = api.post(f"/v1/jobs/{paused_id}/pause", headers=headers)
            assert asked.status_code == 200 and asked.json()["status"] == "pausing", asked.text
            other_id = submit(api, headers, teacher, dataset, epochs=1)["id"]  # queued behind the paused job

            paused = wait_for(lambda: (j := job_of(api, headers, paused_id))["status"] == "paused" and j, 60,
                              "the job to be paused", tail=tail)
            assert paused["attempts"] == 0  # pausing is no failure: the attempt is not counted
            stopped_at = paused["progress"]["step"]
            assert 8 <= stopped_at < paused["progress"]["total_steps"]

            # The freed worker takes the job queued behind it while this one stays paused.
            other = wait_for(lambda: (j := job_of(api, headers, other_id))["status"] in ("succeeded", "failed") and j,
                             120, "the other job to finish", interval=0.2, tail=tail)
            assert other["status"] == "succeeded", other["error"]
            assert job_of(api, headers, paused_id)["status"] == "paused"

            resumed = api.post(f"/v1/jobs/{paused_id}/resume", headers=headers)
            assert resumed.status_code == 200 and resumed.json()["status"] == "queued", resumed.text
            reference_id = submit(api, headers, teacher, dataset, **SEEDED)["id"]  # the uninterrupted run
            for job_id in (paused_id, reference_id):
                done = wait_for(lambda j=job_id: (job := job_of(api, headers, j))["status"]  # type: ignore[misc]
                                in ("succeeded", "failed") and job, 180, f"job {job_id} to finish", interval=0.2,
                                tail=tail)
                assert done["status"] == "succeeded", done["error"]
            assert job_of(api, headers, paused_id)["attempts"] == 1

            events = all_events(api, headers, paused_id)
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
            status_seqs = [(e["seq"], e["data"]["status"]) for e in events if e["type"] == "status"]
            assert [s for _, s in status_seqs] == ["queued", "running", "pausing", "paused", "queued", "running",
                                                   "succeeded"]
            pausing_seq, paused_seq = status_seqs[2][0], status_seqs[3][0]
            assert not [e for e in events if e["type"] == "metrics" and pausing_seq < e["seq"] < paused_seq]
            assert f"paused at step {stopped_at}" in events[paused_seq - 1]["message"]
            restarts = [e for e in events if e["type"] == "log" and "resumed from step" in e["message"]]
            assert [e["data"]["resumed_from_step"] for e in restarts] == [stopped_at]  # the step it paused at

            ours, theirs = final_tensors(api, headers, paused_id), final_tensors(api, headers, reference_id)
            assert ours.keys() == theirs.keys() and ours
            differing = [name for name in ours if not torch.equal(ours[name], theirs[name])]
            assert differing == [], f"{len(differing)} of {len(ours)} tensors differ after pause and resume"
    finally:
        stop(worker)
        if settings.broker_url.startswith("redis"):
            forget_redis_queue(REDIS_URL, settings.task_queue)


def test_cancel_while_pausing_ends_cancelled(tmp_path: Path, tiny_teacher: Path) -> None:
    settings = Settings(home=tmp_path / "home", task_queue=f"pause-{secrets.token_hex(4)}", sse_poll_seconds=0.2,
                        broker_polling_seconds=0.2)
    upgrade(settings.database_url)
    log = tmp_path / "worker.log"
    # The worker looks at the job's status only when it writes progress (every 5 steps) or every 60 s, so the
    # cancel lands while the job is still `pausing`.
    worker = start_worker(settings, log, GKD_CANCEL_CHECK_SECONDS="60", GKD_METRICS_EVERY_STEPS="5")
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as api:
            headers = {"Authorization": f"Bearer {new_key(settings)}"}
            teacher = register_teacher(settings, headers, tiny_teacher)
            job_id = submit(api, headers, teacher, upload(api, headers, 48), epochs=100)["id"]
            wait_for(lambda: job_of(api, headers, job_id)["progress"].get("step", 0) >= 2, 120,
                     "the job to train", tail=lambda: log.read_text(errors="replace")[-3000:])
            assert api.post(f"/v1/jobs/{job_id}/pause", headers=headers).json()["status"] == "pausing"
            assert api.post(f"/v1/jobs/{job_id}/cancel", headers=headers).json()["status"] == "cancelling"
            done = wait_for(lambda: (j := job_of(api, headers, job_id))["status"] in ("cancelled", "paused") and j,
                            60, "the worker to stop", interval=0.1)
            assert done["status"] == "cancelled"
            statuses = [e["data"]["status"] for e in all_events(api, headers, job_id) if e["type"] == "status"]
            assert statuses == ["queued", "running", "pausing", "cancelling", "cancelled"]
            wait_for(lambda: not (settings.storage / work_dir(job_id)).exists(), 30, "the scratch to go")
    finally:
        stop(worker)
