"""The reach of every day (subscribers, Ortsgemeinden whose mayor is subscribed) for the office's
chart of reach over time

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 16:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reach_snapshots",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("subscribers", sa.Integer(), nullable=False),
        sa.Column("units_reached", sa.Integer(), nullable=False),
        sa.Column("mayors_reached", sa.Integer(), nullable=False),
        sa.Column("ortsgemeinden", sa.Integer(), nullable=False),
        sa.Column("by_vg", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("day"),
    )


def downgrade() -> None:
    op.drop_table("reach_snapshots")
