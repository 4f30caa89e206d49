"""Job estimates: `POST /v1/jobs?dry_run=true` validates like a create and stores nothing, workers record their
measured speed after a real run and the next estimate uses it, and a running job reports `estimated_finish_at`."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select

from app.store.db import session_scope
from app.store.estimates import CalibrationKey, record
from app.store.orm import Job, JobEvent, StepCalibration, utcnow
from app.store.settings import Settings
from tests.service.test_api_basics import assert_error
from tests.support.service import register_teacher, upload_dataset

TINY = {"epochs": 1, "batch_size": 8, "max_length": 16}


@pytest.fixture
def body(client: TestClient, auth: dict, settings: Settings, tiny_teacher: Path) -> dict:
    teacher = register_teacher(settings, auth, tiny_teacher)
    dataset = upload_dataset(client, auth)["id"]  # 24 rows
    return {"teacher": teacher, "training_dataset": dataset, "student": {"num_layers": 1},
            "hyperparameters": dict(TINY), "device": "cpu"}


def stored_counts(settings: Settings) -> tuple[int, int, int]:
    with session_scope(settings.database_url) as session:
        return (session.scalar(select(func.count()).select_from(Job)) or 0,
                session.scalar(select(func.count()).select_from(JobEvent)) or 0,
                session.scalar(select(func.count()).select_from(StepCalibration)) or 0)


def stored_files(settings: Settings) -> set[Path]:
    return {path for path in settings.storage.rglob("*") if path.is_file()}


def test_dry_run_answers_an_estimate_and_stores_nothing(client: TestClient, auth: dict, body: dict,
                                                         settings: Settings) -> None:
    body = {**body, "method": "kd"}
    with session_scope(settings.database_url) as session:  # the session's database is shared: other tests' kd runs
        session.execute(delete(StepCalibration).where(StepCalibration.method == "kd"))  # calibrate kd; not here
    rows_before, files_before = stored_counts(settings), stored_files(settings)
    response = client.post("/v1/jobs?dry_run=true", headers={**auth, "Idempotency-Key": "k1"}, json=body)
    assert response.status_code == 200, response.text
    estimate = response.json()
    assert estimate["object"] == "job.estimate"
    assert estimate["total_steps"] == 3 and estimate["steps_per_epoch"] == 3  # 24 rows in batches of 8, 1 epoch
    assert estimate["teacher_cache_exists"] is False
    assert set(estimate["estimated_seconds"]) == {"cpu"} and estimate["basis"] == {"cpu": "default"}
    assert estimate["estimated_seconds"]["cpu"] == pytest.approx(3 * estimate["seconds_per_step"]["cpu"], rel=1e-3)
    assert stored_counts(settings) == rows_before and stored_files(settings) == files_before
    assert client.get("/v1/jobs", headers=auth).json()["data"] == []
    # the Idempotency-Key of a dry run is not used up: the real create with it makes the job
    created = client.post("/v1/jobs", headers={**auth, "Idempotency-Key": "k1"}, json=body)
    assert created.status_code == 201 and "Idempotent-Replayed" not in created.headers


def test_auto_device_is_estimated_for_both_worker_kinds(client: TestClient, auth: dict, body: dict) -> None:
    estimate = client.post("/v1/jobs?dry_run=true", headers=auth, json={**body, "device": "auto"}).json()
    assert list(estimate["estimated_seconds"]) == ["cpu", "gpu"]  # the deployment's auto_device (cpu) first
    assert estimate["estimated_seconds"]["gpu"] < estimate["estimated_seconds"]["cpu"]


@pytest.mark.parametrize(
    "change",
    [
        {"teacher": "mdl_unknown"},
        {"training_dataset": "ds_unknown"},
        {"student": {"num_layers": 3}},
        {"hyperparameters": {"learning_rate": -1}},
        {"hyperparameters": {"max_length": 100000}},
        {"method": "gradient_kd_cls", "student": {"num_layers": 1, "hidden_size": 16}},
        {"surprise": True},
        {"validation_dataset": "ds_unknown"},
    ],
)
def test_dry_run_refuses_what_a_create_refuses(client: TestClient, auth: dict, body: dict, settings: Settings,
                                                change: dict) -> None:
    bad = {**body, **change}
    before = stored_counts(settings)
    created = client.post("/v1/jobs", headers=auth, json=bad)
    dry = client.post("/v1/jobs?dry_run=true", headers=auth, json=bad)
    assert 400 <= created.status_code < 500
    assert (dry.status_code, dry.json()) == (created.status_code, created.json())
    assert stored_counts(settings) == before


def test_dry_run_respects_the_active_job_quota(client: TestClient, auth: dict, body: dict,
                                               settings: Settings) -> None:
    limited = settings.model_copy(update={"quota_active_jobs": 1})
    with TestClient(__import__("app.main").main.create_app(limited), raise_server_exceptions=False) as api:
        assert api.post("/v1/jobs", headers=auth, json=body).status_code == 201
        created = api.post("/v1/jobs", headers=auth, json=body)
        dry = api.post("/v1/jobs?dry_run=true", headers=auth, json=body)
    assert created.status_code >= 400
    assert (dry.status_code, dry.json()) == (created.status_code, created.json())


def test_dry_run_body_errors_are_the_create_envelope(client: TestClient, auth: dict) -> None:
    error = assert_error(client.post("/v1/jobs?dry_run=true", headers=auth, content=b"{nope"), 422,
                         "invalid_request_error")
    assert error["message"]
    assert_error(client.post("/v1/jobs?dry_run=maybe", headers=auth, json={}), 422, "invalid_request_error")


def test_calibration_running_mean(settings: Settings) -> None:
    key = CalibrationKey.of("kd", 64, 2, 100, "cpu")
    assert key.length_bucket == 128
    with session_scope(settings.database_url) as session:
        record(session, key, 1.0)
        record(session, key, 3.0)
        record(session, CalibrationKey.of("kd", 64, 2, 300, "cpu"), 9.0)  # another bucket: a row of its own
    with session_scope(settings.database_url) as session:
        row = session.scalar(select(StepCalibration).where(*key.where()))
        assert row is not None and row.samples == 2 and row.seconds_per_row == pytest.approx(2.0)


@pytest.mark.slow
def test_a_real_run_records_its_speed_and_the_next_estimate_uses_it(client: TestClient, auth: dict, body: dict,
                                                                     settings: Settings) -> None:
    from worker.runner import run_job

    key = CalibrationKey.of("gradient_kd", 32, 1, 16, "cpu")  # the tiny teacher is 32 wide
    with session_scope(settings.database_url) as session:  # the session's database may hold an earlier run's
        earlier = session.scalar(select(StepCalibration.samples).where(*key.where())) or 0
    job = client.post("/v1/jobs", headers=auth, json=body).json()
    assert run_job(settings, job["id"]) == "succeeded"
    finished = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
    assert finished["status"] == "succeeded" and finished["estimated_finish_at"] is None
    with session_scope(settings.database_url) as session:
        row = session.scalar(select(StepCalibration).where(*key.where()))
        assert row is not None and row.samples == earlier + 1
        measured = row.seconds_per_row
    assert measured > 0
    estimate = client.post("/v1/jobs?dry_run=true", headers=auth, json=body).json()
    assert estimate["basis"] == {"cpu": "measured"}
    assert estimate["seconds_per_step"]["cpu"] == pytest.approx(measured * 8, rel=1e-3)
    assert estimate["estimated_seconds"]["cpu"] == pytest.approx(measured * 8 * 3, rel=1e-2)
    assert estimate["teacher_cache_exists"] is True  # the finished job built it for this teacher, data, length
    other_length = {**body, "hyperparameters": {**TINY, "max_length": 32}}
    assert client.post("/v1/jobs?dry_run=true", headers=auth, json=other_length).json()["teacher_cache_exists"] is False


def test_a_running_job_reports_its_estimated_finish(client: TestClient, auth: dict, body: dict,
                                                    settings: Settings) -> None:
    from gkd.training.callbacks import StepMetrics, TrainingProgress
    from worker.runner import JobContext, make_callback

    body = {**body, "method": "pkd"}
    job_id = client.post("/v1/jobs", headers=auth, json=body).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["estimated_finish_at"] is None  # queued
    ctx = JobContext(settings, job_id)
    assert ctx.claim("w1") is not None
    key = CalibrationKey.of("pkd", 32, 1, 16, "cpu")
    with session_scope(settings.database_url) as session:  # jobs like it took 0.5 s per row and step
        session.execute(delete(StepCalibration).where(*key.where()))
        record(session, key, 0.5)
    callback = make_callback(ctx)
    before = utcnow()
    callback.on_train_begin(TrainingProgress(step=0, total_steps=10, epoch=0, num_epochs=1, elapsed_seconds=0.0))
    calibrated = datetime.fromisoformat(client.get(f"/v1/jobs/{job_id}", headers=auth).json()["estimated_finish_at"])
    assert before + timedelta(seconds=39) <= calibrated <= utcnow() + timedelta(seconds=41)  # 10 steps x 8 x 0.5 s
    before = utcnow()  # its own first step took 2 s: 9 steps left at that rate
    callback.on_step(TrainingProgress(step=1, total_steps=10, epoch=0, num_epochs=1, elapsed_seconds=2.0),
                     StepMetrics(loss=1.0))
    own = datetime.fromisoformat(client.get(f"/v1/jobs/{job_id}", headers=auth).json()["estimated_finish_at"])
    assert before + timedelta(seconds=17) <= own <= utcnow() + timedelta(seconds=19)


def test_a_fenced_off_worker_records_no_calibration(client: TestClient, auth: dict, body: dict,
                                                    settings: Settings) -> None:
    from app.store.jobs import FencedOff
    from gkd.training.callbacks import TrainingProgress
    from tests.service.test_worker_claim import _taken_over
    from worker.runner import make_callback

    body = {**body, "method": "ce", "hyperparameters": {**TINY, "max_length": 64}}  # a key no other test records
    job_id = client.post("/v1/jobs", headers=auth, json=body).json()["id"]
    key = CalibrationKey.of("ce", 32, 1, 64, "cpu")
    first, second = _taken_over(settings, job_id)
    end = TrainingProgress(step=3, total_steps=3, epoch=1, num_epochs=1, elapsed_seconds=3.0)
    with pytest.raises(FencedOff):
        make_callback(first).on_train_end(end, False)
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(StepCalibration).where(*key.where())) is None
    make_callback(second).on_train_end(end, False)  # the holder's measurement lands: 3 s / 3 steps / 8 rows
    with session_scope(settings.database_url) as session:
        row = session.scalar(select(StepCalibration).where(*key.where()))
        assert row is not None and row.samples == 1 and row.seconds_per_row == pytest.approx(1 / 8)
