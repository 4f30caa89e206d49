"""DELETE /v1/models/{id} (issue 20, finding 3) and the create-while-delete race of a job's dataset or model on
both backends (finding 8): the model goes softly, its files with it; a job that uses it makes it a 409."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.registry import import_directory
from app.store.db import session_scope
from app.store.orm import TeacherModel, Tenant
from app.store.settings import Settings
from tests.service.test_api_basics import assert_error
from tests.service.test_models import tar_of
from tests.support.service import new_key, register_teacher, submit, tenant_id_of, upload_dataset

TRIES = 15


def upload_model(client: TestClient, headers: dict, teacher_dir: Path, name: str = "up") -> dict:
    response = client.post("/v1/models", headers=headers, files={"file": ("m.tar.gz", tar_of(teacher_dir))},
                           data={"name": name})
    assert response.status_code == 201, response.text
    return dict(response.json())


def stored_model_files(settings: Settings, model_id: str) -> list[Path]:
    return [p for p in (settings.storage / "models").rglob("*") if model_id in p.parts and p.is_file()]


def test_delete_model_409_while_used_then_204_and_gone(client: TestClient, auth: dict, settings: Settings,
                                                       tiny_teacher: Path) -> None:
    model = upload_model(client, auth, tiny_teacher)
    assert stored_model_files(settings, model["id"])
    dataset = upload_dataset(client, auth)["id"]
    job = submit(client, auth, model["id"], dataset)  # queued: no worker in these tests

    error = assert_error(client.delete(f"/v1/models/{model['id']}", headers=auth), 409, "conflict_error")
    assert error["code"] == "resource_in_use" and job["id"] in error["message"]
    assert client.get(f"/v1/models/{model['id']}", headers=auth).status_code == 200

    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth).json()["status"] == "cancelled"
    deleted = client.delete(f"/v1/models/{model['id']}", headers=auth)
    assert deleted.status_code == 204 and deleted.content == b""

    assert_error(client.get(f"/v1/models/{model['id']}", headers=auth), 404, "not_found_error")
    assert model["id"] not in {m["id"] for m in client.get("/v1/models?limit=100", headers=auth).json()["data"]}
    assert not stored_model_files(settings, model["id"])
    finished = client.get(f"/v1/jobs/{job['id']}", headers=auth)  # the finished job still serves
    assert finished.status_code == 200 and finished.json()["teacher"] == model["id"]
    for teacher in (model["id"], "up"):  # by id and by name: a new job cannot use it
        response = client.post("/v1/jobs", headers=auth, json={
            "teacher": teacher, "training_dataset": dataset, "student": {"num_layers": 1}})
        assert_error(response, 404, "not_found_error", "teacher")
    assert_error(client.delete(f"/v1/models/{model['id']}", headers=auth), 404, "not_found_error")


def test_model_used_as_the_students_starting_encoder_is_in_use(client: TestClient, auth: dict, settings: Settings,
                                                                tiny_teacher: Path) -> None:
    teacher = register_teacher(settings, auth, tiny_teacher, name="teacher")
    base = register_teacher(settings, auth, tiny_teacher, name="base")
    dataset = upload_dataset(client, auth)["id"]
    response = client.post("/v1/jobs", headers=auth, json={
        "teacher": teacher, "training_dataset": dataset,
        "student": {"num_layers": 1, "init": {"model": base}}, "hyperparameters": {"max_length": 16}})
    assert response.status_code == 201, response.text
    error = assert_error(client.delete(f"/v1/models/{base}", headers=auth), 409, "conflict_error")
    assert error["code"] == "resource_in_use"
    other = register_teacher(settings, auth, tiny_teacher, name="unused")
    assert client.delete(f"/v1/models/{other}", headers=auth).status_code == 204


def test_another_tenants_model_and_a_global_one_are_404(client: TestClient, auth: dict, other_auth: dict,
                                                        settings: Settings, tiny_teacher: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    mine = register_teacher(settings, auth, tiny_teacher, name="mine")
    with session_scope(settings.database_url) as session:
        shared = import_directory(session, tiny_teacher, f"global-{mine}", source="builtin").id
    assert_error(client.delete(f"/v1/models/{mine}", headers=other_auth), 404, "not_found_error")
    assert_error(client.delete(f"/v1/models/{shared}", headers=auth), 404, "not_found_error")
    assert client.get(f"/v1/models/{mine}", headers=auth).status_code == 200
    assert client.get(f"/v1/models/{shared}", headers=auth).status_code == 200

    from app.cli import cli

    monkeypatch.setenv("GKD_HOME", str(settings.home))
    monkeypatch.setenv("GKD_DATABASE_URL", settings.database_url)
    refused = CliRunner().invoke(cli, ["models", "delete", mine, "--global"])
    assert refused.exit_code == 2 and "no global model" in refused.output
    result = CliRunner().invoke(cli, ["models", "delete", shared, "--global"])
    assert result.exit_code == 0, result.output
    assert_error(client.get(f"/v1/models/{shared}", headers=auth), 404, "not_found_error")
    assert tiny_teacher.joinpath("config.json").is_file()  # an imported directory is the operator's: it stays


def test_deleted_models_stop_counting_against_the_quota(client: TestClient, auth: dict, settings: Settings,
                                                        tiny_teacher: Path) -> None:
    with session_scope(settings.database_url) as session:
        tenant = session.get(Tenant, tenant_id_of(settings, auth))
        assert tenant is not None
        tenant.quota_models = 1
    first = upload_model(client, auth, tiny_teacher, name="first")
    refused = client.post("/v1/models", headers=auth, files={"file": ("m.tar.gz", tar_of(tiny_teacher))})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "quota_exceeded"
    assert client.delete(f"/v1/models/{first['id']}", headers=auth).status_code == 204
    upload_model(client, auth, tiny_teacher, name="second")
    with session_scope(settings.database_url) as session:
        rows = session.scalars(select(TeacherModel).where(TeacherModel.id == first["id"])).all()
        assert len(rows) == 1 and rows[0].deleted_at is not None  # soft: the row stays for finished jobs


# ------------------------------------------------------------------------------------------- finding 8


def _race(client: TestClient, create: tuple[str, dict], delete: str, headers: dict) -> tuple[int, int]:
    """POST the job and DELETE the resource from two threads released together; their status codes."""
    barrier = threading.Barrier(2)
    codes: dict[str, int] = {}

    def create_job() -> None:
        barrier.wait()
        codes["create"] = client.post(create[0], headers=headers, json=create[1]).status_code

    def delete_resource() -> None:
        barrier.wait()
        codes["delete"] = client.delete(delete, headers=headers).status_code

    threads = [threading.Thread(target=create_job), threading.Thread(target=delete_resource)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return codes["create"], codes["delete"]


@pytest.mark.parametrize("resource", ["dataset", "model"])
def test_create_and_delete_never_both_succeed(client: TestClient, settings: Settings, tiny_teacher: Path,
                                              resource: str) -> None:
    outcomes = []
    for _ in range(TRIES):
        headers = {"Authorization": f"Bearer {new_key(settings)}"}  # a tenant per try: no quota carries over
        teacher = register_teacher(settings, headers, tiny_teacher)
        dataset = upload_dataset(client, headers)["id"]
        body = {"teacher": teacher, "training_dataset": dataset, "student": {"num_layers": 1},
                "hyperparameters": {"max_length": 16}}
        target = f"/v1/datasets/{dataset}" if resource == "dataset" else f"/v1/models/{teacher}"
        created, deleted = _race(client, ("/v1/jobs", body), target, headers)
        outcomes.append((created, deleted))
        assert (created, deleted) in {(201, 409), (404, 200 if resource == "dataset" else 204)}, outcomes
        jobs = client.get("/v1/jobs", headers=headers).json()["data"]
        live = client.get(target, headers=headers).status_code == 200
        assert len(jobs) == (1 if created == 201 else 0) and live == (created == 201)
