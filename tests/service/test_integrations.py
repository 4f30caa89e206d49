"""Job `integrations`: a tenant picks the MLflow experiment, the operator's tracking server is the only one a
worker logs to, and a real (in-process) worker run lands in it with the job's id and checkpoint URIs."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.store.settings import Settings
from tests.service.test_api_basics import assert_error
from tests.support.service import register_teacher, upload_dataset

MLFLOW = [{"type": "mlflow", "experiment": "tenant-exp", "run_name": "r1"}]


@pytest.fixture
def body(client: TestClient, auth: dict, settings: Settings, tiny_teacher: Path) -> dict:
    teacher = register_teacher(settings, auth, tiny_teacher)
    dataset = upload_dataset(client, auth)["id"]
    return {"teacher": teacher, "training_dataset": dataset, "student": {"num_layers": 1},
            "hyperparameters": {"epochs": 1, "batch_size": 8, "max_length": 16}}


@pytest.fixture
def tracked(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(update={"mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})


def test_without_an_operator_tracking_server_integrations_are_refused(client: TestClient, auth: dict,
                                                                       body: dict) -> None:
    for dry_run in ("false", "true"):
        error = assert_error(client.post(f"/v1/jobs?dry_run={dry_run}", headers=auth,
                                         json={**body, "integrations": MLFLOW}), 422, "invalid_request_error")
        assert error["param"] == "integrations.0" and error["code"] == "integration_unavailable"
    assert client.get("/v1/jobs", headers=auth).json()["data"] == []


@pytest.mark.parametrize("change", [
    {"tracking_uri": "file:///etc"},
    {"tracking_uri": "http://169.254.169.254/"},
    {"experiment": ""},
    {"type": "wandb"},
    {"artifact_location": "/tmp/x"},
])
def test_a_tenant_cannot_choose_where_the_worker_writes(tracked: Settings, auth: dict, body: dict,
                                                        change: dict) -> None:
    with TestClient(create_app(tracked), raise_server_exceptions=False) as api:
        response = api.post("/v1/jobs", headers=auth, json={**body, "integrations": [{**MLFLOW[0], **change}]})
        error = assert_error(response, 422, "invalid_request_error")
        assert error["param"].startswith("integrations.0")
        assert api.get("/v1/jobs", headers=auth).json()["data"] == []


@pytest.mark.slow
def test_a_job_logs_to_the_operators_mlflow(tracked: Settings, auth: dict, body: dict) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from worker.runner import run_job

    with TestClient(create_app(tracked), raise_server_exceptions=False) as api:
        same_uri = [{**MLFLOW[0], "tracking_uri": tracked.mlflow_tracking_uri}]  # naming the operator's is fine
        job = api.post("/v1/jobs", headers=auth, json={**body, "integrations": same_uri}).json()
        assert job["integrations"] == [{"type": "mlflow", "experiment": "tenant-exp", "run_name": "r1"}]
        assert run_job(tracked, job["id"]) == "succeeded"
    client = MlflowClient(tracking_uri=tracked.mlflow_tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("tenant-exp").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "r1"
    assert run.data.tags["gkd.job_id"] == job["id"]
    assert run.data.tags["gkd.final_artifact_uri"] == f"gkd://jobs/{job['id']}/checkpoints/final"
    assert run.data.params["student.num_layers"] == "1"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]


def test_a_worker_without_the_tracking_server_fails_the_job_clearly(tracked: Settings, settings: Settings,
                                                                     auth: dict, body: dict) -> None:
    from worker.runner import run_job

    with TestClient(create_app(tracked), raise_server_exceptions=False) as api:
        job = api.post("/v1/jobs", headers=auth, json={**body, "integrations": MLFLOW}).json()
        assert run_job(settings, job["id"]) == "failed"  # this worker's settings lack GKD_MLFLOW_TRACKING_URI
        failed = api.get(f"/v1/jobs/{job['id']}", headers=auth).json()
    assert "GKD_MLFLOW_TRACKING_URI" in failed["error"]
