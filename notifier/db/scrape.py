"""What a metrics scrape reads from the database: cheap counts on partial indexes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from .models import OUTBOX_OPEN, OUTBOX_TROUBLE, OutboxMessage, OutboxState, SourceState

# The states counted at a scrape: the open ones (ix_outbox_open) and the failed ones
# (ix_outbox_trouble). Sent and cancelled rows grow without end and are not counted (a scan
# of millions of rows every scrape); the counters say how many were sent.
SCRAPED_STATES = (
    OutboxState.queued,
    OutboxState.sending,
    OutboxState.deferred,
    OutboxState.failed,
)


@dataclass(frozen=True)
class SourceHealth:
    name: str
    last_success_at: datetime | None
    failing: bool  # the last poll failed


async def outbox_by_state(session: AsyncSession) -> dict[OutboxState, int]:
    """Rows per state for :data:`SCRAPED_STATES` (zero for states without rows)."""
    counts = dict.fromkeys(SCRAPED_STATES, 0)
    # The conditions are the partial indexes' own, word for word, so both databases use them.
    for condition in (OUTBOX_OPEN, OUTBOX_TROUBLE):
        rows = await session.execute(
            select(OutboxMessage.state, func.count())
            .where(text(condition))
            .group_by(OutboxMessage.state)
        )
        for state, count in rows.all():
            counts[OutboxState(state)] = int(count)
    return counts


async def source_health(session: AsyncSession) -> list[SourceHealth]:
    rows = await session.execute(
        select(SourceState.name, SourceState.last_success_at, SourceState.last_error)
    )
    return [SourceHealth(name, at, error is not None) for name, at, error in rows.all()]
