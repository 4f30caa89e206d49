"""The client against a real API server (uvicorn subprocess, SQLite, embedded broker): every error class
from a real response, uploads from a file and from a DataFrame, auto-pagination, teachers."""

from __future__ import annotations

from pathlib import Path

import pytest

from gkd import client as gc
from tests.client.conftest import write_rows
from tests.support.servers import MAX_DATASET_BYTES, Server
from tests.support.service import register_teacher

pytestmark = pytest.mark.slow


def test_wrong_key_is_authentication_error(server: Server) -> None:
    with gc.Client(server.url, "gkd_not_a_real_key", max_retries=0) as bad, \
            pytest.raises(gc.AuthenticationError) as info:
        bad.datasets.list().first_page()
    assert info.value.status_code == 401 and info.value.type == "authentication_error"


def test_unknown_ids_are_not_found(client: gc.Client) -> None:
    with pytest.raises(gc.NotFoundError) as info:
        client.jobs.get("job_0000000000000000000000000")
    assert info.value.status_code == 404 and info.value.type == "not_found_error"
    with pytest.raises(gc.NotFoundError):
        client.datasets.get("ds_missing")


def test_upload_file_get_list_delete(client: gc.Client, tmp_path: Path) -> None:
    path = write_rows(tmp_path / "train.csv", 24)
    dataset = client.datasets.upload(path, name="my-train")
    assert isinstance(dataset, gc.Dataset)
    assert (dataset.name, dataset.format, dataset.rows) == ("my-train", "csv", 24)
    assert sorted(dataset.labels) == ["negative", "positive"]
    assert dataset.validation.label_counts == {"negative": 12, "positive": 12}
    assert client.datasets.get(dataset.id).sha256 == dataset.sha256
    assert [d.id for d in client.datasets.list()] == [dataset.id]
    deleted = client.datasets.delete(dataset.id)
    assert deleted.deleted and deleted.id == dataset.id
    assert list(client.datasets.list()) == []


def test_upload_dataframe(client: gc.Client) -> None:
    pandas = pytest.importorskip("pandas")
    from tests.support.factories import sentiment_rows

    frame = pandas.DataFrame(sentiment_rows(16))
    dataset = client.datasets.upload(frame, name="frame")
    assert (dataset.name, dataset.format, dataset.rows) == ("frame", "jsonl", 16)


