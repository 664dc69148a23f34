"""A recurring series is one item with its occurrences as items of their own; change notices
keep what changed (issue 15)

Revision ID: 0017
Revises: 0014
Create Date: 2026-12-03 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("series_key", sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column("recurrence", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("change_log", sa.JSON(), nullable=True))
        batch_op.create_index("ix_items_source_series", ["source", "series_key"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_index("ix_items_source_series")
        batch_op.drop_column("change_log")
        batch_op.drop_column("recurrence")
        batch_op.drop_column("series_key")
