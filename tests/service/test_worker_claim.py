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


# ------------------------------------------------------------------------------------------------- fencing


def _taken_over(settings: Settings, job_id: str) -> tuple[JobContext, JobContext]:
    """w1 claims, goes silent past stale_after_seconds, w2 claims: w1 holds token 1, w2 token 2."""
    first, second = JobContext(settings, job_id), JobContext(settings, job_id)
    assert first.claim("w1") is not None and first.token == 1
    set_job(settings, job_id, heartbeat_at=utcnow() - timedelta(seconds=settings.stale_after_seconds + 5))
    assert second.claim("w2") is not None and second.token == 2
    return first, second


def test_a_fenced_off_worker_writes_nothing(settings: Settings, job_id: str) -> None:
    from app.store.events import append_event
    from app.store.jobs import FencedOff

    first, second = _taken_over(settings, job_id)
    before, events_before = job_and_events(settings, job_id)
    with pytest.raises(FencedOff):
        first.fenced_write(lambda s: append_event(s, job_id, "log", "from the old worker"), "log")
    with pytest.raises(FencedOff):
        first.finish("succeeded", "job succeeded", metrics={"latest": {"loss": 1.0}})
    with pytest.raises(FencedOff):
        first.requeue("w1", 3)
    with pytest.raises(FencedOff):
        first.check_fence()
    first.heartbeat()  # logged, never raised: the heartbeat thread only marks the context
    assert first.fenced.is_set()
    after, events_after = job_and_events(settings, job_id)
    assert events_after == events_before
    assert (after.status, after.worker, after.attempts, after.heartbeat_at, after.metrics) == (
        "running", "w2", 2, before.heartbeat_at, before.metrics)
    # the holder's writes land
    second.fenced_write(lambda s: append_event(s, job_id, "log", "from the new worker"), "log")
    assert second.finish("succeeded", "job succeeded") == "succeeded"
    done, events = job_and_events(settings, job_id)
    assert done.status == "succeeded" and [e[0] for e in events] == list(range(1, len(events) + 1))
    with pytest.raises(FencedOff):  # a finished job fences its last holder too
        second.check_fence()


def test_the_worker_callback_stops_a_fenced_off_run(settings: Settings, job_id: str) -> None:
    from app.store.jobs import FencedOff
    from gkd.training.callbacks import StepMetrics, TrainingProgress
    from worker.runner import make_callback

    first, _ = _taken_over(settings, job_id)
    callback = make_callback(first)
    progress = TrainingProgress(step=2, total_steps=10, epoch=0, num_epochs=1, elapsed_seconds=1.0)
    _, events_before = job_and_events(settings, job_id)
    with pytest.raises(FencedOff):  # before the training state or an export is written
        callback.before_checkpoint(progress, "state")
    with pytest.raises(FencedOff):  # the next metrics write (step 1 always writes one)
        callback.on_step(TrainingProgress(step=1, total_steps=10, epoch=0, num_epochs=1, elapsed_seconds=1.0),
                         StepMetrics(loss=1.0))
    with pytest.raises(FencedOff):  # and the loop's next question
        callback.should_stop(progress)
    assert job_and_events(settings, job_id)[1] == events_before


def test_run_job_of_a_fenced_off_worker_leaves_the_scratch(settings: Settings, job_id: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The fenced worker returns 'fenced' and does not remove the work directory the new holder trains in."""
    from app.store.jobs import FencedOff
    from worker import runner

    work = settings.storage / "jobs" / job_id / "work"
    work.mkdir(parents=True)

    def taken_over(ctx: JobContext, worker: str) -> str:
        raise FencedOff(ctx.job_id, ctx.token)

    monkeypatch.setattr(runner, "_run_claimed", taken_over)
    assert runner.run_job(settings, job_id) == "fenced"
    assert work.is_dir()
