"""Provenance of every subscriber: the legal basis (consent or public task), how they came in
(sign-up, import, API, office, CLI) and who added them

Rows stored before this revision are filled from what the database knows: a subscriber with a
consent record signed up on the web (basis consent, source signup, actor "web"); one the audit
log names as imported or added gets that source and the audit entry's actor; any other keeps
source "unknown". Everyone without a consent record was added by the office: basis public_task.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 13:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The newest audit entry of the given action about a subscriber (entity_id is text).
_AUDIT = (
    "(SELECT {column} FROM audit_log a WHERE a.entity = 'subscriber' "
    "AND a.entity_id = CAST(subscribers.id AS VARCHAR(100)) AND a.action = '{action}' "
    "ORDER BY a.id DESC LIMIT 1)"
)


def upgrade() -> None:
    with op.batch_alter_table("subscribers") as batch:
        batch.add_column(
            sa.Column("basis", sa.String(length=32), nullable=False, server_default="public_task")
        )
        batch.add_column(
            sa.Column("source", sa.String(length=32), nullable=False, server_default="unknown")
        )
        batch.add_column(
            sa.Column("actor", sa.String(length=200), nullable=False, server_default="")
        )
    imported = _AUDIT.format(column="actor", action="subscriber.imported")
    added = _AUDIT.format(column="actor", action="subscriber.added")
    op.execute(
        f"UPDATE subscribers SET source = 'import', actor = {imported} "  # noqa: S608
        f"WHERE {imported} IS NOT NULL"
    )
    op.execute(
        f"UPDATE subscribers SET source = CASE WHEN {added} LIKE 'api:%' THEN 'api' "  # noqa: S608
        f"ELSE 'office' END, actor = {added} WHERE {added} IS NOT NULL"
    )
    op.execute(
        "UPDATE subscribers SET basis = 'consent', source = 'signup', actor = 'web' "
        "WHERE EXISTS (SELECT 1 FROM consents c WHERE c.subscriber_id = subscribers.id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("subscribers") as batch:
        batch.drop_column("actor")
        batch.drop_column("source")
        batch.drop_column("basis")
