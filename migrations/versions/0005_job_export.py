"""A job records the deployable copies of its best student it makes (`export`: "onnx", "onnx-int8"); NULL: none.

Revision ID: 0005_job_export
Revises: 0004_job_label_map
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_job_export"
down_revision = "0004_job_label_map"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("export", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("export")
