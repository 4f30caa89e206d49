"""Finetune jobs on a real Celery worker (PostgreSQL + Redis, and SQLite + the embedded broker): a bare encoder
becomes a teacher of the tenant that the next distillation job uses by id; a cancel leaves no model; a model that
does not fit the tenant's byte quota fails the job and leaves nothing behind."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.service import test_end_to_end as end_to_end
from tests.service.test_end_to_end import Stack
from tests.service.test_quotas import set_tenant_quota
from tests.support.factories import csv_bytes, make_tiny_base_encoder, sentiment_rows
from tests.support.servers import wait_for
from tests.support.service import follow, new_key, register_teacher, submit, tenant_id_of, upload

pytestmark = [pytest.mark.slow, pytest.mark.services]

# The real worker of tests/service/test_end_to_end.py and the API beside it (fixtures `stack` and `api`).
stack, api = end_to_end.stack, end_to_end.api


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_base_encoder(tmp_path_factory.mktemp("encoder") / "base")


def _finetune(api: TestClient, headers: dict[str, str], base: str, train: str, dev: str | None = None,
              **hyper: Any) -> dict[str, Any]:
    body = {"teacher": base, "method": "finetune", "training_dataset": train, "validation_dataset": dev,
            "hyperparameters": {"epochs": 2, "batch_size": 8, "max_length": 16, **hyper}}
    response = api.post("/v1/jobs", headers=headers, json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def _models(api: TestClient, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in api.get("/v1/models", headers=headers).json()["data"] if m["owner"] == "tenant"}


def test_a_finetune_job_makes_a_teacher_that_a_distillation_uses(stack: Stack, api: TestClient,
                                                                 encoder: Path) -> None:
    headers = {"Authorization": f"Bearer {new_key(stack.settings)}"}
    base = register_teacher(stack.settings, headers, encoder, name="base")
    train = upload(api, headers, 48)
    dev = api.post("/v1/datasets", headers=headers,
                   files={"file": ("dev.csv", csv_bytes(sentiment_rows(16, seed=1)))}).json()["id"]
    job = _finetune(api, headers, base, train, dev)
    events = follow(api, headers, job["id"], timeout=150)
    done = api.get(f"/v1/jobs/{job['id']}", headers=headers).json()
    assert done["status"] == "succeeded", (done["error"], stack.log_tail())
    statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    assert any(e["type"] == "metrics" and e["data"].get("eval") for e in events)  # evaluated on dev
    assert {e["data"]["kind"] for e in events if e["type"] == "checkpoint"} >= {"best", "final"}

    model_id = done["fine_tuned_model"]
    assert model_id and model_id.startswith("mdl_") and model_id in events[-1]["message"]
    model = _models(api, headers)[model_id]
    assert model["labels"] == ["negative", "positive"] and model["source"] == "finetune"
    assert model["num_layers"] == 2 and model["name"] == f"base-finetuned-{job['id']}"
    tenant = tenant_id_of(stack.settings, headers)
    card = json.loads((stack.settings.storage / "models" / tenant / model_id / "gkd_card.json").read_text())
    assert card["made_by"] == "gkd finetune job" and card["job"] == job["id"]
    assert card["base_model"] == {"id": base, "name": "base"} and card["data"]["train"]["dataset"] == train
    assert card["epochs"] == 2 and 0.0 <= card["dev_accuracy"] <= 1.0 and "config" not in card

    distilled = submit(api, headers, model_id, train, validation_dataset=dev)
    follow(api, headers, distilled["id"], timeout=150)
    after = api.get(f"/v1/jobs/{distilled['id']}", headers=headers).json()
    assert after["status"] == "succeeded", (after["error"], stack.log_tail())
    assert after["teacher"] == model_id and after["fine_tuned_model"] is None

    deleted = api.delete(f"/v1/models/{model_id}", headers=headers)  # the model's files go with it
    assert deleted.status_code == 204 and not (stack.settings.storage / "models" / tenant / model_id).exists()
    assert api.get(f"/v1/jobs/{job['id']}", headers=headers).json()["fine_tuned_model"] == model_id


def test_a_classifier_is_fine_tuned_into_a_new_model(stack: Stack, api: TestClient, tiny_teacher: Path) -> None:
    headers = {"Authorization": f"Bearer {new_key(stack.settings)}"}
    classifier = register_teacher(stack.settings, headers, tiny_teacher, name="classifier")
    job = _finetune(api, headers, classifier, upload(api, headers, 24), epochs=1)
    follow(api, headers, job["id"], timeout=150)
    done = api.get(f"/v1/jobs/{job['id']}", headers=headers).json()
    assert done["status"] == "succeeded", (done["error"], stack.log_tail())
    assert _models(api, headers)[done["fine_tuned_model"]]["labels"] == ["negative", "positive"]


def test_cancel_a_finetune_job(stack: Stack, api: TestClient, encoder: Path) -> None:
    headers = {"Authorization": f"Bearer {new_key(stack.settings)}"}
    base = register_teacher(stack.settings, headers, encoder, name="base")
    job = _finetune(api, headers, base, upload(api, headers, 48), epochs=100)
    deadline = time.monotonic() + 120
    while not any(e["type"] == "metrics" for e in api.get(f"/v1/jobs/{job['id']}/events",
                                                            headers=headers).json()["data"]):
        assert time.monotonic() < deadline, stack.log_tail()
        time.sleep(0.2)
    cancel = api.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
    assert cancel.status_code == 200 and cancel.json()["status"] in ("cancelling", "cancelled")
    events = follow(api, headers, job["id"], timeout=120)
    assert [e["data"]["status"] for e in events if e["type"] == "status"][-1] == "cancelled"
    done = api.get(f"/v1/jobs/{job['id']}", headers=headers).json()
    assert done["status"] == "cancelled" and done["fine_tuned_model"] is None
    assert list(_models(api, headers)) == [base]  # no model was made


def test_a_model_over_the_byte_quota_fails_the_job_and_leaves_nothing(stack: Stack, api: TestClient,
                                                                       encoder: Path) -> None:
    headers = {"Authorization": f"Bearer {new_key(stack.settings)}"}
    base = register_teacher(stack.settings, headers, encoder, name="base")  # imported: no stored bytes
    train = upload(api, headers, 24)
    tenant = tenant_id_of(stack.settings, headers)
    set_tenant_quota(stack.settings, tenant, stored_bytes=10_000)  # the dataset fits, a model does not
    job = _finetune(api, headers, base, train, epochs=1)
    follow(api, headers, job["id"], timeout=150)
    done = api.get(f"/v1/jobs/{job['id']}", headers=headers).json()
    assert done["status"] == "failed" and "storage quota exceeded" in done["error"], stack.log_tail()
    assert done["fine_tuned_model"] is None and list(_models(api, headers)) == [base]
    left = stack.settings.storage / "models" / tenant
    assert not left.exists() or not any(left.iterdir())  # the staged model's files are removed again


def test_a_paused_finetune_job_resumes_and_makes_its_teacher(stack: Stack, api: TestClient, encoder: Path) -> None:
    headers = {"Authorization": f"Bearer {new_key(stack.settings)}"}
    base = register_teacher(stack.settings, headers, encoder, name="base")
    job = _finetune(api, headers, base, upload(api, headers, 48), epochs=8)  # 6 steps an epoch, 48 in all

    def job_now() -> dict[str, Any]:
        return dict(api.get(f"/v1/jobs/{job['id']}", headers=headers).json())

    wait_for(lambda: job_now()["progress"].get("step", 0) >= 4, 120, "the job to pass step 4", tail=stack.log_tail)
    asked = api.post(f"/v1/jobs/{job['id']}/pause", headers=headers)
    assert asked.status_code == 200 and asked.json()["status"] in ("pausing", "paused"), asked.text
    paused = wait_for(lambda: (j := job_now())["status"] == "paused" and j, 60, "the job to be paused",
                      tail=stack.log_tail)
    assert paused["fine_tuned_model"] is None and list(_models(api, headers)) == [base]
    resumed = api.post(f"/v1/jobs/{job['id']}/resume", headers=headers)
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued", resumed.text
    events = follow(api, headers, job["id"], timeout=150)
    done = job_now()
    assert done["status"] == "succeeded", (done["error"], stack.log_tail())
    assert any(e["type"] == "log" and "training resumed from step" in e["message"] for e in events)
    assert done["fine_tuned_model"] in _models(api, headers)
