"""Helpers shared by the route modules: cursor pagination and tenant-scoped lookups."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Row, Select, bindparam, or_, select
from sqlalchemy.orm import Session

from app.deps import Page
from app.errors import ApiError, invalid, not_found
from app.reads import row_select
from app.schemas import JobOut
from app.store import quotas
from app.store.ids import looks_like
from app.store.orm import Dataset, Job, TeacherModel, Tenant
from app.store.quotas import QuotaExceeded
from app.store.settings import Settings

T = TypeVar("T")


@dataclass(frozen=True)
class PagedQuery:
    """A list statement built once with bind parameters, for the first page and for the pages after a cursor:
    no SQL is constructed per request (building and caching a statement cost about a tenth of a list request)."""

    first: Select[Any]
    after: Select[Any]

    @classmethod
    def of(cls, stmt: Select[Any], id_column: Any) -> PagedQuery:
        """`stmt` selects rows (`row_select`), newest first by `id_column`; pages take `limit` (and `after`)."""

        def ordered(select_: Select[Any]) -> Select[Any]:
            return select_.order_by(id_column.desc()).limit(bindparam("limit"))

        return cls(ordered(stmt), ordered(stmt.where(id_column < bindparam("after"))))


def paginate(
    db: Session | Connection, query: PagedQuery, params: dict[str, Any], page: Page, prefix: str,
    out: Callable[[Any], T],
) -> dict[str, Any]:
    """Newest first; `after` is the id of the last item of the previous page; `params` fill `query`'s filters."""
    if page.after is not None and not looks_like(page.after, prefix):
        raise invalid(f"after must be a {prefix}_ id from a previous page", param="after")
    stmt = query.first if page.after is None else query.after
    rows = db.execute(stmt, {**params, "limit": page.limit + 1, "after": page.after}).all()
    has_more = len(rows) > page.limit
    rows = rows[: page.limit]
    return {
        "object": "list",
        "data": [out(r) for r in rows],
        "has_more": has_more,
        "next_cursor": rows[-1].id if has_more and rows else None,
    }


def get_dataset(
    session: Session, tenant: Tenant, dataset_id: str, param: str | None = None, *, lock: bool = False
) -> Dataset:
    """`lock` holds the row (PostgreSQL) so a concurrent DELETE waits for the job insert to commit."""
    row = session.get(Dataset, dataset_id, with_for_update=lock or None)
    if row is None or row.tenant_id != tenant.id or row.deleted_at is not None:
        raise not_found("dataset", dataset_id, param)
    return row


VISIBLE_MODELS = PagedQuery.of(
    row_select(TeacherModel).where(
        or_(TeacherModel.tenant_id == bindparam("tenant_id"), TeacherModel.tenant_id.is_(None)),
        TeacherModel.deleted_at.is_(None),
    ),
    TeacherModel.id,
)


def get_model(
    session: Session, tenant: Tenant, model_id: str, param: str | None = None, *, lock: bool = False
) -> TeacherModel:
    """A live model by id, or by name (the tenant's own model first, then a shared one such as 'example-teacher').
    `lock` shares the row (PostgreSQL FOR SHARE) so a concurrent DELETE waits for the job insert to commit, while
    creates of other tenants' jobs on the same global teacher do not wait for each other."""
    share = {"read": True} if lock else None
    row = session.get(TeacherModel, model_id, with_for_update=share)
    if row is None and not model_id.startswith("mdl_"):
        named = select(TeacherModel).where(
            TeacherModel.name == model_id,
            or_(TeacherModel.tenant_id == tenant.id, TeacherModel.tenant_id.is_(None)),
            TeacherModel.deleted_at.is_(None),
        )
        rows = session.scalars(named.with_for_update(read=True) if lock else named).all()
        row = min(rows, key=lambda m: m.tenant_id is None, default=None)
    if row is None or row.tenant_id not in (None, tenant.id) or row.deleted_at is not None:
        raise not_found("model", model_id, param)
    return row


_JOB_BY_ID = row_select(Job, JobOut.READS).where(Job.id == bindparam("job_id"), Job.tenant_id == bindparam("tenant_id"))


def job_row(connection: Connection, tenant: Tenant, job_id: str) -> Row[Any]:
    """The tenant's job as a row of what `JobOut.of` reads (the hot read path: `app.reads`); 404 when it is another
    tenant's or unknown."""
    row = connection.execute(_JOB_BY_ID, {"job_id": job_id, "tenant_id": tenant.id}).first()
    if row is None:
        raise not_found("job", job_id)
    return row


def get_job(session: Session, tenant: Tenant, job_id: str) -> Job:
    row = session.get(Job, job_id)
    if row is None or row.tenant_id != tenant.id:
        raise not_found("job", job_id)
    return row


def quota_error(exc: QuotaExceeded) -> ApiError:
    """A quota refusal as the envelope: 413 for stored bytes (a payload too large for what is left), 429 for counts;
    both `rate_limit_error` with code `quota_exceeded`, the resource in `param`."""
    return ApiError(exc.status, exc.message, code="quota_exceeded", param=exc.resource, type="rate_limit_error")


def early_quota_check(session: Session, settings: Settings, tenant_id: str, **adding: int) -> None:
    """A look at the quotas before costly work (reading, parsing, extracting an upload), in a transaction of its own
    that ends here; the binding check is `quotas.check` in the transaction that inserts the row."""
    try:
        quotas.check(session, settings, tenant_id, **adding)
    except QuotaExceeded as exc:
        raise quota_error(exc) from exc
    finally:
        session.rollback()  # releases the tenant's lock
