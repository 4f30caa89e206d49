"""A real Celery worker runs a tiny job: submit, stream to success, download, load with transformers; the SSE
stream survives dropped connections and a restarted API server; retries bridge a server restart; AsyncClient;
the CLI through its entry point."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gkd import client as gc
from tests.client.conftest import write_rows
from tests.support.servers import REPO, Server
from tests.support.service import new_key, register_teacher

pytestmark = pytest.mark.slow

TINY = {"epochs": 1, "batch_size": 8, "max_length": 16}


class Finished:
    """One succeeded job shared by the tests of this module."""

    def __init__(self, key: str, job: gc.Job, events: list[gc.JobEvent], teacher: str) -> None:
        self.key, self.job, self.events, self.teacher = key, job, events, teacher


@pytest.fixture(scope="module")
def finished(server: Server, worker: object, tiny_teacher: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Finished:
    key = new_key(server.settings)
    tmp = tmp_path_factory.mktemp("flow")
    with gc.Client(server.url, key, timeout=20) as client:
        teacher = register_teacher(server.settings, key, tiny_teacher)
        train = client.datasets.upload(write_rows(tmp / "train.csv", 32))
        dev = client.datasets.upload(write_rows(tmp / "dev.csv", 16, seed=1))
        job = client.jobs.create(teacher=teacher, training_dataset=train.id, validation_dataset=dev.id,
                                 student={"num_layers": 1}, hyperparameters=TINY, name="tiny")
        assert job.status == "queued" and job.hyperparameters["temperature"] == 5.0
        events = list(client.jobs.stream(job.id))
        final = client.jobs.get(job.id)
    return Finished(key, final, events, teacher)


def test_job_streams_to_success_and_downloads(server: Server, finished: Finished, tmp_path: Path) -> None:
    events = finished.events
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    statuses = [e.data["status"] for e in events if e.type == "status"]
    worker_log = server.settings.home / "worker.log"
    assert statuses == ["queued", "running", "succeeded"], worker_log.read_text()[-3000:]
    assert events[-1].is_terminal and finished.job.status == "succeeded"
    with gc.Client(server.url, finished.key) as client:
        assert client.jobs.wait(finished.job.id, timeout=5).status == "succeeded"
        checkpoints = {c.kind: c for c in client.checkpoints.list(finished.job.id)}
        chosen = checkpoints.get("best") or checkpoints["final"]
        seen: list[tuple[int, int | None]] = []
        path = client.checkpoints.download(finished.job.id, chosen.id, tmp_path / "student",
                                           progress=lambda received, total: seen.append((received, total)))
    assert path == (tmp_path / "student").resolve() and (path / "gkd_card.json").is_file()
    received = [r for r, _ in seen]
    assert received[0] == 0 and received == sorted(received) and len(seen) >= 2
    assert seen[-1] == (chosen.size_bytes, chosen.size_bytes)  # every byte, against the announced total
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".gkd-download-")]  # temp file removed

    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(path))
    assert model.config.num_hidden_layers == 1


def test_download_refuses_a_bad_checksum(server: Server, finished: Finished, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    class Tamper(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = super().handle_request(request)
            if request.url.path.endswith("/content"):
                response.headers["X-Checksum-SHA256"] = "0" * 64
            return response

    with gc.Client(server.url, finished.key, transport=Tamper()) as client:
        chosen = next(iter(client.checkpoints.list(finished.job.id)))
        with pytest.raises(gc.ChecksumError):
            client.checkpoints.download(finished.job.id, chosen.id, tmp_path / "x")
    assert not (tmp_path / "x").exists()


class DroppingTransport(httpx.HTTPTransport):
    """Breaks each of the first `drops` event streams after `after` messages (as a flaky proxy would)."""

    def __init__(self, after: int, drops: int) -> None:
        super().__init__()
        self.after, self.drops, self.streams, self.last_event_ids = after, drops, 0, []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if not request.url.path.endswith("/events/stream"):
            return response
        self.streams += 1
        self.last_event_ids.append(request.headers.get("last-event-id"))
        if self.streams > self.drops:
            return response
        inner, after = response.stream, self.after

        class Broken(httpx.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                buffer, sent = b"", 0
                for chunk in inner:
                    buffer += chunk
                    while b"\n\n" in buffer:
                        message, buffer = buffer.split(b"\n\n", 1)
                        yield message + b"\n\n"
                        if b"data:" in message:
                            sent += 1
                            if sent >= after:
                                raise httpx.ReadError("connection dropped by the test")

            def close(self) -> None:
                inner.close()

        return httpx.Response(response.status_code, headers=response.headers, stream=Broken(),
                              request=request, extensions=response.extensions)


def test_stream_reconnects_without_loss_or_duplicates(server: Server, finished: Finished) -> None:
    transport = DroppingTransport(after=2, drops=3)
    with gc.Client(server.url, finished.key, transport=transport) as client:
        seqs = [e.seq for e in client.jobs.stream(finished.job.id)]
    assert seqs == [e.seq for e in finished.events]
    assert transport.streams == 4
    assert transport.last_event_ids == [None, "2", "4", "6"]
    with gc.Client(server.url, finished.key) as client:  # resuming after the end returns at once
        assert list(client.jobs.stream(finished.job.id, last_event_id=seqs[-1])) == []
        assert [e.seq for e in client.jobs.stream(finished.job.id, last_event_id=seqs[-2])] == [seqs[-1]]


def test_stream_survives_an_api_server_restart(spare_server: Server, worker: object, finished: Finished,
                                               tiny_teacher: Path, tmp_path: Path) -> None:
    spare_server.start()
    with gc.Client(spare_server.url, finished.key, timeout=20) as client:
        train = client.datasets.upload(write_rows(tmp_path / "t.csv", 32))
        job = client.jobs.create(teacher=finished.teacher, training_dataset=train, student={"num_layers": 1},
                                 hyperparameters={**TINY, "epochs": 6})
        seqs, restarted = [], False
        for event in client.jobs.stream(job.id):
            seqs.append(event.seq)
            if not restarted and event.type == "status" and event.data["status"] == "running":
                spare_server.stop(kill=True)
                spare_server.start(wait=False)
                restarted = True
        final = client.jobs.get(job.id)
        listed = [e.seq for e in client.jobs.events(job.id)]
    assert restarted and final.status == "succeeded"
    assert seqs == listed == list(range(1, len(listed) + 1))


def test_request_retried_until_the_server_is_back(spare_server: Server, api_key: str) -> None:
    spare_server.start()
    spare_server.stop()
    timer = threading.Timer(1.0, spare_server.start, kwargs={"wait": False})
    timer.start()
    try:
        with gc.Client(spare_server.url, api_key, max_retries=6, timeout=5) as client:
            started = time.monotonic()
            assert list(client.datasets.list()) == []
            assert time.monotonic() - started >= 0.9
    finally:
        timer.join()
    spare_server.stop()
    with gc.Client(spare_server.url, api_key, max_retries=0) as client, pytest.raises(gc.APIConnectionError):
        client.datasets.get("ds_x")


def test_async_client(server: Server, finished: Finished, tmp_path: Path) -> None:
    async def flow() -> None:
        async with gc.AsyncClient(server.url, finished.key, timeout=20) as client:
            assert (await client.health())["status"] == "ok"
            job = await client.jobs.get(finished.job.id)
            assert job.status == "succeeded"
            assert [e.seq async for e in client.jobs.stream(job.id)] == [e.seq for e in finished.events]
            assert [e.seq async for e in client.jobs.events(job.id, limit=3)] == [e.seq for e in finished.events]
            assert finished.job.id in [j.id async for j in client.jobs.list(limit=1)]
            assert (await client.models.find("tiny")).id == finished.teacher
            checkpoint = (await client.checkpoints.list(job.id).to_list())[0]
            seen: list[tuple[int, int | None]] = []
            path = await client.checkpoints.download(job.id, checkpoint.id, tmp_path / "async",
                                                     progress=lambda received, total: seen.append((received, total)))
            assert (path / "config.json").is_file()
            assert seen[0][0] == 0 and seen[-1] == (checkpoint.size_bytes, checkpoint.size_bytes)
            dataset = await client.datasets.upload(write_rows(tmp_path / "a.csv", 8))
            assert (await client.datasets.get(dataset.id)).rows == 8
            with pytest.raises(gc.NotFoundError):
                await client.jobs.get("job_missing")
            with pytest.raises(gc.ConflictError):
                await client.jobs.cancel(job.id)

    asyncio.run(flow())


def _gkd(server: Server, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GKD_BASE_URL": server.url, "GKD_API_KEY": key}
    return subprocess.run([str(REPO / ".venv" / "bin" / "gkd"), *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def test_cli(server: Server, finished: Finished, tmp_path: Path) -> None:
    key, job_id = finished.key, finished.job.id
    upload = _gkd(server, key, "datasets", "upload", str(write_rows(tmp_path / "c.csv", 8)), "--name", "cli",
                  "--json")
    assert upload.returncode == 0, upload.stderr
    dataset = json.loads(upload.stdout)
    listed = _gkd(server, key, "datasets", "list", "--json")
    assert listed.returncode == 0 and dataset["id"] in [d["id"] for d in json.loads(listed.stdout)["data"]]
    models = _gkd(server, key, "models", "list", "--json")
    assert models.returncode == 0 and finished.teacher in [m["id"] for m in json.loads(models.stdout)["data"]]
    watched = _gkd(server, key, "jobs", "watch", job_id, "--json")
    assert watched.returncode == 0, watched.stderr
    lines = [json.loads(line) for line in watched.stdout.splitlines()]
    assert lines[-1]["status"] == "succeeded" and len(lines) == len(finished.events) + 1
    dest = tmp_path / "cli-student"
    download = _gkd(server, key, "jobs", "download", job_id, "--kind", "final", "--dest", str(dest))
    assert download.returncode == 0, download.stderr
    assert (dest / "model.safetensors").is_file()
    assert "final ckpt_" in download.stderr and "100%" in download.stderr  # the byte progress bar
    # Human output, errors and exit status.
    table = _gkd(server, key, "jobs", "list", "--status", "succeeded")
    assert table.returncode == 0 and job_id in table.stdout
    conflict = _gkd(server, key, "jobs", "cancel", job_id, "--json")
    assert conflict.returncode == 1 and json.loads(conflict.stderr)["error"]["status_code"] == 409
    bad_key = _gkd(server, "gkd_wrong", "jobs", "get", job_id, "--api-key", "gkd_wrong_too")
    assert bad_key.returncode == 1 and "401" in bad_key.stderr
    # A submitted job that is cancelled: `watch` exits non-zero.
    submitted = _gkd(server, key, "jobs", "--json", "submit", "--teacher", "tiny", "--train", dataset["id"],
                     "--layers", "1", "--set", "hyperparameters.epochs=50", "--set", "batch_size=8",
                     "--set", "max_length=16")
    assert submitted.returncode == 0, submitted.stderr
    new_job = json.loads(submitted.stdout)
    assert new_job["hyperparameters"]["epochs"] == 50 and new_job["student"]["num_layers"] == 1
    assert _gkd(server, key, "jobs", "cancel", new_job["id"]).returncode == 0
    cancelled = _gkd(server, key, "jobs", "watch", new_job["id"])
    assert cancelled.returncode == 1 and "cancel" in cancelled.stderr
