"""GET /v1/jobs/{id}/checkpoints and .../checkpoints/{cid}/content (a .tar.gz of a HF model directory)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy import select

from app.deps import CurrentTenant, SessionDep, SettingsDep
from app.errors import not_found
from app.routes.common import get_job
from app.schemas import CheckpointOut
from app.store.orm import Checkpoint
from app.store.storage import get_storage
from app.store.storage.local import resolve

router = APIRouter(prefix="/v1/jobs/{job_id}/checkpoints", tags=["checkpoints"])


@router.get("")
def list_checkpoints(job_id: str, tenant: CurrentTenant, session: SessionDep) -> dict[str, Any]:
    job = get_job(session, tenant, job_id)
    rows = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job.id).order_by(Checkpoint.id)).all()
    return {
        "object": "list",
        "data": [CheckpointOut.of(r).model_dump(mode="json") for r in rows],
        "has_more": False,
        "next_cursor": None,
    }


@router.get("/{checkpoint_id}", response_model=CheckpointOut)
def get_checkpoint(job_id: str, checkpoint_id: str, tenant: CurrentTenant, session: SessionDep) -> CheckpointOut:
    job = get_job(session, tenant, job_id)
    row = session.get(Checkpoint, checkpoint_id)
    if row is None or row.job_id != job.id:
        raise not_found("checkpoint", checkpoint_id)
    return CheckpointOut.of(row)


@router.get("/{checkpoint_id}/content", response_class=FileResponse)
def download_checkpoint(
    job_id: str, checkpoint_id: str, tenant: CurrentTenant, session: SessionDep, settings: SettingsDep
) -> Response:
    job = get_job(session, tenant, job_id)
    row = session.get(Checkpoint, checkpoint_id)
    if row is None or row.job_id != job.id:
        raise not_found("checkpoint", checkpoint_id)
    storage = get_storage(settings)
    if storage.kind != "local":  # a bucket: a 307 to a presigned URL, or the object streamed through the API
        filename = f"{job.id}-{row.kind}.tar.gz"
        url = storage.download_url(row.path, filename) if settings.s3_presigned_downloads else None
        if url:
            return RedirectResponse(url, status_code=307, headers={"X-Checksum-SHA256": row.sha256})
        try:
            body, size = storage.stream(row.path)
        except Exception as exc:  # noqa: BLE001 - a missing object reads as a missing file
            raise not_found("checkpoint file", checkpoint_id) from exc
        return StreamingResponse(body, media_type="application/gzip", headers={
            "Content-Length": str(size), "X-Checksum-SHA256": row.sha256,
            "Content-Disposition": f'attachment; filename="{filename}"'})
    path = resolve(settings.storage, row.path)
    if not path.is_file():
        raise not_found("checkpoint file", checkpoint_id)
    return FileResponse(
        path,
        media_type="application/gzip",
        filename=f"{job.id}-{row.kind}.tar.gz",
        headers={"X-Checksum-SHA256": row.sha256},
    )
