"""`hyperparameters.beta: "auto"` in the service: the job body takes it (and refuses other words with the error
envelope), and a job that runs it gets the choice as a `log` event and in its metrics, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select

from app.store.db import session_scope
from app.store.orm import JobEvent
from app.store.settings import Settings
from tests.support.factories import sentiment_rows
from tests.support.service import register_teacher, upload_dataset


def body(teacher: str, dataset: str, **hp: object) -> dict:
    return {"teacher": teacher, "training_dataset": dataset, "method": "gradient_kd", "student": {"num_layers": 1},
            "hyperparameters": {"epochs": 1, "batch_size": 8, "max_length": 16, **hp}}


def test_the_job_body_takes_a_number_or_auto(client: TestClient, auth: dict, settings: Settings,
                                             tiny_teacher: Path) -> None:
    teacher = register_teacher(settings, auth, tiny_teacher)
    dataset = upload_dataset(client, auth)["id"]
    auto = client.post("/v1/jobs", headers=auth, json=body(teacher, dataset, beta="auto"))
    assert auto.status_code == 201, auto.text
    assert auto.json()["hyperparameters"]["beta"] == "auto"
    assert client.get("/v1/jobs", headers=auth).json()["data"][0]["hyperparameters"]["beta"] == "auto"
    numeric = client.post("/v1/jobs", headers=auth, json=body(teacher, dataset, beta=0.5))
    assert numeric.status_code == 201 and numeric.json()["hyperparameters"]["beta"] == 0.5
    for bad in ("fast", -1, [1]):
        refused = client.post("/v1/jobs", headers=auth, json=body(teacher, dataset, beta=bad))
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == "hyperparameters.beta"
        assert '"auto"' in error["message"]
    schema = client.get("/openapi.json").json()["components"]["schemas"]["Hyperparameters"]["properties"]["beta"]
    assert {"type": "string", "const": "auto"} in schema["anyOf"]


def test_a_job_with_auto_records_the_choice_in_an_event_and_its_metrics(client: TestClient, auth: dict,
                                                                       settings: Settings, tiny_teacher: Path) -> None:
    from worker.runner import run_job

    teacher = register_teacher(settings, auth, tiny_teacher)
    dataset = upload_dataset(client, auth, sentiment_rows(40))["id"]
    # the term starts on a fixed schedule from the second step, so this short job probes
    hp = {"beta": "auto", "accuracy_guard": False, "gradient_start_ratio": 0.0}
    job = client.post("/v1/jobs", headers=auth, json=body(teacher, dataset, **hp)).json()
    assert run_job(settings, job["id"]) == "succeeded"
    with session_scope(settings.database_url) as session:
        logs = session.execute(select(JobEvent.message, JobEvent.data).where(JobEvent.job_id == job["id"])
                               .where(JobEvent.type == "log").order_by(JobEvent.seq)).all()
    chosen = [(message, data) for message, data in logs if data and "beta_auto" in data]
    assert len(chosen) == 1
    message, data = chosen[0]
    choice = data["beta_auto"]
    assert choice["reason"] == "probe" and len(choice["candidates"]) == 3
    assert choice["chosen"] in [c["beta"] for c in choice["candidates"]]
    assert message.startswith("beta auto chose") and data["step"] == choice["step"]
    finished = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
    assert finished["metrics"]["beta_auto"] == choice
