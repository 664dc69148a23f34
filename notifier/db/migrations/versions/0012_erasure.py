"""Erasure and retention (issue 13): outbox rows and briefings may outlive their recipient
(subscriber_id NULL: still counted, no longer personal), the salted hashes of erased addresses,
and the per-database salt of those hashes

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 13:40:00
"""

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# notifier.db.models.OUTBOX_OPEN and OUTBOX_TROUBLE (literal, as in 0005 and 0008).
OPEN = "state IN ('queued', 'deferred', 'sending')"
TROUBLE = "state IN ('failed', 'deferred')"


def _partial_indexes(create: bool) -> None:
    # SQLite's batch mode copies the table; partial indexes are dropped before and made again
    # after, so their WHERE clauses are certainly kept.
    for name, column, where in (
        ("ix_outbox_open", "id", OPEN),
        ("ix_outbox_trouble", "updated_at", TROUBLE),
    ):
        if create:
            op.create_index(
                name,
                "outbox",
                [column],
                unique=False,
                postgresql_where=sa.text(where),
                sqlite_where=sa.text(where),
            )
        else:
            op.drop_index(name, table_name="outbox")


def upgrade() -> None:
    _partial_indexes(create=False)
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.alter_column("subscriber_id", existing_type=sa.Integer(), nullable=True)
    _partial_indexes(create=True)
    with op.batch_alter_table("digests", schema=None) as batch_op:
        batch_op.alter_column("subscriber_id", existing_type=sa.Integer(), nullable=True)
    op.create_table(
        "erased_addresses",
        sa.Column("address_hash", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=20), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("address_hash"),
    )
    op.create_index("ix_audit_log_entity", "audit_log", ["entity", "entity_id"], unique=False)
    installation = sa.table(
        "installation", sa.column("key", sa.String), sa.column("value", sa.Text)
    )
    op.bulk_insert(installation, [{"key": "erasure_salt", "value": secrets.token_hex(32)}])


def downgrade() -> None:
    op.execute("DELETE FROM installation WHERE key = 'erasure_salt'")
    op.drop_table("erased_addresses")
    op.drop_index("ix_audit_log_entity", table_name="audit_log")
    # Rows whose recipient is gone cannot be kept under NOT NULL.
    op.execute("DELETE FROM outbox WHERE subscriber_id IS NULL")
    op.execute(
        "DELETE FROM digest_items WHERE digest_id IN "
        "(SELECT id FROM digests WHERE subscriber_id IS NULL)"
    )
    op.execute(
        "DELETE FROM outbox WHERE digest_id IN (SELECT id FROM digests WHERE subscriber_id IS NULL)"
    )
    op.execute("DELETE FROM digests WHERE subscriber_id IS NULL")
    with op.batch_alter_table("digests", schema=None) as batch_op:
        batch_op.alter_column("subscriber_id", existing_type=sa.Integer(), nullable=False)
    _partial_indexes(create=False)
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.alter_column("subscriber_id", existing_type=sa.Integer(), nullable=False)
    _partial_indexes(create=True)
