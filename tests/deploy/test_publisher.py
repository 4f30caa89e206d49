"""Checkpoints and training states go to the bucket in the background (worker.publisher): in order, the
newest state wins, the bytes uploaded are those submitted, failures are reported, a checkpoint is recorded
only once it is in the bucket, and a draining job waits for its newest state."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.store.storage import get_storage
from app.store.storage.local import Storage
from tests.deploy.test_storage import s3_settings
from tests.support.service import new_key, register_teacher, upload_dataset
from worker.publisher import BackgroundPublisher

RELATIVE = "jobs/j/work/state/training_state.pt"


def save_state(path: Path, data: bytes) -> None:
    """As the trainer saves it: a new file renamed over the old path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


class GatedBucket:
    """A second storage root standing in for the bucket, whose uploads wait until the test opens the gate."""

    def __init__(self, root: Path) -> None:
        self.storage = Storage(root)
        self.gate = threading.Event()
        self.started = threading.Event()
        self.uploaded: list[bytes] = []
        self.fail_next = False

    def publish_file(self, source: Path, relative: str) -> None:
        self.started.set()
        assert self.gate.wait(10)
        if self.fail_next:
            self.fail_next = False
            raise OSError("connection reset by the bucket")
        self.storage.publish_file(source, relative)
        self.uploaded.append(self.storage.local_path(relative).read_bytes())


@pytest.fixture
def gated(tmp_path: Path) -> GatedBucket:
    return GatedBucket(tmp_path / "bucket")


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".upload-" in p.name)


def test_the_upload_sends_the_state_as_it_was_submitted(tmp_path: Path, gated: GatedBucket) -> None:
    state = tmp_path / "worker" / RELATIVE
    save_state(state, b"state after epoch 1")
    uploads = BackgroundPublisher(gated.publish_file)
    try:
        uploads.submit_state(state, RELATIVE)
        assert gated.started.wait(10)
        save_state(state, b"state after epoch 2, written while the first one is going up")
        gated.gate.set()
        assert uploads.flush(timeout=10)
    finally:
        uploads.close()
    assert gated.uploaded == [b"state after epoch 1"]
    assert leftovers(state.parent) == []


def test_a_state_still_waiting_is_replaced_by_a_newer_one(tmp_path: Path, gated: GatedBucket) -> None:
    state = tmp_path / "worker" / RELATIVE
    uploads = BackgroundPublisher(gated.publish_file)
    try:
        for epoch in (1, 2, 3):
            save_state(state, f"epoch {epoch}".encode())
            uploads.submit_state(state, RELATIVE)
            assert gated.started.wait(10)  # epoch 1 is uploading; 2 waits, then 3 replaces it
        assert not uploads.flush(timeout=0.05)  # still going up
        gated.gate.set()
        assert uploads.flush(timeout=10)
    finally:
        uploads.close()
    assert gated.uploaded == [b"epoch 1", b"epoch 3"]
    assert gated.storage.local_path(RELATIVE).read_bytes() == b"epoch 3"
    assert leftovers(state.parent) == []


def test_a_failed_upload_is_reported_and_the_next_state_still_goes_up(tmp_path: Path,
                                                                      gated: GatedBucket) -> None:
    state = tmp_path / "worker" / RELATIVE
    save_state(state, b"epoch 1")
    gated.fail_next = True
    gated.gate.set()
    uploads = BackgroundPublisher(gated.publish_file)
    try:
        uploads.submit_state(state, RELATIVE)
        assert not uploads.flush(timeout=10)
        assert uploads.state_failures == 1 and gated.uploaded == []
        save_state(state, b"epoch 2")
        uploads.submit_state(state, RELATIVE)
        assert uploads.flush(timeout=10)
    finally:
        uploads.close()
    assert gated.uploaded == [b"epoch 2"] and uploads.state_failures == 1


def test_close_drops_the_waiting_state_and_ends_the_thread(tmp_path: Path, gated: GatedBucket) -> None:
    state = tmp_path / "worker" / RELATIVE
    before = threading.active_count()
    uploads = BackgroundPublisher(gated.publish_file)
    for epoch in (1, 2):
        save_state(state, f"epoch {epoch}".encode())
        uploads.submit_state(state, RELATIVE)
        assert gated.started.wait(10)
    gated.gate.set()
    uploads.close()  # the upload in progress ends; the waiting one is dropped
    assert gated.uploaded == [b"epoch 1"]
    assert threading.active_count() == before and leftovers(state.parent) == []
    with pytest.raises(RuntimeError, match="closed"):
        uploads.submit_state(state, RELATIVE)
    uploads.close()  # a second close is harmless


