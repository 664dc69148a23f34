"""Values made once per database: the secret part of the Message-IDs, so two installations
(a reinstall, a move to PostgreSQL, a staging database) never send the same Message-ID

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 09:10:00
"""

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    table = op.create_table(
        "installation",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.bulk_insert(table, [{"key": "message_id_key", "value": secrets.token_hex(32)}])


def downgrade() -> None:
    op.drop_table("installation")
