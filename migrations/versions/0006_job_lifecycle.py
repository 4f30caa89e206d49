"""The job lifecycle (issue 23): a job records the checkpoint its student continues from
(`student.init.checkpoint`), so the source job cannot be deleted while a job that needs it is unfinished.

Revision ID: 0006_job_lifecycle
Revises: 0005_job_export
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_job_lifecycle"
down_revision = "0005_job_export"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("init_checkpoint_id", sa.String(40), nullable=True))
        batch.create_index("ix_jobs_init_checkpoint_id", ["init_checkpoint_id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_init_checkpoint_id")
        batch.drop_column("init_checkpoint_id")
