"""What the office decides about a source's items: counts per source, and the items held back
over ``max_new_per_poll`` released or discarded.

Apart from :mod:`notifier.sources.poller` so that the office's pages and the command line read
these without importing the fetching and parsing (httpx, feedparser, icalendar: about 10 MB a
process that polls no source does without).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .. import audit
from ..config import CalendarSource, FeedSource
from ..db.models import Item, ItemKind, ItemStatus

__all__ = [
    "Decision",
    "discard_held",
    "held_counts",
    "item_counts",
    "release_held",
    "source_kind",
]


def source_kind(source: FeedSource | CalendarSource) -> str:
    return "feed" if isinstance(source, FeedSource) else "calendar"


async def item_counts(session: AsyncSession) -> dict[str, int]:
    rows = await session.execute(
        select(Item.source, func.count()).where(Item.source.is_not(None)).group_by(Item.source)
    )
    return {name: count for name, count in rows.all() if name is not None}


async def held_counts(session: AsyncSession, source_name: str | None = None) -> dict[str, int]:
    """How many items each source holds for the office's decision (only sources with some)."""
    stmt = select(Item.source, func.count()).where(Item.status == ItemStatus.held)
    if source_name is not None:
        stmt = stmt.where(Item.source == source_name)
    rows = await session.execute(stmt.group_by(Item.source))
    return {name: count for name, count in rows.all() if name is not None}


@dataclass(frozen=True)
class Decision:
    """What releasing or discarding a source's held items did."""

    released: int = 0  # now scheduled: routed at the next release check
    discarded: int = 0  # now recorded: kept as seen, never announced


async def release_held(
    session: AsyncSession, source_name: str, *, actor: str, now: datetime
) -> Decision:
    """Announce the held items of a source now (audited). Events that have begun meanwhile,
    or were cancelled, are only recorded."""
    over = await session.execute(
        update(Item)
        .where(
            Item.source == source_name,
            Item.status == ItemStatus.held,
            Item.kind == ItemKind.event,
            (Item.starts_at <= now) | Item.event_cancelled.is_(True),
        )
        .values(status=ItemStatus.recorded)
    )
    released = await session.execute(
        update(Item)
        .where(Item.source == source_name, Item.status == ItemStatus.held)
        .values(status=ItemStatus.scheduled, send_at=now)
    )
    decision = Decision(
        released=int(released.rowcount),  # type: ignore[attr-defined]
        discarded=int(over.rowcount),  # type: ignore[attr-defined]
    )
    await audit.record(
        session,
        actor,
        "source.held_released",
        "source",
        source_name,
        {"released": decision.released, "recorded": decision.discarded},
    )
    return decision


async def discard_held(
    session: AsyncSession, source_name: str, *, actor: str, now: datetime
) -> Decision:
    """Record the held items of a source as seen, never to be announced (audited)."""
    discarded = await session.execute(
        update(Item)
        .where(Item.source == source_name, Item.status == ItemStatus.held)
        .values(status=ItemStatus.recorded)
    )
    decision = Decision(discarded=int(discarded.rowcount))  # type: ignore[attr-defined]
    await audit.record(
        session,
        actor,
        "source.held_discarded",
        "source",
        source_name,
        {"recorded": decision.discarded},
    )
    return decision
