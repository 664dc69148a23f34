"""Named queries of the office's charts: an item's delivery over time, and the bounces and
unsubscribes that followed the latest announcements."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .models import AuditEntry, Bounce, BounceKind, OutboxMessage, OutboxState

# Unsubscribes looked at for the attribution to announcements (the newest ones).
MAX_UNSUBSCRIBES = 5000
# Subscriber ids per IN list.
CHUNK = 500


async def delivery_span(session: AsyncSession, item_id: int) -> tuple[datetime, datetime] | None:
    """When the item's first message was queued and its last one sent or given up (or, while
    some are open, their latest change); None without messages."""
    o = OutboxMessage
    row = (
        await session.execute(
            select(func.min(o.created_at), func.max(func.coalesce(o.sent_at, o.updated_at))).where(
                o.item_id == item_id
            )
        )
    ).one()
    if row[0] is None:
        return None
    # min, max and coalesce keep the column's type: the times come back aware, in UTC.
    start, end = row
    return start, end


async def delivered_by(
    session: AsyncSession, item_id: int, ends: Sequence[datetime]
) -> list[tuple[int, int]]:
    """(sent, failed) messages of the item up to each of ``ends``, one scan for all."""
    o = OutboxMessage
    columns: list[Any] = []
    for end in ends:
        columns += [
            func.sum(case((o.sent_at < end, 1), else_=0)),
            func.sum(case((and_(o.state == OutboxState.failed, o.updated_at < end), 1), else_=0)),
        ]
    row = (await session.execute(select(*columns).where(o.item_id == item_id))).one()
    values = [int(v or 0) for v in row]
    return [(values[2 * i], values[2 * i + 1]) for i in range(len(ends))]


async def bounces_by_item(session: AsyncSession, item_ids: Sequence[int]) -> Counter[int]:
    """Hard and soft bounces of the messages of each item."""
    rows = await session.execute(
        select(OutboxMessage.item_id, func.count())
        .select_from(Bounce)
        .join(OutboxMessage, OutboxMessage.id == Bounce.outbox_id)
        .where(
            OutboxMessage.item_id.in_(item_ids),
            Bounce.kind.in_((BounceKind.hard, BounceKind.soft)),
        )
        .group_by(OutboxMessage.item_id)
    )
    return Counter({int(item): int(n) for item, n in rows.all() if item is not None})


async def unsubscribes_by_item(
    session: AsyncSession, item_ids: Sequence[int], since: datetime
) -> Counter[int]:
    """Unsubscribes since ``since``, each counted for the last message of an item the person
    had been sent before (a link in an e-mail does not say which e-mail it came from). Only
    items of ``item_ids`` are counted."""
    entries = (
        await session.execute(
            select(AuditEntry.entity_id, AuditEntry.at)
            .where(
                AuditEntry.action == "unsubscribe",
                AuditEntry.entity == "subscriber",
                AuditEntry.at >= since,
            )
            .order_by(AuditEntry.at.desc())
            .limit(MAX_UNSUBSCRIBES)
        )
    ).all()
    when: dict[int, list[datetime]] = {}
    for entity_id, at in entries:
        if entity_id is not None and entity_id.isdigit():
            when.setdefault(int(entity_id), []).append(at)
    ids = list(when)
    sent: dict[int, list[tuple[datetime, int]]] = {}
    for start in range(0, len(ids), CHUNK):
        rows = await session.execute(
            select(OutboxMessage.subscriber_id, OutboxMessage.sent_at, OutboxMessage.item_id).where(
                OutboxMessage.subscriber_id.in_(ids[start : start + CHUNK]),
                OutboxMessage.item_id.is_not(None),
                OutboxMessage.sent_at >= since,
            )
        )
        for subscriber_id, sent_at, item_id in rows.all():
            if subscriber_id is not None and sent_at is not None and item_id is not None:
                sent.setdefault(subscriber_id, []).append((sent_at, item_id))
    wanted = set(item_ids)
    counts: Counter[int] = Counter()
    for subscriber_id, times in when.items():
        messages = sorted(sent.get(subscriber_id, []))
        for at in times:
            before = [item for sent_at, item in messages if sent_at <= at]
            if before and before[-1] in wanted:
                counts[before[-1]] += 1
    return counts
