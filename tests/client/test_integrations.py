"""MLflow `integrations` through the sync and async clients and `gkd jobs submit --mlflow-experiment`, against a
real API server and Celery worker whose operator set GKD_MLFLOW_TRACKING_URI (a local SQLite store): each surface
sends the integration, the API echoes it, and the worker's run lands in the operator's store under the tenant's
experiment with the job's id. (The API's refusals: tests/service/test_integrations.py.)"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.store.db import upgrade
from app.store.settings import Settings
from gkd import client as gc
from gkd.cli import main
from tests.client.conftest import write_rows
from tests.client.test_jobs_flow import TINY
from tests.support.servers import Server, start_worker, stop
from tests.support.service import new_key, register_teacher

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A server and worker sharing the operator's MLflow store; yields the server and the store's URI."""
    pytest.importorskip("mlflow")
    home = tmp_path_factory.mktemp("mlflow-service")
    settings = Settings(home=home, database_url=f"sqlite:///{home / 'gkd.db'}", broker_url="",
                        task_queue=f"mlflow-test-{secrets.token_hex(4)}", migrate_on_start=False)
    settings.ensure_dirs()
    upgrade(settings.database_url)
    uri = f"sqlite:///{home / 'mlflow.db'}"
    server = Server(settings, home / "api.log", GKD_MLFLOW_TRACKING_URI=uri).start()
    worker: subprocess.Popen[bytes] = start_worker(settings, home / "worker.log", name="mlflow-test",
                                                   GKD_MLFLOW_TRACKING_URI=uri)
    try:
        yield server, uri
    finally:
        server.stop()
        stop(worker)


def _runs(uri: str, experiment: str) -> dict[str, object]:
    """The finished MLflow runs of `experiment`, by the gkd job id they are tagged with."""
    from mlflow.tracking import MlflowClient

    tracker = MlflowClient(tracking_uri=uri)
    found = tracker.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    return {run.data.tags["gkd.job_id"]: run for run in tracker.search_runs([found.experiment_id])}


def test_mlflow_integration_from_clients_and_cli(tracked: tuple[Server, str], tiny_teacher: Path,
                                                 tmp_path: Path) -> None:
    server, uri = tracked
    key = new_key(server.settings)
    teacher = register_teacher(server.settings, key, tiny_teacher)
    with gc.Client(server.url, key, timeout=20) as client:
        train = client.datasets.upload(write_rows(tmp_path / "train.csv", 24))
        common = {"teacher": teacher, "training_dataset": train.id, "student": {"num_layers": 1},
                  "hyperparameters": TINY}
        synced = client.jobs.create(**common, integrations=[{"type": "mlflow", "experiment": "sync-exp",
                                                              "run_name": "from-sync"}])
        assert synced.integrations == [{"type": "mlflow", "experiment": "sync-exp", "run_name": "from-sync"}]

        async def create_async() -> gc.Job:
            async with gc.AsyncClient(server.url, key, timeout=20) as aclient:
                return await aclient.jobs.create(**common, integrations=[{"type": "mlflow",
                                                                         "experiment": "async-exp"}])

        asynced = asyncio.run(create_async())
        assert [(i["type"], i["experiment"]) for i in asynced.integrations] == [("mlflow", "async-exp")]

        submitted = CliRunner().invoke(
            main, ["jobs", "submit", "--teacher", teacher, "--train", train.id, "--layers", "1",
                   "--set", "epochs=1", "--set", "batch_size=8", "--set", "max_length=16",
                   "--mlflow-experiment", "cli-exp", "--json"],
            env={"GKD_BASE_URL": server.url, "GKD_API_KEY": key})
        assert submitted.exit_code == 0, submitted.output
        from_cli = json.loads(submitted.stdout)
        assert [(i["type"], i["experiment"]) for i in from_cli["integrations"]] == [("mlflow", "cli-exp")]

        for job_id in (synced.id, asynced.id, from_cli["id"]):
            done = client.jobs.wait(job_id, timeout=180, poll_interval=0.5)
            assert done.status == "succeeded", done.error

    for experiment, job_id in (("sync-exp", synced.id), ("async-exp", asynced.id), ("cli-exp", from_cli["id"])):
        run = _runs(uri, experiment)[job_id]
        assert run.info.status == "FINISHED"  # type: ignore[attr-defined]
        assert run.data.tags["gkd.final_artifact_uri"] == f"gkd://jobs/{job_id}/checkpoints/final"  # type: ignore[attr-defined]
    assert _runs(uri, "sync-exp")[synced.id].info.run_name == "from-sync"  # type: ignore[attr-defined]