def test_checkpoints_run_in_order_and_a_newer_state_goes_to_the_back(tmp_path: Path, gated: GatedBucket) -> None:
    state, archive = tmp_path / "worker" / RELATIVE, tmp_path / "worker" / "jobs/j/checkpoints/best.tar.gz"
    order: list[str] = []
    uploads = BackgroundPublisher(gated.publish_file)
    try:
        save_state(archive, b"best at step 10")
        uploads.submit_checkpoint(archive, "jobs/j/checkpoints/best.tar.gz", then=lambda: order.append("best 10"))
        assert gated.started.wait(10)  # held at the gate: what follows queues up behind it
        save_state(state, b"state at step 10")
        uploads.submit_state(state, RELATIVE)
        save_state(archive, b"best at step 20")  # renamed over the archive still waiting to go up
        uploads.submit_checkpoint(archive, "jobs/j/checkpoints/best.tar.gz", then=lambda: order.append("best 20"))
        uploads.submit_checkpoint(None, "jobs/j/checkpoints/best.tar.gz", then=lambda: order.append("final 20"))
        save_state(state, b"state at step 20")
        uploads.submit_state(state, RELATIVE)  # replaces the step-10 state, behind the step-20 checkpoints
        gated.gate.set()
        assert uploads.flush(timeout=10)
    finally:
        uploads.close()
    assert gated.uploaded == [b"best at step 10", b"best at step 20", b"state at step 20"]
    assert order == ["best 10", "best 20", "final 20"]
    assert leftovers(state.parent) == [] and leftovers(archive.parent) == []


def test_a_failed_checkpoint_fails_the_flush_and_skips_the_checkpoints_after_it(tmp_path: Path,
                                                                               gated: GatedBucket) -> None:
    archive = tmp_path / "worker" / "jobs/j/checkpoints/best.tar.gz"
    save_state(archive, b"best")
    recorded: list[str] = []
    gated.fail_next = True
    gated.gate.set()
    uploads = BackgroundPublisher(gated.publish_file)
    try:
        uploads.submit_checkpoint(archive, "jobs/j/checkpoints/best.tar.gz", then=lambda: recorded.append("best"))
        uploads.submit_checkpoint(None, "jobs/j/checkpoints/best.tar.gz", then=lambda: recorded.append("final"))
        with pytest.raises(OSError, match="connection reset"):
            uploads.flush(timeout=10)
        assert recorded == []  # neither row points at an object that is not in the bucket
        assert uploads.flush(timeout=10)  # raised once
    finally:
        uploads.close()
    assert leftovers(archive.parent) == []


def test_close_finishes_the_checkpoints_but_drops_a_waiting_state(tmp_path: Path, gated: GatedBucket) -> None:
    state, archive = tmp_path / "worker" / RELATIVE, tmp_path / "worker" / "jobs/j/checkpoints/final.tar.gz"
    save_state(state, b"state")
    save_state(archive, b"final")
    recorded: list[str] = []
    uploads = BackgroundPublisher(gated.publish_file)
    uploads.submit_state(state, RELATIVE)
    assert gated.started.wait(10)
    save_state(state, b"newer state")
    uploads.submit_state(state, RELATIVE)
    uploads.submit_checkpoint(archive, "jobs/j/checkpoints/final.tar.gz", then=lambda: recorded.append("final"))
    gated.gate.set()
    uploads.close()
    assert gated.uploaded == [b"state", b"final"] and recorded == ["final"]
    assert leftovers(state.parent) == [] and leftovers(archive.parent) == []


def test_a_drained_job_waits_for_its_newest_state_in_the_bucket(
    tmp_path: Path, s3_server: dict[str, Any], bucket: str, sqlite_url: str, tiny_teacher: Path
) -> None:
    from app.store.job_config import work_dir
    from worker.runner import JobContext, make_callback

    settings = s3_settings(tmp_path / "api", s3_server, bucket, sqlite_url)
    headers = {"Authorization": f"Bearer {new_key(settings)}"}
    teacher = register_teacher(settings, headers, tiny_teacher)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        dataset = upload_dataset(client, headers)
        response = client.post("/v1/jobs", headers=headers, json={
            "teacher": teacher, "training_dataset": dataset["id"], "method": "kd", "student": {"num_layers": 1}})
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]

    worker_settings = s3_settings(tmp_path / "worker", s3_server, bucket, sqlite_url)
    relative = f"{work_dir(job_id)}/state/training_state.pt"
    state = worker_settings.storage / relative
    ctx = JobContext(worker_settings, job_id)
    assert ctx.claim("w1") is not None  # uploads are fenced: only the worker holding the job may write
    callback = make_callback(ctx)
    newest = os.urandom(6 * 1024 * 1024)  # above the test's 5 MiB multipart threshold
    for data in (b"epoch 1" * 1000, newest):
        save_state(state, data)
        callback.on_checkpoint(None, "state", state)  # returns at once: the upload runs beside training
    assert callback.publish_pending()
    callback.stop_publishing()
    stored = s3_server["client"].get_object(Bucket=bucket, Key=f"gkd/{relative}")["Body"].read()
    assert stored == newest
    assert get_storage(worker_settings).exists(relative) and leftovers(state.parent) == []


