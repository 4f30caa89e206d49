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
from app.store.db import session_scope, upgrade
from app.store.keys import create_key
from app.store.settings import Settings

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "dashboard"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TRAINING = {"epochs": 1, "batch_size": 8, "max_length": 16}


def new_key(settings: Settings) -> str:
    with session_scope(settings.database_url) as session:
        plain, _ = create_key(session, f"dash-{secrets.token_hex(6)}")
    return plain


def register_teacher(settings: Settings, key: str, path: Path, name: str = "tiny") -> str:
    from app.registry import import_directory
    from app.store.keys import tenant_for_key

    with session_scope(settings.database_url) as session:
        tenant = tenant_for_key(session, key)
        assert tenant is not None
        return import_directory(session, path, name, tenant_id=tenant.id).id


def sentiment_csv(n: int = 48, seed: int = 0) -> bytes:
    import csv
    import io

    from tests.factories import sentiment_rows

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["text", "label"])
    writer.writeheader()
    writer.writerows(sentiment_rows(n, seed=seed))
    return buffer.getvalue().encode()


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.factories import make_tiny_teacher

    return make_tiny_teacher(tmp_path_factory.mktemp("dash-teacher") / "tiny")


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
    train = client.post("/v1/datasets", headers=headers, files={"file": ("train.csv", sentiment_csv(), "text/csv")})
    assert train.status_code == 201, train.text
    body: dict[str, Any] = {"teacher": teacher, "training_dataset": train.json()["id"], "method": "gradient_kd",
                            "student": {"num_layers": 1}, "hyperparameters": TRAINING}
    if dev:
        dev_ds = client.post("/v1/datasets", headers=headers,
                             files={"file": ("dev.csv", sentiment_csv(12, seed=3), "text/csv")})
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
