"""GET /v1/jobs/{id}/metrics.csv: every step's and evaluation's metrics as CSV, streamed (`app.metrics_csv`)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.deps import CurrentTenant, SessionDep, SettingsDep
from app.metrics_csv import last_seq_of, metrics_csv
from app.routes.common import get_job

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["jobs"])


@router.get(
    "/metrics.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "One row per metrics event, header first."}},
)
async def metrics_csv_route(job_id: str, tenant: CurrentTenant, session: SessionDep,
                            settings: SettingsDep) -> StreamingResponse:
    job = await run_in_threadpool(get_job, session, tenant, job_id)
    await run_in_threadpool(session.close)
    last_seq = await run_in_threadpool(last_seq_of, settings.database_url, job.id)
    return StreamingResponse(
        metrics_csv(settings.database_url, job.id, last_seq),  # a sync iterator: Starlette runs it in threads
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{job.id}-metrics.csv"'},
    )
