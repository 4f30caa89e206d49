"""Measured seconds per training step (per row) per method, student width and depth, length bucket and device
kind: what job estimates are built from. And a job's experiment trackers (`jobs.integrations`, NULL: none).

Revision ID: 0010_step_calibration
Revises: 0009_webhooks
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_step_calibration"
down_revision = "0009_webhooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "step_calibration",
        sa.Column("method", sa.String(32), primary_key=True),
        sa.Column("student_width", sa.Integer(), primary_key=True),
        sa.Column("student_depth", sa.Integer(), primary_key=True),
        sa.Column("length_bucket", sa.Integer(), primary_key=True),
        sa.Column("device_kind", sa.String(8), primary_key=True),
        sa.Column("seconds_per_row", sa.Float(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("integrations", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("integrations")
    op.drop_table("step_calibration")
