"""POST/GET/DELETE /v1/datasets."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter, Request
from sqlalchemy import bindparam
from starlette.concurrency import run_in_threadpool

from app.deps import CurrentTenant, PageDep, SessionDep, SettingsDep
from app.errors import ApiError, conflict, not_found, storable
from app.reads import row_select
from app.routes.common import PagedQuery, early_quota_check, get_dataset, paginate, quota_error
from app.schemas import DatasetOut, Deleted, ListResponse
from app.store import quotas, removal
from app.store.ids import new_id
from app.store.orm import Dataset, utcnow
from app.store.storage import get_storage
from app.uploads import multipart_openapi, receive_upload

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

MAX_NAME = 300


def _validate_file(path: Path, filename: str, max_rows: int) -> tuple[str, object]:
    """Read and check the uploaded file with gkd.data; DataError -> 4xx naming the line."""
    from gkd.data.readers import DataError, detect_format, read_examples
    from gkd.data.validation import validate_examples

    try:
        fmt = detect_format(filename)
    except DataError as exc:
        raise ApiError(415, exc.message, code="unsupported_file_type", param="file") from exc
    try:
        examples = read_examples(path, fmt, max_rows=max_rows)
    except DataError as exc:  # "cannot read <tmp>/upload-x.part": the uploader knows it by its own name
        message = exc.message.replace(str(path), repr(filename) if filename else "the file")
        raise ApiError(422, message, code="invalid_dataset", param="file") from exc
    report = validate_examples(examples)
    if report.errors:
        raise ApiError(422, "; ".join(report.errors), code="invalid_dataset", param="file")
    return fmt, report


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    openapi_extra=multipart_openapi("CSV, TSV, JSONL or Parquet with columns text, optional text_pair, label."),
)
async def create_dataset(
    request: Request, tenant: CurrentTenant, settings: SettingsDep, session: SessionDep
) -> DatasetOut:
    # A full tenant is refused before its upload is read, an upload that does not fit before it is parsed; the
    # binding check is the insert's.
    await run_in_threadpool(early_quota_check, session, settings, tenant.id, stored_bytes=1, datasets=1)
    upload = await receive_upload(request, tmp_dir=settings.tmp_dir, max_bytes=settings.max_dataset_bytes,
                                  max_fields=settings.max_form_fields,
                                  max_field_bytes=settings.max_form_field_bytes)
    final: Path | None = None
    published: str | None = None
    try:
        assert upload.path is not None
        await run_in_threadpool(early_quota_check, session, settings, tenant.id, stored_bytes=upload.size, datasets=1)
        filename = os.path.basename(upload.filename or "")
        name = storable((upload.fields.get("name") or filename or "dataset")[:MAX_NAME], "name")
        # The reader looks at the extension of the path it is given; keep the upload's.
        fmt, report = await run_in_threadpool(_validate_file, upload.path, filename, settings.max_dataset_rows)
        dataset_id = new_id("ds")
        relative = f"datasets/{tenant.id}/{dataset_id}.{fmt}"
        final = settings.storage / relative
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(upload.path, final)
        upload.path = None
        published = relative
        await run_in_threadpool(get_storage(settings).publish, relative)  # GKD_STORAGE=s3: to the bucket
        validation = report.model_dump()  # type: ignore[attr-defined]
        row = Dataset(
            id=dataset_id,
            tenant_id=tenant.id,
            name=name,
            format=fmt,
            rows=report.rows,  # type: ignore[attr-defined]
            labels=list(report.labels),  # type: ignore[attr-defined]
            sha256=upload.sha256,
            size_bytes=upload.size,
            validation=validation,
            path=relative,
            created_at=utcnow(),
        )

        def insert() -> None:
            try:  # the binding check: the tenant stays locked from it to the commit
                quotas.check(session, settings, tenant.id, stored_bytes=upload.size, datasets=1)
            except quotas.QuotaExceeded as exc:
                session.rollback()
                raise quota_error(exc) from exc
            session.add(row)
            session.commit()

        await run_in_threadpool(insert)
        final = published = None
        return DatasetOut.of(row)
    finally:
        upload.discard()
        if final is not None:
            final.unlink(missing_ok=True)
        if published is not None:
            await run_in_threadpool(get_storage(settings).delete, published)


_DATASETS = PagedQuery.of(
    row_select(Dataset).where(Dataset.tenant_id == bindparam("tenant_id"), Dataset.deleted_at.is_(None)), Dataset.id
)


@router.get("", response_model=ListResponse[DatasetOut])
def list_datasets(tenant: CurrentTenant, session: SessionDep, page: PageDep) -> dict[str, object]:
    return paginate(session, _DATASETS, {"tenant_id": tenant.id}, page, "ds", DatasetOut.of)


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset_route(dataset_id: str, tenant: CurrentTenant, session: SessionDep) -> DatasetOut:
    return DatasetOut.of(get_dataset(session, tenant, dataset_id))


@router.delete("/{dataset_id}", response_model=Deleted)
def delete_dataset(dataset_id: str, tenant: CurrentTenant, session: SessionDep, settings: SettingsDep) -> Deleted:
    row = get_dataset(session, tenant, dataset_id)
    path = row.path
    try:
        removal.soft_delete_unless_used(session, Dataset, row.id)
    except removal.InUse as exc:
        raise conflict(f"dataset {row.id} is used by unfinished job {exc.job_id}", code="resource_in_use") from exc
    except removal.AlreadyRemoved as exc:
        raise not_found("dataset", dataset_id) from exc
    session.commit()
    get_storage(settings).delete(path)
    return Deleted(id=row.id, object="dataset")
