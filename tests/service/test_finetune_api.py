"""`method: "finetune"` job bodies through the API (no worker), and the store logic that registers the teacher a
finetune job made, on SQLite and PostgreSQL: a bare encoder uploads like any model, teaches nothing, and is
fine-tuned; what a fine-tuning would ignore is a 422; a tenant at its model quota cannot start one."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.store import finetuned, quotas
from app.store.db import session_scope
from app.store.orm import Job, TeacherModel
from app.store.settings import Settings
from gkd.models.teacher import describe_teacher
from tests.service.test_api_basics import assert_error
from tests.service.test_models import tar_of
from tests.service.test_quotas import set_tenant_quota
from tests.service.test_worker_claim import _taken_over
from tests.support.factories import make_tiny_base_encoder, make_tiny_teacher, sentiment_rows
from tests.support.service import register_teacher, tenant_id_of, upload, upload_dataset


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_base_encoder(tmp_path_factory.mktemp("encoder") / "base")


def _upload_encoder(client: TestClient, auth: dict[str, str], encoder: Path) -> dict[str, Any]:
    response = client.post("/v1/models", headers=auth, files={"file": ("base.tar.gz", tar_of(encoder))},
                           data={"name": "base"})
    assert response.status_code == 201, response.text
    return dict(response.json())


def _body(base: str, train: str, **fields: Any) -> dict[str, Any]:
    return {"teacher": base, "method": "finetune", "training_dataset": train, **fields}


def test_a_bare_encoder_uploads_teaches_nothing_and_is_fine_tuned(client: TestClient, auth: dict[str, str],
                                                                  encoder: Path) -> None:
    base = _upload_encoder(client, auth, encoder)
    assert base["labels"] == [] and base["task"] is None and base["num_layers"] == 2
    train = upload(client, auth, 24)
    distill = client.post("/v1/jobs", headers=auth, json={"teacher": base["id"], "training_dataset": train})
    assert "no classification head" in assert_error(distill, 422, "invalid_request_error", "teacher")["message"]

    created = client.post("/v1/jobs", headers=auth, json=_body(base["id"], train))
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["method"] == "finetune" and job["teacher"] == base["id"] and job["fine_tuned_model"] is None
    assert job["student"] == {"num_layers": 2, "init": "bottom"}  # the base model at its full depth
    hp = job["hyperparameters"]
    assert (hp["epochs"], hp["learning_rate"]) == (3, 5e-5)  # the fine-tuning defaults, not a distillation's
    assert hp["max_length"] == 64  # capped to the tiny model's position table, as for any job

    estimate = client.post("/v1/jobs?dry_run=true", headers=auth, json=_body(base["id"], train,
                                                                            hyperparameters={"epochs": 2}))
    assert estimate.status_code == 200, estimate.text
    assert estimate.json()["total_steps"] == 2 and estimate.json()["teacher_cache_exists"] is True


@pytest.mark.parametrize(("fields", "param"), [
    ({"student": {"num_layers": 1}}, "student.num_layers"),
    ({"student": {"init": "every_other"}}, "student.init"),
    ({"hyperparameters": {"temperature": 2.0}}, "hyperparameters.temperature"),
    ({"hyperparameters": {"beta": 0.5}}, "hyperparameters.beta"),
    ({"label_map": {"negative": "neg"}}, "label_map"),
    ({"export": ["onnx"]}, "export"),
    ({"hyperparameters": {"epochs": 0}}, "hyperparameters.epochs"),
])
def test_fields_a_fine_tuning_would_ignore_are_refused(client: TestClient, auth: dict[str, str], encoder: Path,
                                                       settings: Settings, fields: dict[str, Any],
                                                       param: str) -> None:
    base = _upload_encoder(client, auth, encoder)
    train = upload(client, auth, 24)
    response = client.post("/v1/jobs", headers=auth, json=_body(base["id"], train, **fields))
    error = assert_error(response, 422, "invalid_request_error", param)
    assert "finetune" in error["message"] or param == "hyperparameters.epochs"
    with session_scope(settings.database_url) as session:
        assert session.query(Job).filter(Job.tenant_id == tenant_id_of(settings, auth)).count() == 0


def test_fields_at_their_defaults_are_accepted(client: TestClient, auth: dict[str, str], encoder: Path) -> None:
    """The dashboard's form sends every field: defaults change nothing, so they are no reason to refuse."""
    base = _upload_encoder(client, auth, encoder)
    train = upload(client, auth, 24)
    body = _body(base["id"], train, student={"num_layers": 3, "init": "bottom"},
                 hyperparameters={"temperature": 5.0, "epochs": 1}, export=[], label_map=None)
    response = client.post("/v1/jobs", headers=auth, json=body)
    assert response.status_code == 201, response.text
    assert response.json()["student"]["num_layers"] == 2 and response.json()["hyperparameters"]["epochs"] == 1


def test_a_validation_dataset_with_labels_the_training_data_lacks_is_refused(
        client: TestClient, auth: dict[str, str], encoder: Path) -> None:
    base = _upload_encoder(client, auth, encoder)
    train = upload(client, auth, 24)
    other = upload_dataset(client, auth, [{"text": "so so", "label": "neutral"}, *sentiment_rows(4)])
    response = client.post("/v1/jobs", headers=auth, json=_body(base["id"], train, validation_dataset=other["id"]))
    assert "neutral" in assert_error(response, 422, "invalid_request_error", "validation_dataset")["message"]


