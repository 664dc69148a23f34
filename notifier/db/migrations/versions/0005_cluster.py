"""Several processes on one database: the lease owner of claimed outbox rows, shared rate
limit buckets, and a partial index of the open outbox rows for claims

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 08:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


OPEN = "state IN ('queued', 'deferred', 'sending')"  # notifier.db.models.OUTBOX_OPEN


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=64), nullable=True))
    op.create_index(
        "ix_outbox_open",
        "outbox",
        ["id"],
        unique=False,
        postgresql_where=sa.text(OPEN),
        sqlite_where=sa.text(OPEN),
    )
    op.create_table(
        "rate_buckets",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_open", table_name="outbox")
    op.drop_table("rate_buckets")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("lease_owner")
