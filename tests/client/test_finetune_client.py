"""Finetune jobs from the client against a real server and worker: the sync client makes a teacher and reads
the model it made from `fine_tuned_model`, the async client gets the 422 of a field a fine-tuning would ignore,
and `gkd jobs submit --method finetune --watch` names the new model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from click.testing import CliRunner

from gkd import client as gc
from gkd.cli import main
from tests.client.conftest import write_rows
from tests.support.factories import make_tiny_base_encoder
from tests.support.servers import Server
from tests.support.service import new_key, register_teacher

pytestmark = pytest.mark.slow

TINY = {"epochs": 1, "batch_size": 8, "max_length": 16}


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_base_encoder(tmp_path_factory.mktemp("encoder") / "base")


def test_sync_client_makes_a_teacher(server: Server, worker: object, encoder: Path, tmp_path: Path) -> None:
    key = new_key(server.settings)
    base = register_teacher(server.settings, key, encoder, name="base")
    with gc.Client(server.url, key, timeout=20) as client:
        train = client.datasets.upload(write_rows(tmp_path / "train.csv", 32))
        job = client.jobs.create(teacher="base", method="finetune", training_dataset=train.id,
                                 hyperparameters=TINY, name="my-teacher")
        assert job.method == "finetune" and job.teacher == base and job.fine_tuned_model is None
        done = client.jobs.wait(job.id, timeout=150, poll_interval=0.5)
        assert done.status == "succeeded", done.error
        assert done.fine_tuned_model is not None
        made = client.models.get(done.fine_tuned_model)
        assert made.name == "my-teacher" and made.labels == ["negative", "positive"]
        assert client.models.find("my-teacher").id == made.id


def test_async_client_gets_the_422(server: Server, encoder: Path, tmp_path: Path) -> None:
    key = new_key(server.settings)
    register_teacher(server.settings, key, encoder, name="base")

    async def flow() -> None:
        async with gc.AsyncClient(server.url, key, timeout=20) as client:
            train = await client.datasets.upload(write_rows(tmp_path / "train.csv", 16))
            with pytest.raises(gc.InvalidRequestError) as caught:
                await client.jobs.create(teacher="base", method="finetune", training_dataset=train.id,
                                         student={"num_layers": 1})
            assert caught.value.param == "student.num_layers" and "finetune" in caught.value.message
            job = await client.jobs.create(teacher="base", method="finetune", training_dataset=train.id,
                                           hyperparameters={**TINY, "epochs": 50})
            assert job.student == {"num_layers": 2, "init": "bottom"}
            assert (await client.jobs.cancel(job.id)).status in ("cancelling", "cancelled")

    asyncio.run(flow())


def test_cli_submits_and_names_the_model(server: Server, worker: object, encoder: Path, tmp_path: Path) -> None:
    key = new_key(server.settings)
    register_teacher(server.settings, key, encoder, name="base")
    env = {"GKD_BASE_URL": server.url, "GKD_API_KEY": key}
    result = CliRunner().invoke(main, [
        "jobs", "submit", "--method", "finetune", "--teacher", "base", "--train",
        str(write_rows(tmp_path / "train.csv", 32)), "--set", "epochs=1", "--set", "batch_size=8",
        "--set", "max_length=16", "--watch"], env=env)
    assert result.exit_code == 0, result.output
    assert "fine-tuned model: mdl_" in result.stderr
    with gc.Client(server.url, key, timeout=20) as client:
        made = result.stderr.split("fine-tuned model: ", 1)[1].split()[0]
        assert client.models.get(made).source == "finetune"
