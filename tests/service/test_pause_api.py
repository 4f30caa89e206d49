"""Pause and resume through the API, without a worker (the jobs stay queued): every legal move, the 409s of the
illegal ones, cancel and delete of a paused job, another tenant's 404, and the store's claim skipping a paused job.
The worker's side (save, let go, continue bit-exactly) is tests/service/test_pause_resume.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.store import jobs
from app.store.db import session_scope
from app.store.job_config import work_dir
from app.store.orm import Job
from app.store.settings import Settings
from tests.service.test_api_basics import assert_error
from tests.support.service import register_teacher, upload_dataset


@pytest.fixture
def job_id(client: TestClient, auth: dict, settings: Settings, tiny_teacher: Path) -> str:
    teacher = register_teacher(settings, auth, tiny_teacher)
    dataset = upload_dataset(client, auth)["id"]
    response = client.post("/v1/jobs", headers=auth,
                           json={"teacher": teacher, "training_dataset": dataset, "student": {"num_layers": 1}})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def statuses(client: TestClient, auth: dict, job_id: str) -> list[str]:
    events = client.get(f"/v1/jobs/{job_id}/events", headers=auth).json()["data"]
    return [e["data"]["status"] for e in events if e["type"] == "status"]


def set_status(settings: Settings, job_id: str, status: str) -> None:
    """Put the job where a worker would have moved it (running, pausing)."""
    with session_scope(settings.database_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=status, worker="w:1", attempts=1))


def test_pause_queued_then_resume(client: TestClient, auth: dict, job_id: str) -> None:
    paused = client.post(f"/v1/jobs/{job_id}/pause", headers=auth)
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "paused" and paused.json()["finished_at"] is None
    again = client.post(f"/v1/jobs/{job_id}/pause", headers=auth)  # already where it was asked to be
    assert again.status_code == 200 and again.json()["status"] == "paused"
    assert [j["id"] for j in client.get("/v1/jobs?status=paused", headers=auth).json()["data"]] == [job_id]

    resumed = client.post(f"/v1/jobs/{job_id}/resume", headers=auth)
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "queued"
    assert_error(client.post(f"/v1/jobs/{job_id}/resume", headers=auth), 409, "conflict_error")
    assert client.post(f"/v1/jobs/{job_id}/resume", headers=auth).json()["error"]["code"] == "illegal_transition"
    assert statuses(client, auth, job_id) == ["queued", "paused", "queued"]


def test_pause_running_asks_the_worker(client: TestClient, auth: dict, settings: Settings, job_id: str) -> None:
    set_status(settings, job_id, "running")
    pausing = client.post(f"/v1/jobs/{job_id}/pause", headers=auth)
    assert pausing.status_code == 200 and pausing.json()["status"] == "pausing"
    assert client.post(f"/v1/jobs/{job_id}/pause", headers=auth).json()["status"] == "pausing"
    refused = client.post(f"/v1/jobs/{job_id}/resume", headers=auth)  # not paused yet: the worker still holds it
    assert_error(refused, 409, "conflict_error")
    assert refused.json()["error"]["code"] == "illegal_transition" and "pausing" in refused.json()["error"]["message"]
    cancelling = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    assert cancelling.status_code == 200 and cancelling.json()["status"] == "cancelling"
    assert_error(client.post(f"/v1/jobs/{job_id}/pause", headers=auth), 409, "conflict_error")


def test_cancel_and_delete_of_a_paused_job(client: TestClient, auth: dict, settings: Settings, job_id: str) -> None:
    assert client.post(f"/v1/jobs/{job_id}/pause", headers=auth).json()["status"] == "paused"
    scratch = settings.storage / work_dir(job_id) / "state"
    scratch.mkdir(parents=True)
    (scratch / "training_state.pt").write_bytes(b"saved state")  # what a paused worker leaves behind

    refused = client.delete(f"/v1/jobs/{job_id}", headers=auth)  # unfinished: cancel it first
    assert_error(refused, 409, "conflict_error")
    assert refused.json()["error"]["code"] == "job_active"

    cancelled = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert not (settings.storage / work_dir(job_id)).exists()  # no worker will come to remove it
    assert statuses(client, auth, job_id) == ["queued", "paused", "cancelled"]
    for action in ("pause", "resume"):
        finished = client.post(f"/v1/jobs/{job_id}/{action}", headers=auth)
        assert_error(finished, 409, "conflict_error")
        assert finished.json()["error"]["code"] == "job_finished"
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth).status_code == 200


def test_other_tenant_and_unknown_job(client: TestClient, auth: dict, other_auth: dict, job_id: str) -> None:
    for action in ("pause", "resume"):
        assert_error(client.post(f"/v1/jobs/{job_id}/{action}", headers=other_auth), 404, "not_found_error")
        assert_error(client.post(f"/v1/jobs/job_unknown/{action}", headers=auth), 404, "not_found_error")
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["status"] == "queued"


def test_claim_skips_a_paused_job_and_parks_a_lost_pausing_one(client: TestClient, auth: dict, settings: Settings,
                                                                job_id: str) -> None:
    client.post(f"/v1/jobs/{job_id}/pause", headers=auth)
    with session_scope(settings.database_url) as session:  # the task sent before the pause reaches a worker
        assert jobs.claim(session, job_id, "w:2", max_attempts=3, stale_after_seconds=60, versions={}) is None
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["status"] == "paused"

    client.post(f"/v1/jobs/{job_id}/resume", headers=auth)
    set_status(settings, job_id, "pausing")  # its worker died after the pause was asked (no heartbeat)
    with session_scope(settings.database_url) as session:
        assert jobs.claim(session, job_id, "w:2", max_attempts=3, stale_after_seconds=60, versions={}) is None
    with session_scope(settings.database_url) as session:
        row = session.get(Job, job_id)
        assert row is not None and row.status == "paused" and row.worker is None
    assert statuses(client, auth, job_id)[-1] == "paused"
