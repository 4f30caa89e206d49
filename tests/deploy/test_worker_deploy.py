"""Worker deployment behaviour: queues per device kind, the API's /metrics, the worker's metrics text, and
a draining worker (SIGTERM) that saves the training state and hands the job back, so another worker
resumes it with no progress lost (real worker subprocesses on SQLite + the embedded broker)."""

from __future__ import annotations

import secrets
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.store.db import session_scope, upgrade
from app.store.orm import Job, JobEvent
from app.store.queue import queue_for
from app.store.settings import Settings
from tests.support.factories import csv_bytes, sentiment_rows
from tests.support.service import new_key, register_teacher
from worker.celery_app import worker_kinds, worker_queues
from worker.metrics import WorkerMetrics, serve_metrics


def test_queues_per_device_kind(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, task_queue="train", gpu_task_queue="train-gpu")
    assert queue_for(settings, "cpu") == "train" and queue_for(settings, "gpu") == "train-gpu"
    assert queue_for(settings, "auto") == "train" == queue_for(settings, None)
    assert queue_for(settings.model_copy(update={"auto_device": "gpu"}), "auto") == "train-gpu"
    assert worker_kinds(settings.model_copy(update={"worker_device": "cuda"})) == ["gpu"]
    assert worker_kinds(settings.model_copy(update={"worker_device": "cpu"})) == ["cpu"]
    assert worker_queues(settings.model_copy(update={"worker_queues": "cpu, gpu"})) == ["train", "train-gpu"]
    with pytest.raises(ValueError):
        worker_kinds(settings.model_copy(update={"worker_queues": "tpu"}))


def test_a_webhook_worker_consumes_only_deliveries_with_threads(tmp_path: Path) -> None:
    from worker.cli import worker_argv

    settings = Settings(home=tmp_path, task_queue="train", webhook_queue="hooks", webhook_concurrency=3,
                        worker_queues="webhooks")
    assert worker_queues(settings) == ["hooks"]
    argv = worker_argv(settings)
    assert "--queues=hooks" in argv and "--pool=threads" in argv and "--concurrency=3" in argv
    training = worker_argv(settings.model_copy(update={"worker_queues": "cpu"}))
    assert "--queues=train" in training and "--pool=solo" in training  # deliveries never wait behind a job


def test_worker_metrics_text_and_endpoint() -> None:
    metrics = WorkerMetrics()
    metrics.step(None)
    metrics.step(0.25)
    metrics.job("succeeded")
    text = metrics.render()
    assert "gkd_worker_training_steps_total 2\n" in text
    assert "gkd_worker_steps_per_second 4.000000\n" in text
    assert 'gkd_worker_jobs_total{status="succeeded"} 1\n' in text
    from gkd.training.parallel import free_port

    port = free_port()
    server = serve_metrics(port, host="127.0.0.1")
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert body.startswith("# HELP gkd_worker_training_steps_total")
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).status == 200
    finally:
        server.shutdown()


