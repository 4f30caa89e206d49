"""The worker's atomic claim: first delivery, duplicate delivery, redelivery after a lost worker, the
attempt limit, and a cancel that arrived while no worker held the job."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from app.store.db import session_scope
from app.store.orm import Job, JobEvent, utcnow
from app.store.settings import Settings
from tests.support.service import register_teacher, upload_dataset
from worker.runner import JobContext


@pytest.fixture
def job_id(client: TestClient, auth: dict, settings: Settings, tiny_teacher: Path) -> str:
    teacher = register_teacher(settings, auth, tiny_teacher)
    dataset = upload_dataset(client, auth)["id"]
    body = {"teacher": teacher, "training_dataset": dataset, "student": {"num_layers": 1}}
    return client.post("/v1/jobs", headers=auth, json=body).json()["id"]


def set_job(settings: Settings, job_id: str, **values: object) -> None:
    with session_scope(settings.database_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def job_and_events(settings: Settings, job_id: str) -> tuple[Job, list[tuple[int, str, dict]]]:
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        events = session.execute(
            select(JobEvent.seq, JobEvent.type, JobEvent.data).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)
        ).all()
        return job, [tuple(e) for e in events]


def test_claim_then_duplicate_is_skipped(settings: Settings, job_id: str) -> None:
    ctx = JobContext(settings, job_id)
    claim = ctx.claim("w1")
    assert claim is not None and claim.attempt == 1 and not claim.resumed
    assert ctx.claim("w2") is None  # fresh heartbeat: another worker holds it
    job, events = job_and_events(settings, job_id)
    assert job.status == "running" and job.worker == "w1" and job.attempts == 1 and job.started_at
    assert job.versions["torch"]
    assert [e[2].get("status") for e in events] == ["queued", "running"]


def test_redelivery_after_lost_worker_resumes(settings: Settings, job_id: str) -> None:
    ctx = JobContext(settings, job_id)
    assert ctx.claim("w1") is not None
    set_job(settings, job_id, heartbeat_at=utcnow() - timedelta(seconds=settings.stale_after_seconds + 5))
    claim = ctx.claim("w2")
    assert claim is not None and claim.attempt == 2 and claim.resumed
    job, events = job_and_events(settings, job_id)
    assert job.worker == "w2" and job.status == "running"
    assert events[-1][1] == "log" and [e[0] for e in events] == [1, 2, 3]


def test_attempt_limit_fails_the_job(settings: Settings, job_id: str) -> None:
    stale = utcnow() - timedelta(seconds=settings.stale_after_seconds + 5)
    set_job(settings, job_id, status="running", attempts=settings.max_attempts, heartbeat_at=stale)
    assert JobContext(settings, job_id).claim("w9") is None
    job, events = job_and_events(settings, job_id)
    assert job.status == "failed" and "gave up" in job.error and job.finished_at
    assert events[-1][2] == {"status": "failed"}


def test_job_failed_by_the_attempt_limit_loses_its_scratch(settings: Settings, job_id: str) -> None:
    from worker.runner import run_job

    stale = utcnow() - timedelta(seconds=settings.stale_after_seconds + 5)
    set_job(settings, job_id, status="running", attempts=settings.max_attempts, heartbeat_at=stale)
    work = settings.storage / "jobs" / job_id / "work" / "state"
    work.mkdir(parents=True)
    (work / "training_state.pt").write_bytes(b"left by the lost workers")
    assert run_job(settings, job_id) == "skipped"
    job, _ = job_and_events(settings, job_id)
    assert job.status == "failed" and "gave up" in job.error
    assert not work.parent.exists()


def test_duplicate_delivery_keeps_the_running_job_scratch(settings: Settings, job_id: str) -> None:
    from worker.runner import run_job

    assert JobContext(settings, job_id).claim("w1") is not None  # another worker holds it, heartbeat fresh
    work = settings.storage / "jobs" / job_id / "work"
    work.mkdir(parents=True)
    assert run_job(settings, job_id) == "skipped"
    assert work.is_dir()


def test_cancel_requested_while_worker_was_lost(settings: Settings, job_id: str) -> None:
    stale = utcnow() - timedelta(seconds=settings.stale_after_seconds + 5)
    set_job(settings, job_id, status="cancelling", attempts=1, heartbeat_at=stale)
    assert JobContext(settings, job_id).claim("w2") is None
    job, events = job_and_events(settings, job_id)
    assert job.status == "cancelled" and events[-1][2] == {"status": "cancelled"}


def test_cancelled_queued_job_is_never_claimed(client: TestClient, auth: dict, settings: Settings,
                                               job_id: str) -> None:
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth).json()["status"] == "cancelled"
    assert JobContext(settings, job_id).claim("w1") is None
    job, _ = job_and_events(settings, job_id)
    assert job.status == "cancelled" and job.attempts == 0
