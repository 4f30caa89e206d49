"""GET /metrics: Prometheus text exposition format, written by hand (no client library).

Jobs by status (one GROUP BY), jobs waiting per device kind, the oldest queued job's age and, with a
Redis broker, each queue's length. Access (docs/deploy.md): with `GKD_METRICS_TOKEN` the scraper sends it as a
bearer token, with `GKD_METRICS_ALLOW` only those addresses may scrape; either one makes the caller an operator, who
also gets per-tenant figures (unfinished jobs per tenant). With neither set the endpoint is open and shows
aggregates only: no request ever sees per-tenant figures without the token or an allowed address.
"""

from __future__ import annotations

import hmac
import ipaddress
from functools import lru_cache

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from sqlalchemy import func, select

from app.deps import SessionDep, SettingsDep
from app.errors import ApiError
from app.store.jobs import QUEUED, STATUSES, TERMINAL_STATUSES
from app.store.orm import Job, Tenant, utcnow
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


@lru_cache(maxsize=16)
def _networks(allow: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in allow.split(",") if part.strip())


def operator_access(request: Request, settings: Settings) -> bool:
    """True for an operator (the metrics token, or an address of metrics_allow); False on an open endpoint
    (neither set); a 401/403 with the envelope for anyone else."""
    token = settings.metrics_token
    if token:
        scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return True
    if settings.metrics_allow.strip() and request.client is not None:
        try:
            address = ipaddress.ip_address(request.client.host)
        except ValueError:
            address = None
        if address is not None and any(address in network for network in _networks(settings.metrics_allow)):
            return True
    if not token and not settings.metrics_allow.strip():
        return False
    if token:
        raise ApiError(401, "GET /metrics needs the operator's metrics token: 'Authorization: Bearer <token>'",
                       code="invalid_metrics_token", headers={"WWW-Authenticate": "Bearer"})
    raise ApiError(403, "GET /metrics is open to the operator's addresses only (GKD_METRICS_ALLOW)",
                   code="address_not_allowed")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@router.get("/metrics", response_class=PlainTextResponse, include_in_schema=False)
def metrics(request: Request, session: SessionDep, settings: SettingsDep) -> PlainTextResponse:
    operator = operator_access(request, settings)
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
    if operator:
        active = session.execute(
            select(Tenant.name, func.count()).join(Job, Job.tenant_id == Tenant.id)
            .where(Job.status.not_in(TERMINAL_STATUSES)).group_by(Tenant.name)).all()
        lines += ["# HELP gkd_tenant_jobs_unfinished Unfinished jobs per tenant (operators only).",
                  "# TYPE gkd_tenant_jobs_unfinished gauge"]
        lines += [f'gkd_tenant_jobs_unfinished{{tenant="{_label(t)}"}} {n}' for t, n in sorted(active)]
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4; charset=utf-8")
