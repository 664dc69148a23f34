"""Sources, events and briefings

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 05:50:19.874961
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "schedule_state",
        sa.Column("key", sa.String(length=60), nullable=False),
        sa.Column("last_slot_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "sources",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("initialized", sa.Boolean(), nullable=False),
        sa.Column("etag", sa.String(length=500), nullable=True),
        sa.Column("last_modified", sa.String(length=100), nullable=True),
        sa.Column("last_poll_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "briefing_queue",
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["item_id"],
            ["items.id"],
        ),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscribers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("subscriber_id", "item_id"),
    )
    with op.batch_alter_table("briefing_queue", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_briefing_queue_item_id"), ["item_id"], unique=False)

    op.create_table(
        "digests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column(
            "rhythm",
            sa.Enum("immediate", "daily", "weekly", name="rhythm", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("slot_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("digests", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_digests_subscriber_id"), ["subscriber_id"], unique=False
        )

    op.create_table(
        "digest_items",
        sa.Column("digest_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["digest_id"], ["digests.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["item_id"],
            ["items.id"],
        ),
        sa.PrimaryKeyConstraint("digest_id", "item_id"),
    )
    with op.batch_alter_table("digest_items", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_digest_items_item_id"), ["item_id"], unique=False)

    # Plain ALTER TABLE ADD COLUMN and CREATE INDEX: no table rebuild, so rows in outbox that
    # reference items stay untouched (SQLite enforces foreign keys here).
    op.add_column("items", sa.Column("source", sa.String(length=100), nullable=True))
    op.add_column("items", sa.Column("external_key", sa.String(length=500), nullable=True))
    op.add_column("items", sa.Column("link", sa.String(length=2000), nullable=True))
    op.add_column("items", sa.Column("published_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("items", sa.Column("content_hash", sa.String(length=64), nullable=True))
    op.add_column("items", sa.Column("starts_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("items", sa.Column("ends_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "items", sa.Column("all_day", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.add_column("items", sa.Column("location", sa.String(length=500), nullable=True))
    op.add_column(
        "items",
        sa.Column("event_cancelled", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column(
        "items", sa.Column("change_count", sa.Integer(), nullable=False, server_default="0")
    )
    op.create_index("ix_items_kind_starts_at", "items", ["kind", "starts_at"], unique=False)
    op.create_index("uq_items_source_key", "items", ["source", "external_key"], unique=True)

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("digest_id", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("notice", sa.String(length=40), nullable=False, server_default="")
        )
        batch_op.alter_column("item_id", existing_type=sa.INTEGER(), nullable=True)
        batch_op.drop_constraint("uq_outbox_item_subscriber", type_="unique")
        batch_op.create_unique_constraint(
            "uq_outbox_item_subscriber", ["item_id", "subscriber_id", "notice"]
        )
        batch_op.create_unique_constraint("uq_outbox_digest", ["digest_id"])
        batch_op.create_foreign_key("fk_outbox_digest", "digests", ["digest_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_constraint("fk_outbox_digest", type_="foreignkey")
        batch_op.drop_constraint("uq_outbox_digest", type_="unique")
        batch_op.drop_constraint("uq_outbox_item_subscriber", type_="unique")
        batch_op.create_unique_constraint("uq_outbox_item_subscriber", ["item_id", "subscriber_id"])
        batch_op.alter_column("item_id", existing_type=sa.INTEGER(), nullable=False)
        batch_op.drop_column("notice")
        batch_op.drop_column("digest_id")

    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_index("uq_items_source_key")
        batch_op.drop_index("ix_items_kind_starts_at")
        batch_op.drop_column("change_count")
        batch_op.drop_column("event_cancelled")
        batch_op.drop_column("location")
        batch_op.drop_column("all_day")
        batch_op.drop_column("ends_at")
        batch_op.drop_column("starts_at")
        batch_op.drop_column("content_hash")
        batch_op.drop_column("published_at")
        batch_op.drop_column("link")
        batch_op.drop_column("external_key")
        batch_op.drop_column("source")

    with op.batch_alter_table("digest_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_digest_items_item_id"))

    op.drop_table("digest_items")
    with op.batch_alter_table("digests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_digests_subscriber_id"))

    op.drop_table("digests")
    with op.batch_alter_table("briefing_queue", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_briefing_queue_item_id"))

    op.drop_table("briefing_queue")
    op.drop_table("sources")
    op.drop_table("schedule_state")
