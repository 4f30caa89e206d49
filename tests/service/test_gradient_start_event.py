"""The worker announces the step the gradient term starts on: a `log` event next to a metrics event of that very
step (whatever `metrics_every_steps` is), once per job, also across a resumed attempt."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.store.db import session_scope
from app.store.orm import JobEvent
from app.store.settings import Settings
from tests.support.service import register_teacher, upload_dataset
from worker.runner import JobContext


@pytest.fixture
def job_id(client: TestClient, auth: dict, settings: Settings, tiny_teacher: Path) -> str:
    teacher = register_teacher(settings, auth, tiny_teacher)
    dataset = upload_dataset(client, auth)["id"]
    body = {"teacher": teacher, "training_dataset": dataset, "method": "gradient_kd", "student": {"num_layers": 1}}
    return client.post("/v1/jobs", headers=auth, json=body).json()["id"]


def training_events(settings: Settings, job_id: str) -> list[tuple[str, dict]]:
    with session_scope(settings.database_url) as session:
        rows = session.execute(select(JobEvent.type, JobEvent.data).where(JobEvent.job_id == job_id)
                               .where(JobEvent.type.in_(["metrics", "log"])).order_by(JobEvent.seq)).all()
    return [(kind, data) for kind, data in rows if kind == "metrics" or "step" in (data or {})]


def run_steps(ctx: JobContext, weights: dict[int, float]) -> None:
    from gkd.training.callbacks import StepMetrics, TrainingProgress
    from worker.runner import make_callback

    callback = make_callback(ctx)
    for step, weight in weights.items():
        progress = TrainingProgress(step=step, total_steps=40, epoch=0, num_epochs=1, elapsed_seconds=1.0)
        callback.on_step(progress, StepMetrics(loss=1.0, terms={"kd": 0.5, "ce": 0.7, "grad_weight": weight}))


def test_the_gradient_term_start_is_an_event_on_its_own_step(settings: Settings, job_id: str) -> None:
    ctx = JobContext(settings, job_id)
    assert ctx.claim("w1") is not None
    assert settings.metrics_every_steps == 10
    run_steps(ctx, {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.25, 5: 0.5, 6: 1.0})
    events = training_events(settings, job_id)
    # step 1 (always), step 4 (the start, off the every-10 grid) and nothing else; the note follows its metrics
    assert [(kind, data["step"]) for kind, data in events] == [("metrics", 1), ("metrics", 4), ("log", 4)]
    assert events[2][1]["gradient_term_started"] is True and events[2][1]["grad_weight"] == 0.25

    # a resumed attempt that continues past the start does not announce it again
    run_steps(ctx, {10: 1.0, 11: 1.0})
    assert [kind for kind, _ in training_events(settings, job_id)].count("log") == 1


def test_a_run_whose_gradient_term_never_starts_announces_nothing(settings: Settings, job_id: str) -> None:
    ctx = JobContext(settings, job_id)
    assert ctx.claim("w1") is not None
    run_steps(ctx, {1: 0.0, 2: 0.0, 10: 0.0})
    assert [kind for kind, _ in training_events(settings, job_id)] == ["metrics", "metrics"]
