"""The bounces table: delivery reports, complaints and unsubscribe mails that came back

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 13:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = ("hard", "soft", "complaint", "unsubscribe", "ignored", "unparseable")


def upgrade() -> None:
    op.create_table(
        "bounces",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=10), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(*KINDS, name="bouncekind", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("address", sa.String(length=320), nullable=True),
        sa.Column("subscriber_id", sa.Integer(), nullable=True),
        sa.Column("outbox_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=True),
        sa.Column("diagnostic", sa.Text(), nullable=True),
        sa.Column("action", sa.String(length=200), nullable=False),
        sa.Column("message_id", sa.String(length=300), nullable=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=True),
        sa.Column("counts", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["subscriber_id"], ["subscribers.id"], name="fk_bounces_subscriber"
        ),
        sa.ForeignKeyConstraint(["outbox_id"], ["outbox.id"], name="fk_bounces_outbox"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_bounces_received_at", "bounces", ["received_at"])
    op.create_index("ix_bounces_address", "bounces", ["address"])
    op.create_index("ix_bounces_subscriber_id", "bounces", ["subscriber_id"])
    op.create_index("ix_bounces_outbox_id", "bounces", ["outbox_id"])


def downgrade() -> None:
    op.drop_table("bounces")
