"""Fixtures of the dashboard tests: a job trained in-process for the saliency API tests, and a real service
(uvicorn + Celery worker, like tests/client) with headless Chromium for the end-to-end test."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.store.db import upgrade
from app.store.settings import Settings
from tests.support.factories import csv_bytes, sentiment_rows
from tests.support.service import new_key, register_teacher

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "dashboard"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TRAINING = {"epochs": 1, "batch_size": 8, "max_length": 16}


@pytest.fixture(scope="module")
def api_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("dash-api")
    settings = Settings(home=home, database_url=f"sqlite:///{home / 'gkd.db'}", broker_url="memory://",
                        migrate_on_start=False, task_queue=f"dash-{secrets.token_hex(4)}",
                        worker_device="cpu", worker_num_threads=1, metrics_every_steps=1)
    settings.ensure_dirs()
    upgrade(settings.database_url)
    return settings


@pytest.fixture(scope="module")
def api_client(api_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings), raise_server_exceptions=False) as client:
        yield client


class TrainedJob:
    def __init__(self, key: str, job: dict[str, Any], checkpoints: list[dict[str, Any]]) -> None:
        self.key, self.job, self.checkpoints = key, job, checkpoints
        self.headers = {"Authorization": f"Bearer {key}"}


def submit_job(client: TestClient, settings: Settings, key: str, teacher_dir: Path,
               dev: bool = False) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    teacher = register_teacher(settings, key, teacher_dir)
    train = client.post("/v1/datasets", headers=headers,
                        files={"file": ("train.csv", csv_bytes(sentiment_rows(48)), "text/csv")})
    assert train.status_code == 201, train.text
    body: dict[str, Any] = {"teacher": teacher, "training_dataset": train.json()["id"], "method": "gradient_kd",
                            "student": {"num_layers": 1}, "hyperparameters": TRAINING}
    if dev:
        dev_ds = client.post("/v1/datasets", headers=headers,
                             files={"file": ("dev.csv", csv_bytes(sentiment_rows(12, seed=3)), "text/csv")})
        assert dev_ds.status_code == 201, dev_ds.text
        body["validation_dataset"] = dev_ds.json()["id"]
    response = client.post("/v1/jobs", headers=headers, json=body)
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="module")
def trained_job(api_client: TestClient, api_settings: Settings, tiny_teacher: Path) -> TrainedJob:
    """A tiny gradient_kd job run to success in this process (no broker, no worker process)."""
    from worker.runner import run_job

    key = new_key(api_settings)
    job = submit_job(api_client, api_settings, key, tiny_teacher)
    assert run_job(api_settings, job["id"]) == "succeeded"
    headers = {"Authorization": f"Bearer {key}"}
    checkpoints = api_client.get(f"/v1/jobs/{job['id']}/checkpoints", headers=headers).json()["data"]
    assert checkpoints
    return TrainedJob(key, job, checkpoints)
