"""Registered models record their encoder family, attention heads, usable input length and embedding width
(gkd.models.families); rows from before stay NULL until re-registered.

Revision ID: 0003_model_family
Revises: 0002_job_device
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_model_family"
down_revision = "0002_job_device"
branch_labels = None
depends_on = None

COLUMNS = ("family", "num_attention_heads", "max_position_embeddings", "embedding_size")


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("family", sa.String(64), nullable=True))
        batch.add_column(sa.Column("num_attention_heads", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_position_embeddings", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("embedding_size", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        for column in reversed(COLUMNS):
            batch.drop_column(column)
