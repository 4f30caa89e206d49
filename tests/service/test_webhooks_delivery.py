"""Webhooks delivered by a real webhook worker (Celery, GKD_WORKER_QUEUES=webhooks) from a real API server
(uvicorn) to a receiver on loopback: every request carries a valid Standard Webhooks signature; a receiver's 500s are
retried with backoff until it answers 2xx; a worker killed mid-attempt loses nothing (another one completes the
delivery); a real training job's lifecycle (queued, running, checkpoint, per-epoch checkpoint, succeeded)
arrives; and pausing and resuming a job send job.paused and job.queued."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook as Verifier

from app.store.db import upgrade
from app.store.settings import Settings
from tests.support.broker import forget_redis_queue
from tests.support.factories import csv_bytes, sentiment_rows
from tests.support.receiver import Receiver, receiver
from tests.support.servers import Server, start_worker, stop, wait_for
from tests.support.service import REDIS_URL, new_key, reachable, register_teacher

pytestmark = [pytest.mark.slow, pytest.mark.services]

FAST = {"GKD_WEBHOOK_ALLOW_PRIVATE": "true", "GKD_WEBHOOK_BACKOFF_SECONDS": "0.3",
        "GKD_WEBHOOK_POLL_SECONDS": "0.2", "GKD_WEBHOOK_TIMEOUT_SECONDS": "1"}


@pytest.fixture(params=["sqlite+embedded", "postgresql+redis"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    urls: dict[str, str] = {}
    if request.param == "postgresql+redis":
        if not reachable(6379):
            pytest.skip("Redis is not listening on 127.0.0.1:6379")
        urls = {"database_url": request.getfixturevalue("postgresql_url"), "broker_url": REDIS_URL}
    token = secrets.token_hex(4)
    settings = Settings(home=tmp_path / "home", task_queue=f"wh-train-{token}", webhook_queue=f"wh-{token}",
                        broker_polling_seconds=0.2, **urls)
    upgrade(settings.database_url)
    yield settings
    for queue in (settings.task_queue, settings.webhook_queue):
        forget_redis_queue(settings.broker_url, queue)


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    return {**FAST, "GKD_WEBHOOK_QUEUE": settings.webhook_queue, **extra}


@pytest.fixture
def api(deployment: Settings, tmp_path: Path) -> Iterator[Server]:
    server = Server(deployment, tmp_path / "api.log", **_env(deployment)).start()
    yield server
    server.stop()


def _webhook_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    return start_worker(settings, log, name="webhooks", **_env(settings, GKD_WORKER_QUEUES="webhooks"))


def _create_endpoint(api: Server, headers: dict[str, str], url: str, types: list[str]) -> dict[str, Any]:
    response = httpx.post(f"{api.url}/v1/webhooks", headers=headers, json={"url": url, "event_types": types})
    assert response.status_code == 201, response.text
    return dict(response.json())


def _new_job(api: Server, settings: Settings, headers: dict[str, str], teacher_dir: Path,
             **hyper: object) -> dict[str, Any]:
    teacher = register_teacher(settings, headers, teacher_dir)
    upload = httpx.post(f"{api.url}/v1/datasets", headers=headers,
                        files={"file": ("train.csv", csv_bytes(sentiment_rows(24)), "text/csv")})
    assert upload.status_code == 201, upload.text
    body = {"teacher": teacher, "training_dataset": upload.json()["id"], "student": {"num_layers": 1},
            "hyperparameters": {"epochs": 1, "batch_size": 8, "max_length": 16, **hyper}}
    job = httpx.post(f"{api.url}/v1/jobs", headers=headers, json=body)
    assert job.status_code == 201, job.text
    return dict(job.json())


def _deliveries(api: Server, headers: dict[str, str], webhook_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{api.url}/v1/webhooks/{webhook_id}/deliveries", headers=headers)
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def _verified(secret: str, got: Receiver) -> list[dict[str, Any]]:
    """Every request the receiver got, verified with the endpoint's secret (raises on a bad signature)."""
    verifier = Verifier(secret)
    return [verifier.verify(r.body, r.headers) for r in got.received]


def test_receiver_500s_are_retried_until_delivered(api: Server, deployment: Settings, tmp_path: Path,
                                                   tiny_teacher: Path) -> None:
    headers = {"Authorization": f"Bearer {new_key(deployment)}"}
    log = tmp_path / "webhooks.log"
    with receiver(answers=[500, 500]) as got:
        endpoint = _create_endpoint(api, headers, got.url, ["job.cancelled"])
        worker = _webhook_worker(deployment, log)
        try:
            job = _new_job(api, deployment, headers, tiny_teacher)  # no training worker: it stays queued
            assert httpx.post(f"{api.url}/v1/jobs/{job['id']}/cancel", headers=headers).status_code == 200
            done = wait_for(lambda: [d for d in _deliveries(api, headers, endpoint["id"])
                                     if d["status"] == "succeeded"], 60, "the delivery",
                            interval=0.2, tail=lambda: log.read_text()[-3000:])
        finally:
            stop(worker)
        assert len(got.received) == 3 and len(set(got.ids())) == 1  # one message, three attempts
        payloads = _verified(endpoint["secret"], got)
        assert payloads[-1]["type"] == "job.cancelled" and payloads[-1]["data"]["job_id"] == job["id"]
        assert done[0]["attempts"] == 3 and done[0]["response_status"] == 200 and done[0]["error"] is None
        assert done[0]["latency_ms"] is not None and done[0]["id"] == got.ids()[0]
        forged = dict(got.received[0].headers, **{"webhook-signature": "v1,AAAA"})
        with pytest.raises(Exception, match="signature"):
            Verifier(endpoint["secret"]).verify(got.received[0].body, forged)


