"""A job records the `label_map` from its dataset's label names to the teacher's (gkd.data.labels); NULL: none needed.

Revision ID: 0004_job_label_map
Revises: 0003_model_family
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_job_label_map"
down_revision = "0003_model_family"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("label_map", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("label_map")
