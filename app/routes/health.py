"""GET /healthz (the process answers) and GET /readyz (database and broker reachable)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from app.deps import SettingsDep
from app.store.db import engine_for
from app.store.settings import Settings

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check_database(settings: Settings) -> str | None:
    try:
        with engine_for(settings.database_url).connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        return f"database unreachable: {type(exc).__name__}"
    return None


def _check_broker(request: Request) -> str | None:
    try:
        with request.app.state.celery().connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:  # noqa: BLE001
        return f"broker unreachable: {type(exc).__name__}"
    return None


@router.get("/readyz")
async def readyz(request: Request, settings: SettingsDep) -> Any:
    problems = [
        p
        for p in (
            await run_in_threadpool(_check_database, settings),
            await run_in_threadpool(_check_broker, request),
        )
        if p
    ]
    if problems:
        body = {"error": {"type": "server_error", "code": "not_ready", "message": "; ".join(problems),
                          "param": None}}
        return JSONResponse(body, status_code=503)
    return {"status": "ready", "database": "ok", "broker": "ok"}
