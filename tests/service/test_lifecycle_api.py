"""The job lifecycle's API without a worker (SQLite and PostgreSQL): metrics.csv from the events as they are
stored, DELETE of jobs (finished only: every row and file goes) and of datasets (the file goes too)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.metrics_csv import PAGE
from app.store import jobs
from app.store.db import session_scope
from app.store.events import append_event
from app.store.ids import new_id
from app.store.orm import Checkpoint, JobEvent
from app.store.settings import Settings
from tests.service.test_api_basics import assert_error
from tests.support.service import register_teacher, upload_dataset


@pytest.fixture
def job(client: TestClient, auth: dict, settings: Settings, tiny_teacher: Path) -> dict:
    teacher = register_teacher(settings, auth, tiny_teacher)
    dataset = upload_dataset(client, auth)["id"]
    body = {"teacher": teacher, "training_dataset": dataset, "student": {"num_layers": 1}}
    response = client.post("/v1/jobs", headers=auth, json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def _finish(settings: Settings, job_id: str, status: str = jobs.SUCCEEDED) -> None:
    with session_scope(settings.database_url) as session:
        assert jobs.transition(session, job_id, jobs.RUNNING, from_statuses=(jobs.QUEUED,))
        assert jobs.transition(session, job_id, status, from_statuses=(jobs.RUNNING,))


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_metrics_csv_has_every_metrics_event(client: TestClient, auth: dict, settings: Settings, job: dict) -> None:
    n = PAGE + 7  # more than one page
    with session_scope(settings.database_url) as session:
        for step in range(1, n + 1):
            append_event(session, job["id"], "metrics", f"step {step}",
                         {"loss": step / 10, "lr": 1e-4, "step": step, "epoch": 0})
            if step % 250 == 0:
                append_event(session, job["id"], "log", "not a metric")
        append_event(session, job["id"], "metrics", "evaluation",
                     {"accuracy": 0.75, "macro_f1": 0.5, "loss": None, "step": n, "epoch": 1, "eval": True})
    response = client.get(f"/v1/jobs/{job['id']}/metrics.csv", headers=auth)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert response.text.splitlines()[0] == "seq,created_at,kind,step,epoch,loss,lr,accuracy,macro_f1"
    rows = _rows(response.text)
    assert len(rows) == n + 1
    assert [r["kind"] for r in rows] == ["step"] * n + ["eval"]
    assert [int(r["step"]) for r in rows[:n]] == list(range(1, n + 1))
    assert float(rows[9]["loss"]) == 1.0 and rows[9]["accuracy"] == ""
    assert rows[-1]["accuracy"] == "0.75" and rows[-1]["loss"] == "" and rows[-1]["epoch"] == "1"
    seqs = [int(r["seq"]) for r in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_metrics_csv_empty_and_tenancy(client: TestClient, auth: dict, other_auth: dict, job: dict) -> None:
    response = client.get(f"/v1/jobs/{job['id']}/metrics.csv", headers=auth)
    assert response.status_code == 200
    assert response.text == "seq,created_at,kind,step,epoch\n"
    assert_error(client.get(f"/v1/jobs/{job['id']}/metrics.csv", headers=other_auth), 404, "not_found_error")
    assert_error(client.get("/v1/jobs/job_nothing/metrics.csv", headers=auth), 404, "not_found_error")


def test_delete_refuses_an_unfinished_job(client: TestClient, auth: dict, settings: Settings, job: dict) -> None:
    assert_error(client.delete(f"/v1/jobs/{job['id']}", headers=auth), 409, "conflict_error")
    with session_scope(settings.database_url) as session:
        jobs.transition(session, job["id"], jobs.RUNNING, from_statuses=(jobs.QUEUED,))
    assert_error(client.delete(f"/v1/jobs/{job['id']}", headers=auth), 409, "conflict_error")
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["status"] == "running"


def test_delete_a_finished_job_removes_rows_and_files(client: TestClient, auth: dict, other_auth: dict,
                                                      settings: Settings, job: dict) -> None:
    job_dir = settings.storage / "jobs" / job["id"]
    (job_dir / "checkpoints").mkdir(parents=True)
    (job_dir / "checkpoints" / "best.tar.gz").write_bytes(b"archive")
    (job_dir / "work" / "state").mkdir(parents=True)
    (job_dir / "work" / "state" / "model.safetensors").write_bytes(b"state")
    with session_scope(settings.database_url) as session:
        session.add(Checkpoint(id=new_id("ckpt"), job_id=job["id"], kind="best",
                               path=f"jobs/{job['id']}/checkpoints/best.tar.gz", sha256="0" * 64, size_bytes=7))
    _finish(settings, job["id"], jobs.CANCELLED)

    assert_error(client.delete(f"/v1/jobs/{job['id']}", headers=other_auth), 404, "not_found_error")
    response = client.delete(f"/v1/jobs/{job['id']}", headers=auth)
    assert response.status_code == 200, response.text
    assert response.json() == {"id": job["id"], "object": "job", "deleted": True}
    assert not job_dir.exists()
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(func.count()).select_from(JobEvent).where(JobEvent.job_id == job["id"])) == 0
        assert session.scalar(select(func.count()).select_from(Checkpoint)
                              .where(Checkpoint.job_id == job["id"])) == 0
    assert_error(client.get(f"/v1/jobs/{job['id']}", headers=auth), 404, "not_found_error")
    assert_error(client.delete(f"/v1/jobs/{job['id']}", headers=auth), 404, "not_found_error")
    assert job["id"] not in [j["id"] for j in client.get("/v1/jobs", headers=auth).json()["data"]]


def test_delete_dataset_removes_its_file_once_no_job_needs_it(client: TestClient, auth: dict,
                                                              settings: Settings, job: dict) -> None:
    dataset = client.get(f"/v1/datasets/{job['training_dataset']}", headers=auth).json()
    stored = list((settings.storage / "datasets").rglob(f"{dataset['id']}.*"))
    assert len(stored) == 1
    assert_error(client.delete(f"/v1/datasets/{dataset['id']}", headers=auth), 409, "conflict_error")
    assert stored[0].is_file()
    _finish(settings, job["id"])
    assert client.delete(f"/v1/datasets/{dataset['id']}", headers=auth).status_code == 200
    assert not stored[0].exists()
    assert_error(client.get(f"/v1/datasets/{dataset['id']}", headers=auth), 404, "not_found_error")
    # The finished job that used it is still readable, and can itself be deleted.
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["status"] == "succeeded"
    assert client.delete(f"/v1/jobs/{job['id']}", headers=auth).status_code == 200


def _checkpoint_of(settings: Settings, job_id: str, kind: str = "final") -> str:
    checkpoint_id = new_id("ckpt")
    with session_scope(settings.database_url) as session:
        session.add(Checkpoint(id=checkpoint_id, job_id=job_id, kind=kind,
                               path=f"jobs/{job_id}/checkpoints/{kind}.tar.gz", sha256="0" * 64, size_bytes=7))
    return checkpoint_id


def test_continue_from_a_checkpoint_is_checked(client: TestClient, auth: dict, other_auth: dict,
                                               settings: Settings, job: dict, tiny_teacher: Path) -> None:
    checkpoint = _checkpoint_of(settings, job["id"])
    body = {"teacher": job["teacher"], "training_dataset": job["training_dataset"],
            "student": {"init": {"checkpoint": checkpoint}}}
    # The source job is still queued.
    error = assert_error(client.post("/v1/jobs", headers=auth, json=body), 422, "invalid_request_error",
                         "student.init.checkpoint")
    assert "finished" in error["message"]
    dry = assert_error(client.post("/v1/jobs?dry_run=true", headers=auth, json=body), 422, "invalid_request_error",
                       "student.init.checkpoint")  # an estimate of a continuation checks it alike
    assert "finished" in dry["message"]
    _finish(settings, job["id"])
    estimate = client.post("/v1/jobs?dry_run=true", headers=auth, json=body)
    assert estimate.status_code == 200 and estimate.json()["object"] == "job.estimate", estimate.text
    assert estimate.json()["total_steps"] > 0
    assert [j["id"] for j in client.get("/v1/jobs", headers=auth).json()["data"]] == [job["id"]]  # nothing stored
    assert_error(client.post("/v1/jobs", headers=auth, json={**body, "student": {"init": {"checkpoint": "ckpt_x"}}}),
                 404, "not_found_error", "student.init.checkpoint")
    assert_error(client.post("/v1/jobs", headers=auth, json={**body, "student": {"num_layers": 2, "init": {
        "checkpoint": checkpoint}}}), 422, "invalid_request_error", "student.num_layers")
    assert_error(client.post("/v1/jobs", headers=auth, json={**body, "student": {"hidden_size": 16, "init": {
        "checkpoint": checkpoint}}}), 422, "invalid_request_error")
    other_teacher = register_teacher(settings, auth, tiny_teacher, name="tiny-2")
    assert_error(client.post("/v1/jobs", headers=auth, json={**body, "teacher": other_teacher}), 422,
                 "invalid_request_error", "student.init.checkpoint")

    created = client.post("/v1/jobs", headers=auth, json=body)
    assert created.status_code == 201, created.text
    follow_up = created.json()
    assert follow_up["student"]["init"] == {"checkpoint": checkpoint}
    assert follow_up["student"]["num_layers"] == job["student"]["num_layers"]  # the checkpoint's depth

    # Another tenant cannot see it; the source cannot be deleted while the job that continues from it runs.
    other_dataset = upload_dataset(client, other_auth)["id"]
    other_body = {"teacher": register_teacher(settings, other_auth, tiny_teacher), "training_dataset": other_dataset,
                  "student": {"init": {"checkpoint": checkpoint}}}
    assert_error(client.post("/v1/jobs", headers=other_auth, json=other_body), 404, "not_found_error",
                 "student.init.checkpoint")
    error = assert_error(client.delete(f"/v1/jobs/{job['id']}", headers=auth), 409, "conflict_error")
    assert follow_up["id"] in error["message"]
    _finish(settings, follow_up["id"], jobs.FAILED)
    assert client.delete(f"/v1/jobs/{job['id']}", headers=auth).status_code == 200


def test_a_job_takes_student_vocabulary_and_its_pruned_checkpoints_cannot_be_continued(
        client: TestClient, auth: dict, settings: Settings, tiny_teacher: Path) -> None:
    teacher = register_teacher(settings, auth, tiny_teacher)
    dataset = upload_dataset(client, auth)["id"]
    body = {"teacher": teacher, "training_dataset": dataset, "student": {"num_layers": 1}}
    assert_error(client.post("/v1/jobs", headers=auth, json={**body, "student": {"vocabulary": "smallest"}}), 422,
                 "invalid_request_error", "student.vocabulary")
    default = client.post("/v1/jobs", headers=auth, json=body)
    assert default.status_code == 201, default.text
    assert default.json()["student"]["vocabulary"] == "full"
    pruning = {"num_layers": 1, "vocabulary": "training_data"}
    created = client.post("/v1/jobs", headers=auth, json={**body, "student": pruning})
    assert created.status_code == 201, created.text
    pruned = created.json()
    assert pruned["student"]["vocabulary"] == "training_data"
    _finish(settings, pruned["id"])
    checkpoint = _checkpoint_of(settings, pruned["id"], "best")
    error = assert_error(client.post("/v1/jobs", headers=auth, json={
        **body, "student": {"init": {"checkpoint": checkpoint}}}), 422, "invalid_request_error",
        "student.init.checkpoint")
    assert "pruned vocabulary" in error["message"]
