"""A real Celery worker subprocess runs real (tiny) jobs: PostgreSQL + Redis, and SQLite + the embedded
broker. Upload, submit, follow the SSE stream, download and load the checkpoint; cancel; failure."""

from __future__ import annotations

import io
import json
import secrets
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.store.settings import Settings
from tests.support.broker import forget_redis_queue
from tests.support.factories import LABELS, csv_bytes, make_tiny_teacher, sentiment_rows
from tests.support.servers import start_worker
from tests.support.service import REDIS_URL, follow, new_key, reachable, register_teacher, submit, upload

pytestmark = [pytest.mark.slow, pytest.mark.services]

class Stack:
    def __init__(self, settings: Settings, process: subprocess.Popen, log: Path) -> None:
        self.settings, self.process, self.log = settings, process, log

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


@pytest.fixture(scope="module", params=["postgresql+redis", "sqlite+embedded"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("stack")
    if request.param == "postgresql+redis":
        if not reachable(6379):
            pytest.skip("Redis is not listening on 127.0.0.1:6379")
        database_url, broker_url = request.getfixturevalue("postgresql_url"), REDIS_URL
    else:
        database_url, broker_url = f"sqlite:///{home / 'gkd.db'}", ""
    settings = Settings(home=home, database_url=database_url, broker_url=broker_url,
                        task_queue=f"test-{secrets.token_hex(4)}", sse_poll_seconds=0.2,
                        broker_polling_seconds=0.2)
    from app.store.db import upgrade

    upgrade(settings.database_url)
    log = home / "worker.log"
    process = start_worker(settings, log)
    stack = Stack(settings, process, log)
    yield stack
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    if settings.broker_url.startswith("redis"):
        forget_redis_queue(REDIS_URL, settings.task_queue)


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[TestClient]:
    with TestClient(create_app(stack.settings), raise_server_exceptions=False) as client:
        yield client


def test_job_succeeds_and_checkpoint_loads(stack: Stack, api: TestClient, tiny_teacher: Path,
                                           tmp_path: Path) -> None:
    headers = {"Authorization": f"Bearer {new_key(stack.settings)}"}
    teacher = register_teacher(stack.settings, headers, tiny_teacher)
    dataset = upload(api, headers, 48)
    dev_rows = sentiment_rows(16, seed=1)
    dev = api.post("/v1/datasets", headers=headers, files={"file": ("dev.csv", csv_bytes(dev_rows))}).json()["id"]
    # the fixed schedule, so a 6-step job on a random teacher still runs the gradient term (the guard is tested below)
    job = submit(api, headers, teacher, dataset, validation_dataset=dev, accuracy_guard=False)
    assert job["status"] == "queued" and job["validation_dataset"] == dev
    assert job["hyperparameters"]["temperature"] == 5.0  # defaults filled in

    events = follow(api, headers, job["id"])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), "seq must be gapless"
    statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
    assert statuses == ["queued", "running", "succeeded"], [e["message"] for e in events[-3:]] + [stack.log_tail()]
    metrics = [e["data"] for e in events if e["type"] == "metrics"]
    assert any({"loss", "kd", "ce", "grad", "lr", "step", "epoch"} <= set(m) for m in metrics)
    assert any({"accuracy", "macro_f1", "teacher_agreement", "saliency_agreement"} <= set(m) for m in metrics)
    # Every phase before the first step is an event on the stream, the teacher cache with its batches.
    first_step = next(i for i, e in enumerate(events) if e["type"] == "metrics")
    before = [e["data"] for e in events[:first_step] if e["type"] == "phase"]
    assert [p["phase"] for p in before if p["done"] == 0][:3] == ["validating", "loading_teacher", "validating"]
    cache = [p for p in before if p["phase"] == "teacher_cache" and p["detail"] == "train"]
    assert cache[-1]["done"] == cache[-1]["total"] > 0 and cache[-1]["unit"] == "batches", before
    assert before[-1]["phase"] == "training", before
    after = {e["data"]["phase"] for e in events[first_step:] if e["type"] == "phase"}
    assert {"evaluating", "packing"} <= after, after

    # Resume from Last-Event-ID: only what came after.
    with api.stream("GET", f"/v1/jobs/{job['id']}/events/stream",
                    headers={**headers, "Last-Event-ID": str(len(events) - 1)}) as response:
        tail = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert [e["seq"] for e in tail] == [len(events)]

    final = api.get(f"/v1/jobs/{job['id']}", headers=headers).json()
    assert final["status"] == "succeeded" and final["attempts"] == 1 and final["finished_at"]
    assert final["progress"]["step"] == final["progress"]["total_steps"] > 0
    assert final["progress"]["phase"]["phase"] == "packing", final["progress"]  # the last thing it did
    assert final["versions"]["torch"] and final["versions"]["transformers"]
    assert "accuracy" in final["metrics"]["best"]

    checkpoints = api.get(f"/v1/jobs/{job['id']}/checkpoints", headers=headers).json()["data"]
    kinds = {c["kind"]: c for c in checkpoints}
    assert "final" in kinds
    # One epoch, one evaluation (at its end): training ended on its best, so both rows share one archive.
    assert kinds["best"]["step"] == kinds["final"]["step"] == final["progress"]["total_steps"]
    assert kinds["best"]["sha256"] == kinds["final"]["sha256"]
    assert kinds["best"]["size_bytes"] == kinds["final"]["size_bytes"]
    assert kinds["best"]["id"] != kinds["final"]["id"]
    job_dir = stack.settings.storage / "jobs" / job["id"]
    stored = sorted(p.name for p in (job_dir / "checkpoints").iterdir())
    assert stored == ["best.tar.gz"], stored
    # The exported directories and the training state go once the job has ended (just after `succeeded`).
    deadline = time.monotonic() + 30
    while (job_dir / "work").exists():
        assert time.monotonic() < deadline, list((job_dir / "work").rglob("*"))
        time.sleep(0.1)
    chosen = kinds.get("best") or kinds["final"]
    content = api.get(f"/v1/jobs/{job['id']}/checkpoints/{chosen['id']}/content", headers=headers)
    assert content.status_code == 200
    import hashlib

    assert hashlib.sha256(content.content).hexdigest() == chosen["sha256"]
    target = tmp_path / "ckpt"
    with tarfile.open(fileobj=io.BytesIO(content.content), mode="r:gz") as archive:
        archive.extractall(target, filter="data")
    card_text = (target / "gkd_card.json").read_text()
    assert str(stack.settings.home) not in card_text, card_text  # names, not the server's paths
    card = json.loads(card_text)
    assert card["config"]["teacher"] and "output_dir" not in card["config"]["run"]

    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(target)).eval()
    assert model.config.num_hidden_layers == 1
    assert sorted(model.config.id2label.values()) == sorted(LABELS)

    # The downloaded model gives the accuracy the job reported for that checkpoint.
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(target))
    batch = tokenizer([r["text"] for r in dev_rows], truncation=True, max_length=16, padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        predicted = model(**batch).logits.argmax(-1).tolist()
    label_ids = model.config.label2id
    accuracy = sum(p == label_ids[r["label"]] for p, r in zip(predicted, dev_rows, strict=True)) / len(dev_rows)
    assert accuracy == pytest.approx(chosen["metrics"]["accuracy"], abs=1e-6)

    # Another tenant sees none of it.
    other = {"Authorization": f"Bearer {new_key(stack.settings)}"}
    assert api.get(f"/v1/jobs/{job['id']}", headers=other).status_code == 404
    assert api.get(f"/v1/jobs/{job['id']}/checkpoints/{chosen['id']}/content", headers=other).status_code == 404


def test_a_run_whose_gradient_term_never_starts_warns(stack: Stack, api: TestClient, tiny_teacher: Path) -> None:
    """The job still succeeds (its student is usable as kd's), but says so: an event, a flag in its metrics."""
    headers = {"Authorization": f"Bearer {new_key(stack.settings)}"}
    teacher = register_teacher(stack.settings, headers, tiny_teacher)
    dataset = upload(api, headers, 48)
    job = submit(api, headers, teacher, dataset, learning_rate=1e-9, gradient_start_ratio=0.9)
    events = follow(api, headers, job["id"])
    warnings = [e for e in events if e["type"] == "warning"]
    assert [w["data"]["code"] for w in warnings] == ["gradient_term_not_started"], stack.log_tail()
    assert "never started" in warnings[0]["message"]
    assert [e["data"]["status"] for e in events if e["type"] == "status"][-1] == "succeeded"
    assert warnings[0]["seq"] < events[-1]["seq"]  # before the terminal status
    final = api.get(f"/v1/jobs/{job['id']}", headers=headers).json()
    assert final["metrics"]["warnings"] == ["gradient_term_not_started"]


def test_cancel_while_running(stack: Stack, api: TestClient, tiny_teacher: Path) -> None:
    headers = {"Authorization": f"Bearer {new_key(stack.settings)}"}
    teacher = register_teacher(stack.settings, headers, tiny_teacher)
    dataset = upload(api, headers, 48)
    job = submit(api, headers, teacher, dataset, epochs=100)
    deadline = time.monotonic() + 120
    while True:
        events = api.get(f"/v1/jobs/{job['id']}/events", headers=headers).json()["data"]
        if any(e["type"] == "metrics" for e in events):
            break
        assert time.monotonic() < deadline, stack.log_tail()
        time.sleep(0.2)
    cancel = api.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
    assert cancel.status_code == 200 and cancel.json()["status"] in ("cancelling", "cancelled")
    events = follow(api, headers, job["id"], timeout=120)
    statuses = [(e["seq"], e["data"]["status"]) for e in events if e["type"] == "status"]
    assert [s for _, s in statuses] == ["queued", "running", "cancelling", "cancelled"], stack.log_tail()
    cancel_seq = statuses[2][0]
    assert not [e for e in events if e["type"] == "metrics" and e["seq"] > cancel_seq]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    again = api.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
    assert again.status_code == 409 and again.json()["error"]["type"] == "conflict_error"


def test_training_error_fails_the_job(stack: Stack, api: TestClient, tmp_path: Path) -> None:
    headers = {"Authorization": f"Bearer {new_key(stack.settings)}"}
    teacher_dir = make_tiny_teacher(tmp_path / "broken")
    teacher = register_teacher(stack.settings, headers, teacher_dir, name="broken")
    (teacher_dir / "model.safetensors").write_bytes(b"this is not a safetensors file")
    dataset = upload(api, headers, 16)
    job = submit(api, headers, teacher, dataset)
    events = follow(api, headers, job["id"], timeout=120)
    assert events[-1]["data"]["status"] == "failed", stack.log_tail()
    final = api.get(f"/v1/jobs/{job['id']}", headers=headers).json()
    assert final["status"] == "failed" and final["error"]
    assert final["finished_at"]


def test_a_job_with_export_makes_onnx_checkpoints(stack: Stack, api: TestClient, tiny_teacher: Path,
                                                  tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    headers = {"Authorization": f"Bearer {new_key(stack.settings)}"}
    teacher = register_teacher(stack.settings, headers, tiny_teacher)
    dataset = upload(api, headers, 32)
    body = {"teacher": teacher, "student": {"num_layers": 1}, "training_dataset": dataset,
            "hyperparameters": {"epochs": 1, "batch_size": 8, "max_length": 16}, "export": ["onnx", "onnx-int8"]}
    job = api.post("/v1/jobs", headers=headers, json=body).json()
    assert job["export"] == ["onnx", "onnx-int8"]
    events = follow(api, headers, job["id"])
    statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
    assert statuses == ["queued", "running", "succeeded"], stack.log_tail()
    kinds = {c["kind"]: c for c in api.get(f"/v1/jobs/{job['id']}/checkpoints", headers=headers).json()["data"]}
    assert {"best", "final", "best-onnx", "best-onnx-int8"} <= set(kinds), kinds
    for kind in ("best-onnx", "best-onnx-int8"):
        row = kinds[kind]
        assert row["sha256"] != kinds["best"]["sha256"] and row["size_bytes"] > 0
        assert {"accuracy", "macro_f1", "teacher_agreement", "student_agreement", "ms_per_example_batch1",
                "examples_per_second_batch32"} <= set(row["metrics"]), row["metrics"]
    assert kinds["best-onnx"]["metrics"]["student_agreement"] == 1.0
    assert kinds["best-onnx"]["metrics"]["accuracy"] == pytest.approx(kinds["best"]["metrics"]["accuracy"])
    content = api.get(f"/v1/jobs/{job['id']}/checkpoints/{kinds['best-onnx-int8']['id']}/content", headers=headers)
    target = tmp_path / "int8"
    with tarfile.open(fileobj=io.BytesIO(content.content), mode="r:gz") as archive:
        archive.extractall(target, filter="data")
    card_text = (target / "gkd_card.json").read_text()  # issue 20, finding 12: it held the server's path
    assert str(stack.settings.home) not in card_text, card_text
    assert json.loads(card_text)["source"]["directory"] == "best"
    from gkd.deploy.predictors import load_predictor

    predictor = load_predictor(target)
    assert predictor.runtime == "onnx-int8" and sorted(predictor.labels) == sorted(LABELS)


def test_a_job_with_a_pruned_vocabulary_delivers_a_smaller_checkpoint_that_loads(
        stack: Stack, api: TestClient, tiny_teacher: Path, tmp_path: Path) -> None:
    headers = {"Authorization": f"Bearer {new_key(stack.settings)}"}
    teacher = register_teacher(stack.settings, headers, tiny_teacher)
    rows = [r for r in sentiment_rows(40, seed=3) if "superb" not in r["text"]]  # a word the student never sees
    dataset = api.post("/v1/datasets", headers=headers, files={"file": ("train.csv", csv_bytes(rows))}).json()["id"]
    body = {"teacher": teacher, "student": {"num_layers": 1, "vocabulary": "training_data"},
            "training_dataset": dataset, "hyperparameters": {"epochs": 1, "batch_size": 8, "max_length": 16}}
    job = api.post("/v1/jobs", headers=headers, json=body).json()
    assert job["student"]["vocabulary"] == "training_data"
    statuses = [e["data"]["status"] for e in follow(api, headers, job["id"]) if e["type"] == "status"]
    assert statuses == ["queued", "running", "succeeded"], stack.log_tail()
    kinds = {c["kind"]: c for c in api.get(f"/v1/jobs/{job['id']}/checkpoints", headers=headers).json()["data"]}
    content = api.get(f"/v1/jobs/{job['id']}/checkpoints/{kinds['best']['id']}/content", headers=headers)
    target = tmp_path / "best"
    with tarfile.open(fileobj=io.BytesIO(content.content), mode="r:gz") as archive:
        archive.extractall(target, filter="data")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(target))
    full = AutoTokenizer.from_pretrained(str(tiny_teacher))
    assert len(tokenizer) < len(full) and "superb" not in tokenizer.get_vocab()
    model = AutoModelForSequenceClassification.from_pretrained(str(target))
    assert model.config.vocab_size == len(tokenizer)
    assert model(**tokenizer(["a superb film"], return_tensors="pt")).logits.shape == (1, 2)
