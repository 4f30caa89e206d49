"""Per-tenant quotas on both backends: stored bytes (413), datasets, models and active jobs (429), each a
`rate_limit_error` with the envelope, refused before anything is stored; the operator's own values per tenant
(`gkd tenants set-quota`) over the deployment's defaults (GKD_QUOTA_*)."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.store.db import session_scope
from app.store.orm import Dataset, TeacherModel, Tenant
from app.store.quotas import set_quota
from app.store.settings import Settings
from tests.service.test_api_basics import assert_error
from tests.service.test_models import tar_of
from tests.support.factories import csv_bytes, sentiment_rows
from tests.support.service import register_teacher, tenant_id_of, upload_dataset


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", database_url=db_url, broker_url="memory://", migrate_on_start=False,
                    task_queue=f"test-{secrets.token_hex(4)}", quota_datasets=2, quota_models=1,
                    quota_active_jobs=1, quota_stored_bytes=10**9)


def stored_files(settings: Settings, tenant_id: str) -> list[Path]:
    files = [p for kind in ("datasets", "models") for p in (settings.storage / kind / tenant_id).rglob("*")
             if p.is_file()]
    return files + [p for p in settings.tmp_dir.rglob("*") if p.is_file()]


def count(settings: Settings, model: type, tenant_id: str) -> int:
    with session_scope(settings.database_url) as session:
        return int(session.scalar(select(func.count()).select_from(model).where(model.tenant_id == tenant_id)) or 0)


def set_tenant_quota(settings: Settings, tenant_id: str, **values: int | None) -> None:
    with session_scope(settings.database_url) as session:
        tenant = session.get(Tenant, tenant_id)
        assert tenant is not None
        set_quota(session, tenant, values)


def test_dataset_count_quota(client: TestClient, auth: dict, other_auth: dict, settings: Settings) -> None:
    tenant = tenant_id_of(settings, auth)
    first = upload_dataset(client, auth)
    upload_dataset(client, auth)
    before = stored_files(settings, tenant)
    refused = client.post("/v1/datasets", headers=auth, files={"file": ("t.csv", csv_bytes(sentiment_rows(24)))})
    error = assert_error(refused, 429, "rate_limit_error", param="datasets")
    assert error["code"] == "quota_exceeded" and "2 datasets of its 2" in error["message"]
    assert stored_files(settings, tenant) == before and count(settings, Dataset, tenant) == 2
    upload_dataset(client, other_auth)  # another tenant has its own count
    assert client.delete(f"/v1/datasets/{first['id']}", headers=auth).status_code == 200
    upload_dataset(client, auth)  # a deleted dataset no longer counts


def test_stored_bytes_quota_is_a_413(client: TestClient, auth: dict, settings: Settings) -> None:
    tenant = tenant_id_of(settings, auth)
    body = csv_bytes(sentiment_rows(24))
    set_tenant_quota(settings, tenant, stored_bytes=len(body) + 10, datasets=10)
    upload_dataset(client, auth, sentiment_rows(24))
    before = stored_files(settings, tenant)
    refused = client.post("/v1/datasets", headers=auth, files={"file": ("t.csv", body)})
    error = assert_error(refused, 413, "rate_limit_error", param="stored_bytes")
    assert error["code"] == "quota_exceeded" and f"{len(body):,} bytes" in error["message"]
    assert stored_files(settings, tenant) == before and count(settings, Dataset, tenant) == 1
    set_tenant_quota(settings, tenant, stored_bytes=None)  # back to the deployment's default
    upload_dataset(client, auth, sentiment_rows(24))


def test_model_quota_counts_extracted_bytes(client: TestClient, auth: dict, settings: Settings,
                                            tiny_teacher: Path) -> None:
    tenant = tenant_id_of(settings, auth)
    archive = tar_of(tiny_teacher)
    created = client.post("/v1/models", headers=auth, files={"file": ("m.tar.gz", archive)})
    assert created.status_code == 201, created.text
    with session_scope(settings.database_url) as session:
        size = session.scalar(select(TeacherModel.size_bytes).where(TeacherModel.id == created.json()["id"]))
    assert size == sum(p.stat().st_size for p in tiny_teacher.rglob("*") if p.is_file())
    before = stored_files(settings, tenant)
    assert_error(client.post("/v1/models", headers=auth, files={"file": ("m.tar.gz", archive)}), 429,
                 "rate_limit_error", param="models")
    set_tenant_quota(settings, tenant, models=5, stored_bytes=size + size // 2)  # a second one does not fit
    assert_error(client.post("/v1/models", headers=auth, files={"file": ("m.tar.gz", archive)}), 413,
                 "rate_limit_error", param="stored_bytes")
    assert stored_files(settings, tenant) == before and count(settings, TeacherModel, tenant) == 1


def test_active_jobs_quota(client: TestClient, auth: dict, settings: Settings, tiny_teacher: Path) -> None:
    teacher = register_teacher(settings, auth, tiny_teacher)
    dataset = upload_dataset(client, auth)["id"]
    body = {"teacher": teacher, "training_dataset": dataset, "student": {"num_layers": 1}}
    first = client.post("/v1/jobs", headers={**auth, "Idempotency-Key": "one"}, json=body)
    assert first.status_code == 201
    refused = client.post("/v1/jobs", headers=auth, json=body)
    assert_error(refused, 429, "rate_limit_error", param="active_jobs")
    assert len(client.get("/v1/jobs", headers=auth).json()["data"]) == 1
    replay = client.post("/v1/jobs", headers={**auth, "Idempotency-Key": "one"}, json=body)  # not a new job
    assert replay.json()["id"] == first.json()["id"]
    assert client.post(f"/v1/jobs/{first.json()['id']}/pause", headers=auth).json()["status"] == "paused"
    assert_error(client.post("/v1/jobs", headers=auth, json=body), 429, "rate_limit_error",
                 param="active_jobs")  # a paused job is unfinished: it keeps its place
    assert client.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=auth).json()["status"] == "cancelled"
    assert client.post("/v1/jobs", headers=auth, json=body).status_code == 201  # a finished job no longer counts


def test_operator_cli_sets_and_shows_quotas(client: TestClient, auth: dict, settings: Settings,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from app.cli import cli

    tenant = tenant_id_of(settings, auth)
    upload_dataset(client, auth)
    with session_scope(settings.database_url) as session:
        tenant_row = session.get(Tenant, tenant)
        assert tenant_row is not None
        name = tenant_row.name
    monkeypatch.setenv("GKD_HOME", str(settings.home))
    monkeypatch.setenv("GKD_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("GKD_QUOTA_MODELS", "7")
    runner = CliRunner()
    result = runner.invoke(cli, ["tenants", "set-quota", name, "--stored-bytes", "2G", "--datasets", "5"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["quota"] == {"stored_bytes": 2 * 1024**3, "datasets": 5, "models": 7, "active_jobs": 20}
    assert shown["set_for_tenant"] == {"stored_bytes": True, "datasets": True, "models": False, "active_jobs": False}
    assert shown["usage"]["datasets"] == 1 and shown["usage"]["stored_bytes"] > 0
    reset = runner.invoke(cli, ["tenants", "set-quota", name, "--datasets", "default"])
    assert json.loads(reset.output)["quota"]["datasets"] == 1000
    assert runner.invoke(cli, ["tenants", "set-quota", name, "--datasets", "many"]).exit_code != 0
    assert runner.invoke(cli, ["tenants", "set-quota", "no-such-tenant", "--datasets", "1"]).exit_code != 0