def test_oversized_upload_is_payload_too_large(client: gc.Client, tmp_path: Path) -> None:
    big = tmp_path / "big.csv"
    line = "a rather long and entirely ordinary sentence about a film,positive\n"
    big.write_text("text,label\n" + line * (3 * MAX_DATASET_BYTES // len(line)))
    with pytest.raises(gc.PayloadTooLargeError) as info:
        client.datasets.upload(big)
    assert info.value.status_code == 413 and info.value.param == "file"


def test_invalid_dataset_is_invalid_request(client: gc.Client, tmp_path: Path) -> None:
    path = tmp_path / "one-label.csv"
    path.write_text("text,label\na,x\nb,x\n")
    with pytest.raises(gc.InvalidRequestError) as info:
        client.datasets.upload(path)
    assert info.value.status_code == 422 and info.value.param == "file"


def test_list_auto_paginates(client: gc.Client, tmp_path: Path) -> None:
    path = write_rows(tmp_path / "small.csv", 4)
    created = [client.datasets.upload(path, name=f"d{i}").id for i in range(5)]
    pages = list(client.datasets.list(limit=2).pages())
    assert [len(p.data) for p in pages] == [2, 2, 1]
    assert [p.has_more for p in pages] == [True, True, False]
    assert [d.id for d in client.datasets.list(limit=2)] == created[::-1]  # newest first, each once


def test_bad_hyperparameter_and_teacher(client: gc.Client, server: Server, api_key: str, tiny_teacher: Path,
                                        tmp_path: Path) -> None:
    teacher = register_teacher(server.settings, api_key, tiny_teacher)
    models = list(client.models.list())
    assert teacher in [m.id for m in models]
    mine = client.models.find("tiny")
    assert mine.id == teacher and mine.num_layers == 2 and mine.owner == "tenant"
    dataset = client.datasets.upload(write_rows(tmp_path / "t.csv", 16))
    with pytest.raises(gc.InvalidRequestError) as info:
        client.jobs.create(teacher=teacher, training_dataset=dataset.id, hyperparameters={"learning_rate": -1})
    assert info.value.status_code == 422 and info.value.param == "hyperparameters.learning_rate"
    with pytest.raises(gc.NotFoundError) as info:
        client.jobs.create(teacher="mdl_nope", training_dataset=dataset.id)
    assert info.value.param == "teacher"
    with pytest.raises(gc.NotFoundError):
        client.models.find("no-such-teacher")


def test_cancel_finished_job_is_conflict(client: gc.Client, server: Server, api_key: str, tiny_teacher: Path,
                                         tmp_path: Path) -> None:
    teacher = register_teacher(server.settings, api_key, tiny_teacher)
    dataset = client.datasets.upload(write_rows(tmp_path / "t.csv", 16))
    job = client.jobs.create(teacher=teacher, training_dataset=dataset, student={"num_layers": 1},
                             hyperparameters={"epochs": 1, "batch_size": 8, "max_length": 16},
                             idempotency_key="same-key")
    again = client.jobs.create(teacher=teacher, training_dataset=dataset, student={"num_layers": 1},
                               hyperparameters={"epochs": 1, "batch_size": 8, "max_length": 16},
                               idempotency_key="same-key")
    assert again.id == job.id  # same key, same body: the same job
    with pytest.raises(gc.ConflictError):
        client.jobs.create(teacher=teacher, training_dataset=dataset, idempotency_key="same-key")
    client.jobs.cancel(job.id)
    final = client.jobs.wait(job.id, timeout=60, poll_interval=0.2)
    assert final.status == "cancelled"
    with pytest.raises(gc.ConflictError) as info:
        client.jobs.cancel(job.id)
    assert info.value.status_code == 409 and info.value.type == "conflict_error"
    assert [j.id for j in client.jobs.list(status="cancelled")] == [job.id]
    assert list(client.jobs.list(status="running")) == []
    events = list(client.jobs.events(job.id))
    assert events[0].seq == 1 and events[-1].is_terminal
    assert [e.seq for e in client.jobs.events(job.id, after=1)] == [e.seq for e in events[1:]]


def test_models_delete_sync_async_and_cli(client: gc.Client, server: Server, api_key: str, tiny_teacher: Path,
                                          tmp_path: Path) -> None:
    import asyncio

    from click.testing import CliRunner

    from app.cli import cli

    in_use = register_teacher(server.settings, api_key, tiny_teacher, name="in-use")
    dataset = client.datasets.upload(write_rows(tmp_path / "t.csv", 16))
    job = client.jobs.create(teacher=in_use, training_dataset=dataset, student={"num_layers": 1},
                             hyperparameters={"epochs": 1, "batch_size": 8, "max_length": 16})
    with pytest.raises(gc.ConflictError) as info:
        client.models.delete(in_use)
    assert info.value.status_code == 409 and info.value.code == "resource_in_use"
    client.jobs.cancel(job.id)
    assert client.jobs.wait(job.id, timeout=60, poll_interval=0.2).status == "cancelled"
    assert client.models.delete(in_use) is None
    with pytest.raises(gc.NotFoundError):
        client.models.get(in_use)

    by_async = register_teacher(server.settings, api_key, tiny_teacher, name="by-async")

    async def delete_async() -> None:
        async with gc.AsyncClient(server.url, api_key, timeout=20) as async_client:
            await async_client.models.delete(by_async)
            with pytest.raises(gc.NotFoundError):
                await async_client.models.delete(by_async)

    asyncio.run(delete_async())

    by_cli = register_teacher(server.settings, api_key, tiny_teacher, name="by-cli")
    result = CliRunner().invoke(cli, ["models", "delete", by_cli, "--base-url", server.url, "--api-key", api_key])
    assert result.exit_code == 0, result.output
    assert {in_use, by_async, by_cli}.isdisjoint(m.id for m in client.models.list())
