"""Models are deleted softly (`models.deleted_at`): finished jobs naming a deleted teacher keep their row to point at.

Revision ID: 0008_model_delete
Revises: 0007_tenant_capacity
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_model_delete"
down_revision = "0007_tenant_capacity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("deleted_at")
