"""Admission control of POST /v1/jobs (issue 20 finding 7): `devices` against the queue's capacity and the estimated
memory of a training process against the worker's budget, each a 422 that says what fits, with nothing stored.
Both backends (the `settings` fixture)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.admission import job_estimate
from app.main import create_app
from app.schemas import JobCreate
from app.store.db import session_scope
from app.store.orm import TeacherModel
from app.store.settings import Settings
from gkd.training.memory_estimate import RUNTIME_BYTES
from tests.service.test_api_basics import assert_error
from tests.support.service import register_teacher, upload_dataset


@pytest.fixture
def setup(client: TestClient, auth: dict, settings: Settings, tiny_teacher: Path) -> dict:
    teacher = register_teacher(settings, auth, tiny_teacher)
    dataset = upload_dataset(client, auth)["id"]
    return {"teacher": teacher, "training_dataset": dataset, "student": {"num_layers": 1}}


def app_with(settings: Settings, **values: Any) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update=values)), raise_server_exceptions=False) as client:
        yield client


def job_count(client: TestClient, auth: dict) -> int:
    return len(client.get("/v1/jobs?limit=100", headers=auth).json()["data"])


def exceeds(response: Any, param: str, code: str) -> str:
    error = assert_error(response, 422, "invalid_request_error", param)
    assert error["code"] == code
    return str(error["message"])


def test_devices_past_the_queue_capacity_are_refused(client: TestClient, auth: dict, settings: Settings,
                                                     setup: dict) -> None:
    """`devices: 16` was accepted on a CPU worker; a CPU worker gives a job one process unless configured."""
    for body in ({**setup, "devices": 16}, {**setup, "device": "cpu", "devices": 2}, {**setup, "devices": 2}):
        message = exceeds(client.post("/v1/jobs", headers=auth, json=body), "devices", "exceeds_worker_capacity")
        assert "GKD_WORKER_DEVICES" in message and "devices <= 1" in message
    gpu = client.post("/v1/jobs", headers=auth, json={**setup, "device": "gpu", "devices": 2})
    assert gpu.status_code == 201, gpu.text
    message = exceeds(client.post("/v1/jobs", headers=auth, json={**setup, "device": "gpu", "devices": 9}),
                      "devices", "exceeds_worker_capacity")
    assert "GKD_GPU_WORKER_DEVICES" in message and "devices <= 8" in message
    assert job_count(client, auth) == 1  # only the job that fits
    for larger in app_with(settings, worker_devices=4):
        assert larger.post("/v1/jobs", headers=auth, json={**setup, "device": "cpu", "devices": 4}).status_code == 201


def test_a_student_too_big_for_the_worker_is_refused_before_anything_is_stored(client: TestClient, auth: dict,
                                                                               setup: dict) -> None:
    """The tester's `hidden_size: 8192`: about 2 x 0.8 G weights with their optimiser state, past 16 GiB."""
    body = {**setup, "student": {"num_layers": 2, "hidden_size": 8192}}
    message = exceeds(client.post("/v1/jobs", headers=auth, json=body), "student", "exceeds_worker_memory")
    assert "GKD_WORKER_MEMORY_BYTES" in message and "16.0 GiB" in message and "smaller student" in message
    assert job_count(client, auth) == 0
    narrower = {**setup, "student": {"num_layers": 2, "hidden_size": 1024}}
    assert client.post("/v1/jobs", headers=auth, json=narrower).status_code == 201


def test_the_largest_batch_named_fits_and_one_more_does_not(client: TestClient, auth: dict, settings: Settings,
                                                            setup: dict) -> None:
    body = {**setup, "hyperparameters": {"batch_size": 1, "max_length": 64}}
    with session_scope(settings.database_url) as session:
        teacher = session.get(TeacherModel, setup["teacher"])
        assert teacher is not None
        estimate = job_estimate(JobCreate.model_validate(body), teacher)
    budget = estimate.teacher_stage + 5 * estimate.per_example  # the cache build fits; training up to a few more
    largest = estimate.largest_batch(budget)
    assert largest >= 5
    for sized in app_with(settings, worker_memory_bytes=budget):
        too_big = {**body, "hyperparameters": {"batch_size": largest + 1, "max_length": 64}}
        message = exceeds(sized.post("/v1/jobs", headers=auth, json=too_big), "hyperparameters.batch_size",
                          "exceeds_worker_memory")
        assert f"The largest batch_size that fits is {largest} " in message
        assert f"at batch_size {largest + 1} and max_length 64" in message
        assert job_count(sized, auth) == 0
        fits = {**body, "hyperparameters": {"batch_size": largest, "max_length": 64}}
        assert sized.post("/v1/jobs", headers=auth, json=fits).status_code == 201


def test_a_teacher_too_big_for_the_worker_is_refused(client: TestClient, auth: dict, settings: Settings,
                                                     setup: dict) -> None:
    for tiny in app_with(settings, worker_memory_bytes=RUNTIME_BYTES):
        message = exceeds(tiny.post("/v1/jobs", headers=auth, json=setup), "teacher", "exceeds_worker_memory")
        assert "the teacher tiny alone needs" in message


def test_gpu_jobs_have_a_budget_of_their_own(client: TestClient, auth: dict, settings: Settings, setup: dict) -> None:
    for app in app_with(settings, gpu_worker_memory_bytes=RUNTIME_BYTES):
        message = exceeds(app.post("/v1/jobs", headers=auth, json={**setup, "device": "gpu"}), "teacher",
                          "exceeds_worker_memory")
        assert "GKD_GPU_WORKER_MEMORY_BYTES" in message and "gpu worker" in message
        assert app.post("/v1/jobs", headers=auth, json={**setup, "device": "cpu"}).status_code == 201