@pytest.fixture
def slow_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every upload to the (moto) bucket takes 0.3 s longer, as across a network: uploads queue up."""
    from app.store.storage.s3 import S3Storage

    upload = S3Storage.publish_file

    def slow_upload(self: S3Storage, source: Path, relative: str) -> None:
        time.sleep(0.3)
        upload(self, source, relative)

    monkeypatch.setattr(S3Storage, "publish_file", slow_upload)


def submit_job(tmp_path: Path, s3_server: dict[str, Any], bucket: str, sqlite_url: str, tiny_teacher: Path,
               epochs: int, rows: int) -> str:
    from tests.support.factories import sentiment_rows

    settings = s3_settings(tmp_path / "api", s3_server, bucket, sqlite_url)
    headers = {"Authorization": f"Bearer {new_key(settings)}"}
    teacher = register_teacher(settings, headers, tiny_teacher)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        dataset = upload_dataset(client, headers, sentiment_rows(rows))
        response = client.post("/v1/jobs", headers=headers, json={
            "teacher": teacher, "training_dataset": dataset["id"], "method": "kd", "student": {"num_layers": 1},
            "device": "cpu", "hyperparameters": {"epochs": epochs, "batch_size": 2, "max_length": 16}})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])


@pytest.mark.usefixtures("slow_bucket")
def test_a_job_with_a_bucket_records_each_checkpoint_once_it_is_uploaded(
    tmp_path: Path, s3_server: dict[str, Any], bucket: str, sqlite_url: str, tiny_teacher: Path
) -> None:
    """A real training run in this process with uploads in the background: it succeeds only after its
    checkpoints are in the bucket, each row's sha256 is that of the object, and every checkpoint event comes
    before the terminal status."""
    import hashlib

    from sqlalchemy import select

    from app.store.db import session_scope
    from app.store.orm import Checkpoint, Job, JobEvent
    from worker.runner import run_job

    job_id = submit_job(tmp_path, s3_server, bucket, sqlite_url, tiny_teacher, epochs=3, rows=60)
    worker_settings = s3_settings(tmp_path / "worker", s3_server, bucket, sqlite_url, state_every_steps=2)
    assert run_job(worker_settings, job_id) == "succeeded"
    with session_scope(sqlite_url) as session:
        checkpoints = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)).all()
        events = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)).all()
        job = session.get(Job, job_id)
        assert job is not None and job.status == "succeeded"
        assert {c.kind for c in checkpoints} == {"best", "final"}
        for checkpoint in checkpoints:
            stored = s3_server["client"].get_object(Bucket=bucket, Key=f"gkd/{checkpoint.path}")["Body"].read()
            assert hashlib.sha256(stored).hexdigest() == checkpoint.sha256 and len(stored) == checkpoint.size_bytes
        kinds = [e.type for e in events]
        assert kinds[-1] == "status" and events[-1].data["status"] == "succeeded"
        assert kinds.count("checkpoint") >= 2  # and none after the terminal status, the last event
    checkpoint_dir = worker_settings.storage / "jobs" / job_id / "checkpoints"
    assert leftovers(checkpoint_dir) == [] and not (worker_settings.storage / "jobs" / job_id / "work").exists()


@pytest.mark.usefixtures("slow_bucket")
def test_a_job_drained_with_a_bucket_hands_back_its_newest_state(
    tmp_path: Path, s3_server: dict[str, Any], bucket: str, sqlite_url: str, tiny_teacher: Path
) -> None:
    """A real training run in this process (tiny teacher, state saved every step), drained mid-job: the job goes
    back to the queue only after the state it stopped with is in the bucket, byte for byte (the state saved at
    the stop finds the previous one still going up)."""
    from sqlalchemy import select

    from app.store.db import session_scope
    from app.store.job_config import work_dir
    from app.store.orm import Job
    from worker.runner import DRAIN, run_job

    job_id = submit_job(tmp_path, s3_server, bucket, sqlite_url, tiny_teacher, epochs=20, rows=200)
    worker_settings = s3_settings(tmp_path / "worker", s3_server, bucket, sqlite_url, state_every_steps=1,
                                  cancel_check_seconds=0)

    def drain_after_a_few_steps() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not DRAIN.is_set():
            with session_scope(sqlite_url) as session:
                progress = session.scalar(select(Job.progress).where(Job.id == job_id)) or {}
            if progress.get("step", 0) >= 3:
                DRAIN.set()
            time.sleep(0.05)

    watcher = threading.Thread(target=drain_after_a_few_steps, daemon=True)
    watcher.start()
    try:
        assert run_job(worker_settings, job_id) == "requeued"
    finally:
        DRAIN.clear()
        watcher.join(timeout=5)
    with session_scope(sqlite_url) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "queued" and job.attempts == 0
        step = job.progress["step"]
    assert 3 <= step < job.progress["total_steps"]
    relative = f"{work_dir(job_id)}/state/training_state.pt"
    local = (worker_settings.storage / relative).read_bytes()
    stored = s3_server["client"].get_object(Bucket=bucket, Key=f"gkd/{relative}")["Body"].read()
    assert stored == local
    assert leftovers((worker_settings.storage / relative).parent) == []
