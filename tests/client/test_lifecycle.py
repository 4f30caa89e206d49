"""A job's result files and deletion through the clients and the CLI, against a real server and worker: the
metrics CSV holds the numbers of the metrics events, DELETE is refused while a job is active and, once it has
finished, leaves no row and no file behind."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from pathlib import Path

import pytest

from gkd import client as gc
from tests.client.conftest import write_rows
from tests.client.test_jobs_flow import TINY, _gkd
from tests.support.servers import Server
from tests.support.service import new_key, register_teacher

pytestmark = pytest.mark.slow


def _run(client: gc.Client, teacher: str, tmp: Path, **hyper: object) -> gc.Job:
    train = client.datasets.upload(write_rows(tmp / "train.csv", 32))
    dev = client.datasets.upload(write_rows(tmp / "dev.csv", 16, seed=1))
    return client.jobs.create(teacher=teacher, training_dataset=train.id, validation_dataset=dev.id,
                              student={"num_layers": 1}, hyperparameters={**TINY, **hyper})


def _files_gone(server: Server, job_id: str, timeout: float = 30) -> bool:
    job_dir = server.settings.storage / "jobs" / job_id
    deadline = time.monotonic() + timeout
    while job_dir.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not job_dir.exists()


def test_metrics_csv_and_delete(server: Server, worker: object, tiny_teacher: Path, tmp_path: Path) -> None:
    key = new_key(server.settings)
    with gc.Client(server.url, key, timeout=20) as client:
        teacher = register_teacher(server.settings, key, tiny_teacher)
        job = _run(client, teacher, tmp_path)
        events = list(client.jobs.stream(job.id))
        assert client.jobs.get(job.id).status == "succeeded"
        metrics = [e for e in events if e.type == "metrics"]
        text = client.jobs.metrics_csv(job.id, tmp_path / "out" / "metrics.csv")
        assert (tmp_path / "out" / "metrics.csv").read_text() == text
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [int(r["seq"]) for r in rows] == [e.seq for e in metrics]
        for row, event in zip(rows, metrics, strict=True):
            assert row["kind"] == ("eval" if event.data.get("eval") else "step")
            for name in ("loss", "accuracy"):
                if event.data.get(name) is not None:
                    assert float(row[name]) == pytest.approx(event.data[name])
        assert any(r["kind"] == "eval" for r in rows) and any(r["kind"] == "step" for r in rows)

        cli = _gkd(server, key, "jobs", "metrics", job.id)
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout == text

        assert (server.settings.storage / "jobs" / job.id / "checkpoints").is_dir()
        deleted = _gkd(server, key, "jobs", "delete", job.id, "--json")
        assert deleted.returncode == 0, deleted.stderr
        assert json.loads(deleted.stdout) == {"id": job.id, "object": "job", "deleted": True}
        assert _files_gone(server, job.id)
        with pytest.raises(gc.NotFoundError):
            client.jobs.get(job.id)
        with pytest.raises(gc.NotFoundError):
            client.jobs.metrics_csv(job.id)


def test_delete_refused_while_active_then_allowed(server: Server, worker: object, tiny_teacher: Path,
                                                  tmp_path: Path) -> None:
    key = new_key(server.settings)
    with gc.Client(server.url, key, timeout=20) as client:
        teacher = register_teacher(server.settings, key, tiny_teacher)
        job = _run(client, teacher, tmp_path, epochs=50)
        with pytest.raises(gc.ConflictError):
            client.jobs.delete(job.id)
        refused = _gkd(server, key, "jobs", "delete", job.id)
        assert refused.returncode == 1 and "409" in refused.stderr
        client.jobs.cancel(job.id)
        assert client.jobs.wait(job.id, timeout=120).status == "cancelled"

    async def delete() -> gc.Deleted:
        async with gc.AsyncClient(server.url, key, timeout=20) as client:
            assert (await client.jobs.metrics_csv(job.id)).startswith("seq,created_at,kind,step,epoch")
            return await client.jobs.delete(job.id)

    assert asyncio.run(delete()).deleted
    assert _files_gone(server, job.id)


def test_epoch_checkpoints_and_continue(server: Server, worker: object, tiny_teacher: Path, tmp_path: Path) -> None:
    key = new_key(server.settings)
    with gc.Client(server.url, key, timeout=20) as client:
        teacher = register_teacher(server.settings, key, tiny_teacher)
        first = _run(client, teacher, tmp_path, epochs=3, n_checkpoints=2)
        events = list(client.jobs.stream(first.id))
        assert client.jobs.get(first.id).status == "succeeded", [e.message for e in events]
        kinds = {c.kind: c for c in client.checkpoints.list(first.id)}
        assert {"epoch-2", "epoch-3"} <= set(kinds) and "epoch-1" not in kinds
        stored = server.settings.storage / "jobs" / first.id / "checkpoints"
        assert not (stored / "epoch-1.tar.gz").exists() and (stored / "epoch-3.tar.gz").is_file()
        pruned = [e.data for e in events if e.type == "checkpoint" and e.data.get("pruned")]
        assert pruned and pruned[0]["kind"] == "epoch-3"
        epoch2 = client.checkpoints.download(first.id, kinds["epoch-2"].id, tmp_path / "epoch-2")
        assert (epoch2 / "model.safetensors").is_file()
        before = {c.id: c.sha256 for c in client.checkpoints.list(first.id)}

        second = client.jobs.create(teacher=teacher, training_dataset=first.training_dataset,
                                    student={"init": {"checkpoint": kinds["epoch-2"].id}},
                                    hyperparameters={**TINY, "epochs": 1})
        assert second.student["num_layers"] == 1
        done = client.jobs.wait(second.id, timeout=180)
        assert done.status == "succeeded", done.error
        assert {c.id: c.sha256 for c in client.checkpoints.list(first.id)} == before  # the old job is unchanged
        log = [e.message for e in client.jobs.events(second.id)]
        assert any("training started" in m for m in log)
