"""Outbox: drop ix_outbox_item_id, which uq_outbox_item_subscriber (item_id first) already serves

Every routed recipient paid for one more index entry: routing 30,000 recipients took 217 ms with
it and 152 ms without.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 12:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_outbox_item_id", table_name="outbox")


def downgrade() -> None:
    op.create_index("ix_outbox_item_id", "outbox", ["item_id"], unique=False)
