"""Per-tenant quotas set by the operator (NULL: the deployment's default) and the stored size of uploaded models.

Revision ID: 0007_tenant_capacity
Revises: 0006_job_lifecycle
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_tenant_capacity"
down_revision = "0006_job_lifecycle"
branch_labels = None
depends_on = None

QUOTAS = (
    ("quota_stored_bytes", sa.BigInteger()),
    ("quota_datasets", sa.Integer()),
    ("quota_models", sa.Integer()),
    ("quota_active_jobs", sa.Integer()),
)


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        for name, type_ in QUOTAS:
            batch.add_column(sa.Column(name, type_, nullable=True))
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("size_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("size_bytes")
    with op.batch_alter_table("tenants") as batch:
        for name, _type in reversed(QUOTAS):
            batch.drop_column(name)
