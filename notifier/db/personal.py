"""Everything stored about one subscriber, read for an export (DSGVO art. 15 and 20)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from .models import (
    AuditEntry,
    Bounce,
    BriefingQueue,
    Consent,
    Digest,
    Item,
    ItemKind,
    OutboxMessage,
    OutboxState,
    Rhythm,
    Subscriber,
)


@dataclass(frozen=True)
class MessageRow:
    """One outbox row of the person: an item's message, a briefing, or a service e-mail."""

    id: int
    item_kind: ItemKind | None
    subject: str | None  # the item's subject; None for briefings and service e-mails
    digest_rhythm: Rhythm | None
    notice: str
    state: OutboxState
    attempts: int
    created_at: datetime
    sent_at: datetime | None
    last_code: int | None


@dataclass(frozen=True)
class QueuedItem:
    item_id: int
    subject: str
    queued_at: datetime


async def subscriber(session: AsyncSession, subscriber_id: int) -> Subscriber | None:
    """The subscriber with organisation and subscriptions loaded, or None."""
    found: Subscriber | None = await session.scalar(
        select(Subscriber)
        .where(Subscriber.id == subscriber_id)
        .options(selectinload(Subscriber.organisation), selectinload(Subscriber.subscriptions))
    )
    return found


async def consents(session: AsyncSession, subscriber_id: int) -> Sequence[Consent]:
    """The person's consent records, oldest first."""
    return (
        await session.scalars(
            select(Consent).where(Consent.subscriber_id == subscriber_id).order_by(Consent.id)
        )
    ).all()


async def messages(session: AsyncSession, subscriber_id: int) -> list[MessageRow]:
    """Every outbox row of the person (sent, queued, failed, cancelled), newest first."""
    rows = await session.execute(
        select(
            OutboxMessage.id,
            Item.kind,
            Item.subject,
            Digest.rhythm,
            OutboxMessage.notice,
            OutboxMessage.state,
            OutboxMessage.attempts,
            OutboxMessage.created_at,
            OutboxMessage.sent_at,
            OutboxMessage.last_code,
        )
        .outerjoin(Item, Item.id == OutboxMessage.item_id)
        .outerjoin(Digest, Digest.id == OutboxMessage.digest_id)
        .where(OutboxMessage.subscriber_id == subscriber_id)
        .order_by(OutboxMessage.id.desc())
    )
    return [MessageRow(*cast(tuple[Any, ...], row)) for row in rows]


async def briefing_queue(session: AsyncSession, subscriber_id: int) -> list[QueuedItem]:
    """Items waiting for the person's next briefing, oldest first."""
    rows = await session.execute(
        select(BriefingQueue.item_id, Item.subject, BriefingQueue.queued_at)
        .join(Item, Item.id == BriefingQueue.item_id)
        .where(BriefingQueue.subscriber_id == subscriber_id)
        .order_by(BriefingQueue.queued_at, BriefingQueue.item_id)
    )
    return [QueuedItem(*row) for row in rows]


async def audit_entries(session: AsyncSession, subscriber_id: int) -> Sequence[AuditEntry]:
    """The audit log's entries about the person, oldest first."""
    return (
        await session.scalars(
            select(AuditEntry)
            .where(AuditEntry.entity == "subscriber", AuditEntry.entity_id == str(subscriber_id))
            .order_by(AuditEntry.id)
        )
    ).all()


async def bounces(session: AsyncSession, subscriber_id: int, email: str) -> Sequence[Bounce]:
    """Bounces, complaints and unsubscribe mails that came back for the person (matched to
    them, or naming their address), oldest first; as erasure finds them."""
    return (
        await session.scalars(
            select(Bounce)
            .where(or_(Bounce.subscriber_id == subscriber_id, Bounce.address == email))
            .order_by(Bounce.id)
        )
    ).all()
