"""GET /metrics: Prometheus text exposition format, written by hand (no client library).

Jobs by status (one GROUP BY), jobs waiting per device kind, the oldest queued job's age and, with a
Redis broker, each queue's length. No tenant data; unauthenticated like /healthz, so keep it on the
internal network (docs/deploy.md).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from sqlalchemy import func, select

from app.deps import SessionDep, SettingsDep
from app.store.jobs import QUEUED, STATUSES
from app.store.orm import Job, utcnow
from app.store.settings import Settings

router = APIRouter(tags=["health"])

def _queue_lengths(settings: Settings) -> dict[str, int]:
    if not settings.broker_url.startswith(("redis://", "rediss://")):
        return {}
    try:
        import redis

        client = redis.Redis.from_url(settings.broker_url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return {queue: int(client.llen(queue)) for queue in (settings.task_queue, settings.gpu_task_queue)}
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - metrics never fail because the broker is down
        return {}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@router.get("/metrics", response_class=PlainTextResponse, include_in_schema=False)
def metrics(session: SessionDep, settings: SettingsDep) -> PlainTextResponse:
    counts = {status: 0 for status in STATUSES}
    counts.update({s: n for s, n in session.execute(select(Job.status, func.count()).group_by(Job.status)).all()})
    waiting = dict(session.execute(
        select(Job.queue_kind, func.count()).where(Job.status == QUEUED).group_by(Job.queue_kind)).all())
    oldest = session.scalar(select(func.min(Job.created_at)).where(Job.status == QUEUED))
    lines = ["# HELP gkd_jobs Jobs by status.", "# TYPE gkd_jobs gauge"]
    lines += [f'gkd_jobs{{status="{_label(s)}"}} {n}' for s, n in sorted(counts.items())]
    lines += ["# HELP gkd_jobs_queued Queued jobs by requested device kind.", "# TYPE gkd_jobs_queued gauge"]
    lines += [f'gkd_jobs_queued{{device="{_label(d or "auto")}"}} {n}' for d, n in sorted(waiting.items())]
    lines += ["# HELP gkd_oldest_queued_job_age_seconds Age of the oldest queued job (0 when none).",
              "# TYPE gkd_oldest_queued_job_age_seconds gauge",
              f"gkd_oldest_queued_job_age_seconds {(utcnow() - oldest).total_seconds() if oldest else 0.0:.3f}"]
    lengths = _queue_lengths(settings)
    if lengths:
        lines += ["# HELP gkd_broker_queue_length Messages waiting in the broker queue.",
                  "# TYPE gkd_broker_queue_length gauge"]
        lines += [f'gkd_broker_queue_length{{queue="{_label(q)}"}} {n}' for q, n in sorted(lengths.items())]
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4; charset=utf-8")
