"""The teacher a fine-tuning job made (`method: "finetune"`): `jobs.fine_tuned_model_id`, NULL for every other job
and until the fine-tuning succeeds.

Revision ID: 0011_teacher_jobs
Revises: 0010_step_calibration
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_teacher_jobs"
down_revision = "0010_step_calibration"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("fine_tuned_model_id", sa.String(40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("fine_tuned_model_id")