def test_api_metrics_and_job_device_routing(tmp_path: Path, sqlite_url: str, tiny_teacher: Path) -> None:
    settings = Settings(home=tmp_path, database_url=sqlite_url, broker_url="memory://", migrate_on_start=False,
                        task_queue=f"cpu-{secrets.token_hex(3)}", gpu_task_queue=f"gpu-{secrets.token_hex(3)}")
    headers = {"Authorization": f"Bearer {new_key(settings)}"}
    teacher = register_teacher(settings, headers, tiny_teacher)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        sent: list[dict] = []
        client.app.state.celery().send_task = lambda name, **kw: sent.append(kw)  # type: ignore[attr-defined]
        upload = client.post("/v1/datasets", headers=headers,
                             files={"file": ("t.csv", csv_bytes(sentiment_rows(16)), "text/csv")}).json()
        body = {"teacher": teacher, "training_dataset": upload["id"], "student": {"num_layers": 1}}
        gpu = client.post("/v1/jobs", headers=headers, json={**body, "device": "gpu", "devices": 2}).json()
        auto = client.post("/v1/jobs", headers=headers, json=body).json()
        assert (gpu["device"], gpu["devices"], auto["device"], auto["devices"]) == ("gpu", 2, "auto", 1)
        assert [s["queue"] for s in sent] == [settings.gpu_task_queue, settings.task_queue]
        bad = client.post("/v1/jobs", headers=headers, json={**body, "devices": 0})
        assert bad.status_code in (400, 422) and bad.json()["error"]["param"] == "devices"

        response = client.get("/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        text = response.text
        assert "# TYPE gkd_jobs gauge" in text and 'gkd_jobs{status="running"} ' in text
        queued = int(next(line for line in text.splitlines() if line.startswith('gkd_jobs{status="queued"}'))
                     .split()[-1])
        assert queued >= 2
        assert 'gkd_jobs_queued{device="gpu"} ' in text and "gkd_oldest_queued_job_age_seconds " in text


@pytest.mark.slow
def test_sigterm_drains_the_job_and_another_worker_resumes_it(tmp_path: Path, tiny_teacher: Path) -> None:
    from tests.support.servers import start_worker

    home = tmp_path / "home"
    settings = Settings(home=home, database_url=f"sqlite:///{home / 'gkd.db'}", broker_url="",
                        task_queue=f"test-{secrets.token_hex(3)}", broker_polling_seconds=0.2)
    settings.ensure_dirs()
    upgrade(settings.database_url)
    headers = {"Authorization": f"Bearer {new_key(settings)}"}
    teacher = register_teacher(settings, headers, tiny_teacher)
    log = tmp_path / "worker.log"
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        upload = client.post("/v1/datasets", headers=headers,
                             files={"file": ("t.csv", csv_bytes(sentiment_rows(240)), "text/csv")}).json()
        first = start_worker(settings, log, GKD_METRICS_EVERY_STEPS="5")
        second: subprocess.Popen | None = None
        try:
            job = client.post("/v1/jobs", headers=headers, json={
                "teacher": teacher, "training_dataset": upload["id"], "method": "gradient_kd",
                "student": {"num_layers": 1}, "device": "cpu",
                "hyperparameters": {"epochs": 3, "batch_size": 2, "max_length": 16}}).json()
            deadline = time.monotonic() + 60
            while client.get(f"/v1/jobs/{job['id']}", headers=headers).json()["progress"]["step"] < 10:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                assert first.poll() is None, log.read_text()[-3000:]
                time.sleep(0.2)
            first.send_signal(signal.SIGTERM)
            assert first.wait(timeout=60) == 0, log.read_text()[-3000:]
            drained = client.get(f"/v1/jobs/{job['id']}", headers=headers).json()
            assert drained["status"] == "queued", (drained, log.read_text()[-3000:])
            assert drained["attempts"] == 0 and drained["progress"]["step"] >= 10
            state = home / "storage" / "jobs" / job["id"] / "work" / "state" / "training_state.pt"
            assert state.is_file()

            second = start_worker(settings, log)
            deadline = time.monotonic() + 120
            while client.get(f"/v1/jobs/{job['id']}", headers=headers).json()["status"] not in (
                    "succeeded", "failed", "cancelled"):
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
            done = client.get(f"/v1/jobs/{job['id']}", headers=headers).json()
            assert done["status"] == "succeeded", (done, log.read_text()[-3000:])
            assert done["attempts"] == 1  # the drained attempt was handed back, not used up
        finally:
            for process in (first, second):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()
    with session_scope(settings.database_url) as session:
        events = session.query(JobEvent).filter(JobEvent.job_id == job["id"]).order_by(JobEvent.seq).all()
        statuses = [e.data.get("status") for e in events if e.type == "status"]
        messages = [e.message for e in events if e.type != "metrics"]
        assert statuses == ["queued", "running", "queued", "running", "succeeded"], messages
        resumed = [e for e in events if e.type == "log" and "resumed from step" in e.message]
        assert resumed and resumed[0].data["resumed_from_step"] >= 10
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert session.get(Job, job["id"]).worker is not None
