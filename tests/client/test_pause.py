"""Pause and resume through the sync and async clients and the `gkd jobs` CLI, against a real server and worker:
each pauses a running job until the worker let it go, each resumes it, the job continues past the step it paused
at, `list --status paused` finds it, cancel ends a paused job, resume of a finished one is a 409, and `watch`
shows the pause. (Bit-exactness of the resumed weights: tests/service/test_pause_resume.py.)"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from gkd import client as gc
from gkd.cli import main
from tests.client.conftest import write_rows
from tests.client.test_jobs_flow import TINY
from tests.support.servers import Server, wait_for
from tests.support.service import new_key, register_teacher

pytestmark = pytest.mark.slow


def _cli(server: Server, key: str, *args: str) -> Result:
    """`gkd ARGS` in this process, against the real server."""
    return CliRunner().invoke(main, list(args), env={"GKD_BASE_URL": server.url, "GKD_API_KEY": key})


def _paused(client: gc.Client, job_id: str) -> gc.Job:
    return wait_for(lambda: (job := client.jobs.get(job_id)).status == "paused" and job, 60, "the job to pause",
                    interval=0.1)


def _training_past(client: gc.Client, job_id: str, step: int) -> gc.Job:
    return wait_for(lambda: (job := client.jobs.get(job_id)).status == "running" and job.progress.step > step
                    and job, 120, f"the job to train past step {step}", interval=0.1)


def test_pause_and_resume_from_clients_and_cli(server: Server, worker: object, tiny_teacher: Path,
                                               tmp_path: Path) -> None:
    key = new_key(server.settings)
    with gc.Client(server.url, key, timeout=20) as client:
        teacher = register_teacher(server.settings, key, tiny_teacher)
        train = client.datasets.upload(write_rows(tmp_path / "train.csv", 64))
        job = client.jobs.create(teacher=teacher, training_dataset=train.id, student={"num_layers": 1},
                                 hyperparameters={**TINY, "epochs": 100})
        running = _training_past(client, job.id, 1)
        assert isinstance(running.estimated_finish_at, datetime)  # the client parses the running job's estimate

        assert client.jobs.pause(job.id).status in ("pausing", "paused")  # sync client
        parked = _paused(client, job.id)
        stopped_at = parked.progress.step
        assert parked.estimated_finish_at is None  # nothing runs: no finish time
        listed = _cli(server, key, "jobs", "list", "--status", "paused", "--json")
        assert listed.exit_code == 0, listed.output
        assert job.id in listed.stdout

        resumed = _cli(server, key, "jobs", "resume", job.id)  # CLI
        assert resumed.exit_code == 0, resumed.output
        assert resumed.stdout.strip() == f"{job.id} queued"
        _training_past(client, job.id, stopped_at)  # it goes on from where it stopped

        paused = _cli(server, key, "jobs", "pause", job.id, "--json")
        assert paused.exit_code == 0, paused.output
        assert json.loads(paused.stdout)["status"] in ("pausing", "paused")
        _paused(client, job.id)

        async def resume_then_pause() -> tuple[str, str]:  # async client
            async with gc.AsyncClient(server.url, key, timeout=20) as aclient:
                again = await aclient.jobs.resume(job.id)
                return again.status, (await aclient.jobs.pause(job.id)).status

        assert asyncio.run(resume_then_pause()) in {("queued", "paused"), ("queued", "pausing")}
        _paused(client, job.id)

        assert client.jobs.cancel(job.id).status == "cancelled"  # no worker holds a paused job
        with pytest.raises(gc.ConflictError):
            client.jobs.resume(job.id)
        refused = _cli(server, key, "jobs", "resume", job.id)
        assert refused.exit_code == 1 and "409" in refused.stderr

        watched = _cli(server, key, "jobs", "watch", job.id)
        assert watched.exit_code == 1  # it ended cancelled
        assert f"job paused at step {stopped_at}" in watched.stderr and "job resumed" in watched.stderr
