"""Per-tenant quotas: stored bytes, datasets, models and active jobs, each a tenant's own value (set by the operator
with `gkd tenants set-quota`) or the deployment's default (`GKD_QUOTA_*`).

A write that would exceed one is refused before anything is stored. The check runs inside the transaction that
inserts the row and starts by touching the tenant's row (`lock_tenant`): PostgreSQL's row lock and SQLite's write
lock both make two concurrent uploads of one tenant take turns, so they cannot both pass a check that only one fits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.store.jobs import TERMINAL_STATUSES
from app.store.orm import Checkpoint, Dataset, Job, TeacherModel, Tenant
from app.store.settings import Settings

Resource = Literal["stored_bytes", "datasets", "models", "active_jobs"]
RESOURCES: tuple[Resource, ...] = ("stored_bytes", "datasets", "models", "active_jobs")


@dataclass(frozen=True)
class Usage:
    """What a tenant holds now (stored bytes: its datasets, uploaded models and job checkpoints)."""

    stored_bytes: int
    datasets: int
    models: int
    active_jobs: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Quota:
    """The limits that apply to one tenant."""

    stored_bytes: int
    datasets: int
    models: int
    active_jobs: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class QuotaExceeded(Exception):
    """A write would take a tenant past one of its quotas. `status` is 413 for stored bytes, 429 for counts."""

    def __init__(self, resource: Resource, limit: int, used: int, adding: int) -> None:
        self.resource, self.limit, self.used, self.adding = resource, limit, used, adding
        self.status = 413 if resource == "stored_bytes" else 429
        if resource == "stored_bytes":
            message = (f"storage quota exceeded: this tenant stores {used:,} bytes of its {limit:,}, and this upload "
                       f"needs {adding:,} more; delete datasets or models, or ask the operator for a larger quota")
        else:
            noun = resource.replace("_", " ")
            message = (f"quota exceeded: this tenant has {used} {noun} of its {limit}; "
                       + ("wait for one to finish or cancel one" if resource == "active_jobs"
                          else "delete one first") + ", or ask the operator for a larger quota")
        super().__init__(message)
        self.message = message


def quota_for(settings: Settings, tenant: Tenant) -> Quota:
    """The tenant's own limits where the operator set them, else the deployment's defaults."""

    def pick(own: int | None, default: int) -> int:
        return own if own is not None else default

    return Quota(
        stored_bytes=pick(tenant.quota_stored_bytes, settings.quota_stored_bytes),
        datasets=pick(tenant.quota_datasets, settings.quota_datasets),
        models=pick(tenant.quota_models, settings.quota_models),
        active_jobs=pick(tenant.quota_active_jobs, settings.quota_active_jobs),
    )


def usage(session: Session, tenant_id: str) -> Usage:
    """Counted from the rows (no counters to drift): live datasets, own live models, unfinished jobs, and their bytes.
    A checkpoint archive that serves two rows (best and final at the same step) counts once."""
    dataset_count, dataset_bytes = session.execute(
        select(func.count(), func.coalesce(func.sum(Dataset.size_bytes), 0))
        .where(Dataset.tenant_id == tenant_id, Dataset.deleted_at.is_(None))
    ).one()
    model_count, model_bytes = session.execute(
        select(func.count(), func.coalesce(func.sum(TeacherModel.size_bytes), 0))
        .where(TeacherModel.tenant_id == tenant_id, TeacherModel.deleted_at.is_(None))
    ).one()
    archives = (
        select(Checkpoint.path, func.max(Checkpoint.size_bytes).label("size"))
        .join(Job, Job.id == Checkpoint.job_id)
        .where(Job.tenant_id == tenant_id)
        .group_by(Checkpoint.path)
        .subquery()
    )
    checkpoint_bytes = session.scalar(select(func.coalesce(func.sum(archives.c.size), 0))) or 0
    active = session.scalar(
        select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id, Job.status.not_in(TERMINAL_STATUSES))
    ) or 0
    return Usage(int(dataset_bytes) + int(model_bytes) + int(checkpoint_bytes), int(dataset_count),
                 int(model_count), int(active))


def lock_tenant(session: Session, tenant_id: str) -> Tenant:
    """Take the tenant's row for this transaction (a no-op UPDATE: PostgreSQL's row lock, SQLite's write lock)
    and return it freshly read, quota columns included."""
    session.execute(update(Tenant).where(Tenant.id == tenant_id).values(id=Tenant.id)
                    .execution_options(synchronize_session=False))
    tenant = session.get(Tenant, tenant_id, populate_existing=True)
    if tenant is None:
        raise LookupError(f"tenant {tenant_id} does not exist")
    return tenant


def check(session: Session, settings: Settings, tenant_id: str, *, stored_bytes: int = 0, datasets: int = 0,
          models: int = 0, active_jobs: int = 0) -> None:
    """Raise `QuotaExceeded` if adding these to the tenant's holdings passes a quota. Call inside the transaction
    that inserts the rows, before the insert; it locks the tenant until that transaction ends."""
    quota = quota_for(settings, lock_tenant(session, tenant_id))
    held = usage(session, tenant_id)
    adding = {"stored_bytes": stored_bytes, "datasets": datasets, "models": models, "active_jobs": active_jobs}
    for resource in RESOURCES:
        limit, more = getattr(quota, resource), adding[resource]
        if more > 0 and getattr(held, resource) + more > limit:
            raise QuotaExceeded(resource, limit, getattr(held, resource), more)


def set_quota(session: Session, tenant: Tenant, values: dict[str, int | None]) -> None:
    """Set (an int) or reset to the default (None) the given limits of `tenant`."""
    for resource, value in values.items():
        if resource not in RESOURCES:
            raise ValueError(f"unknown quota {resource!r}; one of {', '.join(RESOURCES)}")
        if value is not None and value < 0:
            raise ValueError(f"quota {resource} must be 0 or more")
        setattr(tenant, f"quota_{resource}", value)
