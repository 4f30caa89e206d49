"""GET /v1/models (teachers visible to the tenant: its own and global ones), POST /v1/models (upload),
DELETE /v1/models/{id} (the tenant's own; global models only by the operator's `gkd models delete --global`)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from app.deps import CurrentTenant, PageDep, SessionDep, SettingsDep
from app.errors import ApiError, conflict, not_found, storable
from app.registry import RegistryError, import_archive
from app.routes.common import VISIBLE_MODELS, early_quota_check, get_model, paginate, quota_error
from app.schemas import ListResponse, ModelOut
from app.store import quotas, removal
from app.store.finetuned import tree_bytes
from app.store.storage import get_storage
from app.uploads import multipart_openapi, receive_upload

router = APIRouter(prefix="/v1/models", tags=["models"])

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


@router.get("", response_model=ListResponse[ModelOut])
def list_models(tenant: CurrentTenant, session: SessionDep, page: PageDep) -> dict[str, object]:
    return paginate(session, VISIBLE_MODELS, {"tenant_id": tenant.id}, page, "mdl", ModelOut.of)


@router.get("/{model_id}", response_model=ModelOut)
def get_model_route(model_id: str, tenant: CurrentTenant, session: SessionDep) -> ModelOut:
    return ModelOut.of(get_model(session, tenant, model_id))


@router.delete("/{model_id}", status_code=204, response_class=Response)
def delete_model_route(model_id: str, tenant: CurrentTenant, session: SessionDep, settings: SettingsDep) -> Response:
    """The tenant's model goes (its files with it) unless an unfinished job uses it (409 `resource_in_use`);
    finished jobs keep their results. Another tenant's model and a global one are a 404 here."""
    row = get_model(session, tenant, model_id)
    if row.tenant_id != tenant.id:
        raise not_found("model", model_id)
    try:
        removal.delete_model(session, settings, row)
    except removal.InUse as exc:
        raise conflict(f"model {row.id} is used by unfinished job {exc.job_id}", code="resource_in_use") from exc
    except removal.AlreadyRemoved as exc:
        raise not_found("model", model_id) from exc
    return Response(status_code=204)


@router.post(
    "",
    status_code=201,
    response_model=ModelOut,
    openapi_extra=multipart_openapi(".tar.gz or .zip of a Hugging Face model directory (safetensors)."),
)
async def upload_model(
    request: Request, tenant: CurrentTenant, settings: SettingsDep, session: SessionDep
) -> ModelOut:
    await run_in_threadpool(early_quota_check, session, settings, tenant.id, stored_bytes=1, models=1)
    upload = await receive_upload(request, tmp_dir=settings.tmp_dir, max_bytes=settings.max_model_bytes,
                                  max_fields=settings.max_form_fields,
                                  max_field_bytes=settings.max_form_field_bytes)
    final: Path | None = None
    try:
        assert upload.path is not None
        filename = os.path.basename(upload.filename or "")
        if not filename.lower().endswith(ARCHIVE_SUFFIXES):
            raise ApiError(415, "upload a .tar.gz or .zip archive of a Hugging Face model directory",
                           code="unsupported_file_type", param="file")
        default_name = re.sub(r"(\.tar\.gz|\.tgz|\.tar|\.zip)$", "", filename, flags=re.I) or "model"
        name = storable((upload.fields.get("name") or default_name).strip()[:300], "name")
        try:
            row, final = await run_in_threadpool(import_archive, settings, upload.path, name, tenant.id)
        except RegistryError as exc:
            raise ApiError(422, exc.message, code="invalid_model", param=exc.param or "file") from exc

        assert final is not None
        row.size_bytes = await run_in_threadpool(tree_bytes, final)

        def insert() -> None:
            try:  # the binding check: the tenant stays locked from it to the commit
                quotas.check(session, settings, tenant.id, stored_bytes=row.size_bytes or 0, models=1)
            except quotas.QuotaExceeded as exc:
                session.rollback()
                raise quota_error(exc) from exc
            session.add(row)
            session.commit()

        await run_in_threadpool(insert)
        final = None
        return ModelOut.of(row)
    finally:
        upload.discard()
        if final is not None:
            shutil.rmtree(final, ignore_errors=True)
            await run_in_threadpool(get_storage(settings).delete, f"models/{tenant.id}/{final.name}")

