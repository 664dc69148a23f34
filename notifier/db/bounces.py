"""Named queries of the bounce intake and its pages: the ``bounces`` table and what a bounce
changes (the outbox row's ``bounced`` flag, suppressing a subscriber)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession

from .models import (
    AuditEntry,
    Bounce,
    BounceKind,
    BriefingQueue,
    OutboxMessage,
    OutboxState,
    Subscriber,
    SubscriberStatus,
)


async def outbox_row(session: AsyncSession, outbox_id: int) -> OutboxMessage | None:
    return await session.get(OutboxMessage, outbox_id)


async def outbox_by_message_id(session: AsyncSession, message_id: str) -> OutboxMessage | None:
    """The sent row whose Message-ID header was ``message_id`` (with or without <>)."""
    wanted = message_id.strip()
    if not wanted.startswith("<"):
        wanted = f"<{wanted}>"
    found = await session.scalars(
        select(OutboxMessage).where(OutboxMessage.message_id == wanted).limit(1)
    )
    return found.first()


async def subscriber_by_email(session: AsyncSession, address: str) -> Subscriber | None:
    found = await session.scalars(
        select(Subscriber).where(func.lower(Subscriber.email) == address.lower()).limit(1)
    )
    return found.first()


async def hard_failures(session: AsyncSession, subscriber_id: int) -> int:
    """Hard failures of an address: outbox rows refused at RCPT or bounced later (each row
    once), and hard bounces that named no outbox row, as far as they still count."""
    rows = await session.scalar(
        select(func.count())
        .select_from(OutboxMessage)
        .where(OutboxMessage.subscriber_id == subscriber_id, OutboxMessage.bounced == true())
    )
    unmatched = await session.scalar(
        select(func.count())
        .select_from(Bounce)
        .where(
            Bounce.subscriber_id == subscriber_id,
            Bounce.kind == BounceKind.hard,
            Bounce.outbox_id.is_(None),
            Bounce.counts == true(),
        )
    )
    return int(rows or 0) + int(unmatched or 0)


async def soft_bounces(session: AsyncSession, subscriber_id: int, since: datetime) -> int:
    return int(
        await session.scalar(
            select(func.count())
            .select_from(Bounce)
            .where(
                Bounce.subscriber_id == subscriber_id,
                Bounce.kind == BounceKind.soft,
                Bounce.counts == true(),
                Bounce.received_at >= since,
            )
        )
        or 0
    )


async def suppress(
    session: AsyncSession, sub: Subscriber, now: datetime, details: dict[str, Any]
) -> bool:
    """Suppress an active (or paused) subscriber like the sender does after 5xx refusals:
    waiting messages cancelled, briefing queue emptied, audited. False if it was not."""
    if sub.status not in (SubscriberStatus.active, SubscriberStatus.paused):
        return False
    sub.status = SubscriberStatus.suppressed
    sub.updated_at = now
    await session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.subscriber_id == sub.id,
            OutboxMessage.state.in_((OutboxState.queued, OutboxState.deferred)),
        )
        .values(state=OutboxState.cancelled, updated_at=now, last_reply="Adresse gesperrt")
    )
    await session.execute(delete(BriefingQueue).where(BriefingQueue.subscriber_id == sub.id))
    session.add(
        AuditEntry(
            at=now,
            actor="bounces",
            action="subscriber.suppressed",
            entity="subscriber",
            entity_id=str(sub.id),
            details=details,
        )
    )
    return True


async def unsuppress(
    session: AsyncSession, sub: Subscriber, *, actor: str, reason: str, now: datetime
) -> None:
    """Make a suppressed subscriber active again; the failures so far stop counting (they stay
    on record), so the next bounce starts a new count. Audited with the reason."""
    sub.status = SubscriberStatus.active
    sub.updated_at = now
    await session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.subscriber_id == sub.id, OutboxMessage.bounced == true())
        .values(bounced=False)
    )
    await session.execute(update(Bounce).where(Bounce.subscriber_id == sub.id).values(counts=False))
    session.add(
        AuditEntry(
            at=now,
            actor=actor,
            action="subscriber.unsuppressed",
            entity="subscriber",
            entity_id=str(sub.id),
            details={"reason": reason},
        )
    )


async def drop_old_raw(session: AsyncSession, before: datetime) -> int:
    """Forget the raw messages received before ``before`` (the findings stay)."""
    result = await session.execute(
        update(Bounce).where(Bounce.received_at < before, Bounce.raw.is_not(None)).values(raw=None)
    )
    count: int = result.rowcount  # type: ignore[attr-defined]
    return count


@dataclass(frozen=True)
class BounceRow:
    id: int
    received_at: datetime
    source: str
    kind: BounceKind
    address: str | None
    subscriber_id: int | None
    outbox_id: int | None
    status: str | None
    diagnostic: str | None
    action: str
    size: int


_COLUMNS = (
    Bounce.id,
    Bounce.received_at,
    Bounce.source,
    Bounce.kind,
    Bounce.address,
    Bounce.subscriber_id,
    Bounce.outbox_id,
    Bounce.status,
    Bounce.diagnostic,
    Bounce.action,
    Bounce.size,
)


async def latest(
    session: AsyncSession, *, limit: int = 100, address: str | None = None
) -> list[BounceRow]:
    query = select(*_COLUMNS).order_by(Bounce.id.desc()).limit(limit)
    if address:
        query = query.where(Bounce.address == address.lower())
    return [BounceRow(*row) for row in (await session.execute(query)).all()]


async def by_domain(session: AsyncSession, since: datetime) -> list[tuple[str, str, int]]:
    """(domain, kind, count) of the bounces since ``since``, most first."""
    rows = await session.execute(
        select(Bounce.address, Bounce.kind).where(
            Bounce.received_at >= since, Bounce.address.is_not(None)
        )
    )
    counts: dict[tuple[str, str], int] = {}
    for address, kind in rows.all():
        key = (str(address).rpartition("@")[2], str(kind))
        counts[key] = counts.get(key, 0) + 1
    return sorted(((d, k, n) for (d, k), n in counts.items()), key=lambda r: (-r[2], r[0]))


async def suppressed_subscribers(session: AsyncSession, limit: int = 200) -> list[Subscriber]:
    """Suppressed subscribers, latest first (whom the office may make active again)."""
    found = await session.scalars(
        select(Subscriber)
        .where(Subscriber.status == SubscriberStatus.suppressed)
        .order_by(Subscriber.updated_at.desc())
        .limit(limit)
    )
    return list(found)


async def get(session: AsyncSession, bounce_id: int) -> Bounce | None:
    return await session.get(Bounce, bounce_id)


async def counts_for_item(session: AsyncSession, item_id: int) -> dict[str, int]:
    """Bounces and complaints that came back for the messages of one item, by kind."""
    rows = await session.execute(
        select(Bounce.kind, func.count())
        .join(OutboxMessage, OutboxMessage.id == Bounce.outbox_id)
        .where(OutboxMessage.item_id == item_id)
        .group_by(Bounce.kind)
    )
    return {str(kind): int(n) for kind, n in rows.all()}