def test_a_classifier_is_fine_tuned_on_its_own_labels(client: TestClient, auth: dict[str, str],
                                                       tiny_teacher: Path, settings: Settings) -> None:
    """A base with a head keeps it (the library's fine-tuning of a classifier): the data's labels must be its
    labels, directly or through `label_map`, as for a distillation."""
    classifier = register_teacher(settings, auth, tiny_teacher, name="classifier")
    train = upload(client, auth, 24)
    created = client.post("/v1/jobs", headers=auth, json=_body(classifier, train))
    assert created.status_code == 201, created.text
    numbered = upload_dataset(client, auth, [{"text": r["text"], "label": "1" if r["label"] == "positive" else "0"}
                                             for r in sentiment_rows(24)])
    refused = client.post("/v1/jobs", headers=auth, json=_body(classifier, numbered["id"]))
    assert assert_error(refused, 422, "invalid_request_error", "training_dataset")["code"] == "labels_mismatch"
    mapped = client.post("/v1/jobs", headers=auth, json=_body(classifier, numbered["id"],
                                                              label_map={"0": "negative", "1": "positive"}))
    assert mapped.status_code == 201, mapped.text
    assert mapped.json()["label_map"] == {"0": "negative", "1": "positive"}


def test_a_tenant_at_its_model_quota_cannot_start_one(client: TestClient, auth: dict[str, str], encoder: Path,
                                                      settings: Settings) -> None:
    base = _upload_encoder(client, auth, encoder)
    train = upload(client, auth, 24)
    set_tenant_quota(settings, tenant_id_of(settings, auth), models=1)
    response = client.post("/v1/jobs", headers=auth, json=_body(base["id"], train))
    assert "1 models of its 1" in assert_error(response, 429, "rate_limit_error")["message"]
    distill = client.post("/v1/jobs", headers=auth, json={  # a distillation makes no model: not refused for it
        "teacher": "example-teacher", "training_dataset": train})
    assert distill.status_code != 429


def test_register_inserts_the_model_and_names_it_on_the_job(client: TestClient, auth: dict[str, str],
                                                            encoder: Path, settings: Settings) -> None:
    base = _upload_encoder(client, auth, encoder)
    train = upload(client, auth, 24)
    job = client.post("/v1/jobs", headers=auth, json=_body(base["id"], train)).json()
    info = describe_teacher(encoder)
    tenant = tenant_id_of(settings, auth)
    with session_scope(settings.database_url) as session:
        row = finetuned.register(session, settings, job["id"], "mdl_test_finetuned", info, 1234)
        assert row.name == f"base-finetuned-{job['id']}" and row.source == "finetune"
        assert row.path == f"models/{tenant}/mdl_test_finetuned"
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["fine_tuned_model"] == "mdl_test_finetuned"
    listed = {m["id"]: m for m in client.get("/v1/models", headers=auth).json()["data"]}
    assert listed["mdl_test_finetuned"]["owner"] == "tenant"

    set_tenant_quota(settings, tenant, stored_bytes=10)  # the next one does not fit: nothing is inserted
    with pytest.raises(quotas.QuotaExceeded), session_scope(settings.database_url) as session:
        finetuned.register(session, settings, job["id"], "mdl_test_too_big", info, 1234)
    with session_scope(settings.database_url) as session:
        assert session.get(TeacherModel, "mdl_test_too_big") is None
        assert session.get(Job, job["id"]).fine_tuned_model_id == "mdl_test_finetuned"  # type: ignore[union-attr]


def _trained(directory: Path) -> SimpleNamespace:
    """What the trainer hands the worker at the end of a fine-tuning: a best checkpoint directory and its figures."""
    make_tiny_teacher(directory)
    (directory / "gkd_card.json").write_text(json.dumps({"metrics": {"accuracy": 0.75}, "config": {"x": 1}}))
    return SimpleNamespace(best_dir=directory, best_metrics={"step": 3, "accuracy": 0.75}, test_metrics=None,
                           labels=["negative", "positive"], steps=3)


def test_a_fenced_off_worker_registers_no_model_and_leaves_no_files(client: TestClient, auth: dict[str, str],
                                                                    encoder: Path, settings: Settings,
                                                                    tmp_path: Path) -> None:
    from app.store.jobs import FencedOff
    from worker.runner import _finish_finetune

    base = _upload_encoder(client, auth, encoder)
    job_id = client.post("/v1/jobs", headers=auth, json=_body(base["id"], upload(client, auth, 24))).json()["id"]
    first, second = _taken_over(settings, job_id)
    result = _trained(tmp_path / "best")
    with pytest.raises(FencedOff):
        _finish_finetune(first, result, {"best": {}})
    models = settings.storage / "models" / tenant_id_of(settings, auth)
    assert sorted(p.name for p in models.iterdir()) == [base["id"]]  # only the upload: no staged copy left
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["fine_tuned_model"] is None

    assert _finish_finetune(second, result, {"best": {}}) == "succeeded"  # the holder's registration lands
    made = client.get(f"/v1/jobs/{job_id}", headers=auth).json()["fine_tuned_model"]
    card = json.loads((models / made / "gkd_card.json").read_text())
    assert card["job"] == job_id and card["dev_accuracy"] == 0.75 and "config" not in card
    assert client.get(f"/v1/models/{made}", headers=auth).json()["labels"] == ["negative", "positive"]