def test_a_delivery_survives_its_worker_being_killed(api: Server, deployment: Settings, tmp_path: Path,
                                                     tiny_teacher: Path) -> None:
    headers = {"Authorization": f"Bearer {new_key(deployment)}"}
    log = tmp_path / "webhooks.log"
    with receiver(answers=[500, "hold"]) as got:
        endpoint = _create_endpoint(api, headers, got.url, ["job.queued"])
        first = _webhook_worker(deployment, log)
        second: subprocess.Popen[bytes] | None = None
        try:
            job = _new_job(api, deployment, headers, tiny_teacher)
            # first attempt: 500; the retry is held open by the receiver while its worker is killed
            assert got.holding.wait(60), log.read_text()[-3000:]
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            got.release.set()
            assert _deliveries(api, headers, endpoint["id"])[0]["status"] == "pending"
            second = _webhook_worker(deployment, log)
            done = wait_for(lambda: [d for d in _deliveries(api, headers, endpoint["id"])
                                     if d["status"] == "succeeded"], 60, "the delivery after the restart",
                            interval=0.2, tail=lambda: log.read_text()[-3000:])
        finally:
            for process in (first, second):
                if process is not None and process.poll() is None:
                    stop(process)
        assert len(got.received) >= 3 and set(got.ids()) == {done[0]["id"]}
        assert all(p["data"]["job_id"] == job["id"] for p in _verified(endpoint["secret"], got))


def test_a_training_job_sends_its_lifecycle(api: Server, deployment: Settings, tmp_path: Path,
                                            tiny_teacher: Path) -> None:
    if not deployment.broker_url.startswith("redis"):
        pytest.skip("one training run is enough: the PostgreSQL + Redis deployment runs it")
    headers = {"Authorization": f"Bearer {new_key(deployment)}"}
    log = tmp_path / "workers.log"
    with receiver() as got:
        endpoint = _create_endpoint(api, headers, got.url,
                                    ["job.queued", "job.running", "job.succeeded", "checkpoint.created"])
        webhooks = _webhook_worker(deployment, log)
        trainer = start_worker(deployment, log, name="train", **_env(deployment))
        try:
            job = _new_job(api, deployment, headers, tiny_teacher, n_checkpoints=1)  # and an epoch checkpoint
            wait_for(lambda: "job.succeeded" in {json.loads(r.body)["type"] for r in list(got.received)}, 180,
                     "job.succeeded at the receiver", interval=0.5, tail=lambda: log.read_text()[-3000:])
        finally:
            stop(trainer)
            stop(webhooks)
        payloads = _verified(endpoint["secret"], got)
        types = [p["type"] for p in payloads]
        assert {"job.queued", "job.running", "job.succeeded", "checkpoint.created"} <= set(types)
        assert all(p["data"]["job_id"] == job["id"] for p in payloads)
        kinds = {p["data"]["kind"] for p in payloads if p["type"] == "checkpoint.created"}
        assert {"best", "final", "epoch-1"} <= kinds  # per-epoch checkpoints (n_checkpoints) are announced too


def test_pause_and_resume_send_signed_webhooks(api: Server, deployment: Settings, tmp_path: Path,
                                               tiny_teacher: Path) -> None:
    """Pause and resume, built beside webhooks: pausing a job sends `job.paused`, resuming it `job.queued` again,
    each signed, in that order, and a paused job reports no `estimated_finish_at`."""
    headers = {"Authorization": f"Bearer {new_key(deployment)}"}
    log = tmp_path / "webhooks.log"
    with receiver() as got:
        endpoint = _create_endpoint(api, headers, got.url, ["job.paused", "job.queued"])
        worker = _webhook_worker(deployment, log)
        try:
            job = _new_job(api, deployment, headers, tiny_teacher)  # no training worker: it stays queued
            paused = httpx.post(f"{api.url}/v1/jobs/{job['id']}/pause", headers=headers)
            assert paused.status_code == 200 and paused.json()["status"] == "paused", paused.text
            assert paused.json()["estimated_finish_at"] is None
            resumed = httpx.post(f"{api.url}/v1/jobs/{job['id']}/resume", headers=headers)
            assert resumed.status_code == 200 and resumed.json()["status"] == "queued", resumed.text
            wait_for(lambda: len(got.received) >= 3, 60, "three deliveries", interval=0.2,
                     tail=lambda: log.read_text()[-3000:])
        finally:
            stop(worker)
        payloads = _verified(endpoint["secret"], got)
    by_time = sorted(payloads, key=lambda p: p["timestamp"])
    assert [p["type"] for p in by_time] == ["job.queued", "job.paused", "job.queued"]
    assert all(p["data"]["job_id"] == job["id"] for p in payloads)
    assert by_time[1]["data"]["status"] == "paused" and "paused" in by_time[1]["data"]["message"]
