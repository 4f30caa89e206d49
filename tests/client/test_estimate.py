"""`jobs.estimate(...)` (sync and async) and `gkd jobs submit --dry-run` against a real API server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import gkd.client as gc
from tests.client.conftest import write_rows
from tests.support.servers import REPO, Server
from tests.support.service import new_key, register_teacher

TINY = {"epochs": 2, "batch_size": 8, "max_length": 16}


def test_sync_and_async_estimates_store_nothing(server: Server, tiny_teacher: Path, tmp_path: Path) -> None:
    key = new_key(server.settings)
    teacher = register_teacher(server.settings, key, tiny_teacher)
    with gc.Client(server.url, key, timeout=20) as client:
        train = client.datasets.upload(write_rows(tmp_path / "train.csv", 20))
        estimate = client.jobs.estimate(teacher=teacher, training_dataset=train.id, student={"num_layers": 1},
                                        hyperparameters=TINY, device="cpu")
        assert isinstance(estimate, gc.JobEstimate)
        assert estimate.total_steps == 6 and estimate.steps_per_epoch == 3  # 20 rows in batches of 8, 2 epochs
        assert list(estimate.estimated_seconds) == ["cpu"] and estimate.basis["cpu"] in ("default", "measured")
        with pytest.raises(gc.InvalidRequestError) as refused:  # the create's own error
            client.jobs.estimate(teacher=teacher, training_dataset=train.id, student={"num_layers": 9})
        assert refused.value.param == "student.num_layers"
        assert client.jobs.list().to_list() == []

    async def flow() -> gc.JobEstimate:
        async with gc.AsyncClient(server.url, key, timeout=20) as client:
            return await client.jobs.estimate(teacher=teacher, training_dataset=train.id,
                                              student={"num_layers": 1}, hyperparameters=TINY)

    assert asyncio.run(flow()).total_steps == 6


def _gkd(server: Server, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GKD_BASE_URL": server.url, "GKD_API_KEY": key}
    return subprocess.run([sys.executable, "-m", "gkd.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def test_cli_dry_run(server: Server, tiny_teacher: Path, tmp_path: Path) -> None:
    key = new_key(server.settings)
    register_teacher(server.settings, key, tiny_teacher)
    rows = write_rows(tmp_path / "train.csv", 16)
    with gc.Client(server.url, key, timeout=20) as client:
        dataset = client.datasets.upload(rows).id
    common = ("--teacher", "tiny", "--train", dataset, "--layers", "1", "--set", "batch_size=8", "--set",
              "max_length=16", "--set", "epochs=1", "--device", "auto", "--dry-run")
    as_json = _gkd(server, key, "jobs", "--json", "submit", *common)
    assert as_json.returncode == 0, as_json.stderr
    estimate = json.loads(as_json.stdout)
    assert estimate["object"] == "job.estimate" and estimate["total_steps"] == 2
    assert set(estimate["estimated_seconds"]) == {"cpu", "gpu"}
    human = _gkd(server, key, "jobs", "submit", *common)
    assert human.returncode == 0 and human.stdout.startswith("2 steps (2 per epoch)")
    assert "cpu: about" in human.stdout and "gpu: about" in human.stdout
    local_file = _gkd(server, key, "jobs", "submit", "--teacher", "tiny", "--train", str(rows), "--dry-run")
    assert local_file.returncode == 2 and "a dry run stores nothing" in local_file.stderr
    with gc.Client(server.url, key, timeout=20) as client:
        assert client.jobs.list().to_list() == [] and len(client.datasets.list().to_list()) == 1
