"""Named queries of the office console and the JSON API: the dashboard's figures, the delivery
state of every recipient of an item, and the subscriber search."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta, tzinfo
from typing import Any

from sqlalchemy import ColumnElement, and_, case, delete, exists, func, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from .models import (
    BriefingQueue,
    Digest,
    Item,
    ItemKind,
    ItemStatus,
    Organisation,
    OutboxMessage,
    OutboxState,
    Role,
    SourceState,
    Subscriber,
    SubscriberStatus,
    Subscription,
)

# -- dashboard -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DayFigures:
    """What happened in the outbox on one day (bounds in UTC, the day in the office's zone)."""

    start: datetime
    queued: int  # messages created that day
    sent: int
    deferred: int  # still deferred, last tried that day
    failed: int


def day_bounds(now: datetime, tz: tzinfo, days: int) -> list[tuple[datetime, datetime]]:
    """[start, end) of the last ``days`` days in the zone ``tz``, today first."""
    today = now.astimezone(tz).date()
    bounds = []
    for back in range(days):
        day = today - timedelta(days=back)
        start = datetime.combine(day, time(), tzinfo=tz)
        end = datetime.combine(day + timedelta(days=1), time(), tzinfo=tz)
        bounds.append((start, end))
    return bounds


async def daily_figures(
    session: AsyncSession, bounds: Sequence[tuple[datetime, datetime]]
) -> list[DayFigures]:
    """Outbox figures per day, one scan for all days (``bounds``: [start, end) per day)."""
    if not bounds:
        return []
    first = min(b[0] for b in bounds)
    o = OutboxMessage
    columns: list[Any] = []
    for start, end in bounds:
        columns += [
            func.sum(case((and_(o.created_at >= start, o.created_at < end), 1), else_=0)),
            func.sum(case((and_(o.sent_at >= start, o.sent_at < end), 1), else_=0)),
            func.sum(
                case(
                    (
                        and_(
                            o.state == OutboxState.deferred,
                            o.updated_at >= start,
                            o.updated_at < end,
                        ),
                        1,
                    ),
                    else_=0,
                )
            ),
            func.sum(
                case(
                    (
                        and_(
                            o.state == OutboxState.failed,
                            o.updated_at >= start,
                            o.updated_at < end,
                        ),
                        1,
                    ),
                    else_=0,
                )
            ),
        ]
    row = (
        await session.execute(
            select(*columns).where(
                or_(o.created_at >= first, o.sent_at >= first, o.updated_at >= first)
            )
        )
    ).one()
    values = [int(v or 0) for v in row]
    return [DayFigures(start, *values[i * 4 : i * 4 + 4]) for i, (start, _) in enumerate(bounds)]


async def scheduled_announcements(session: AsyncSession, limit: int = 20) -> list[Item]:
    return list(
        await session.scalars(
            select(Item)
            .where(Item.kind == ItemKind.announcement, Item.status == ItemStatus.scheduled)
            .order_by(Item.send_at, Item.id)
            .limit(limit)
        )
    )


async def recent_source_items(session: AsyncSession, limit: int = 10) -> list[Item]:
    """The newest items from sources (feeds, calendars, the API)."""
    return list(
        await session.scalars(
            select(Item)
            .where(Item.source.is_not(None))
            .order_by(Item.created_at.desc(), Item.id.desc())
            .limit(limit)
        )
    )


# Shown for outbox rows and briefings whose recipient was erased or aged out.
ERASED_RECIPIENT = "(gelöscht)"


def _email_or_erased() -> Any:
    return func.coalesce(Subscriber.email, ERASED_RECIPIENT)


@dataclass(frozen=True)
class BriefingRow:
    created_at: datetime
    rhythm: str
    email: str
    state: OutboxState | None


async def recent_briefings(session: AsyncSession, limit: int = 10) -> list[BriefingRow]:
    rows = await session.execute(
        select(Digest.created_at, Digest.rhythm, _email_or_erased(), OutboxMessage.state)
        .outerjoin(Subscriber, Subscriber.id == Digest.subscriber_id)
        .outerjoin(OutboxMessage, OutboxMessage.digest_id == Digest.id)
        .order_by(Digest.created_at.desc(), Digest.id.desc())
        .limit(limit)
    )
    return [BriefingRow(at, rhythm.value, email, state) for at, rhythm, email, state in rows.all()]


async def source_states(session: AsyncSession) -> dict[str, SourceState]:
    return {s.name: s for s in await session.scalars(select(SourceState))}


# -- delivery state of an item ---------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One recipient's message about an item."""

    outbox_id: int
    subscriber_id: int | None  # None: erased, or older than [retention] outbox_days
    email: str
    name: str
    notice: str
    state: OutboxState
    attempts: int
    updated_at: datetime
    sent_at: datetime | None
    code: int | None
    reply: str | None


async def deliveries(
    session: AsyncSession,
    item_id: int,
    *,
    state: OutboxState | None = None,
    limit: int = 500,
    offset: int = 0,
) -> list[Delivery]:
    """Every outbox row of an item (failures first), with the SMTP reply."""
    failed_first = case(
        (OutboxMessage.state == OutboxState.failed, 0),
        (OutboxMessage.state == OutboxState.deferred, 1),
        else_=2,
    )
    stmt = (
        select(
            OutboxMessage.id,
            OutboxMessage.subscriber_id,
            _email_or_erased(),
            func.coalesce(Subscriber.name, ""),
            OutboxMessage.notice,
            OutboxMessage.state,
            OutboxMessage.attempts,
            OutboxMessage.updated_at,
            OutboxMessage.sent_at,
            OutboxMessage.last_code,
            OutboxMessage.last_reply,
        )
        .outerjoin(Subscriber, Subscriber.id == OutboxMessage.subscriber_id)
        .where(OutboxMessage.item_id == item_id)
        .order_by(failed_first, Subscriber.email, OutboxMessage.id)
        .limit(limit)
        .offset(offset)
    )
    if state is not None:
        stmt = stmt.where(OutboxMessage.state == state)
    return [Delivery(*row) for row in (await session.execute(stmt)).all()]


async def briefing_waiting(session: AsyncSession, item_id: int, limit: int = 500) -> list[str]:
    """Addresses still waiting for the item in their next briefing."""
    rows = await session.scalars(
        select(Subscriber.email)
        .join(BriefingQueue, BriefingQueue.subscriber_id == Subscriber.id)
        .where(BriefingQueue.item_id == item_id)
        .order_by(Subscriber.email)
        .limit(limit)
    )
    return list(rows)


async def update_scheduled(session: AsyncSession, item_id: int, values: dict[str, Any]) -> bool:
    """Change an item only while it is still scheduled; False if it was routed or cancelled
    meanwhile (routing claims it with the same condition, so the two cannot overlap)."""
    result = await session.execute(
        update(Item)
        .where(Item.id == item_id, Item.status == ItemStatus.scheduled)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount) == 1  # type: ignore[attr-defined]


async def stop_pending_mail(session: AsyncSession, subscriber_id: int, now: datetime) -> int:
    """Cancel a subscriber's messages not yet on their way, and their briefing queue."""
    result = await session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.subscriber_id == subscriber_id,
            OutboxMessage.state.in_((OutboxState.queued, OutboxState.deferred)),
        )
        .values(state=OutboxState.cancelled, updated_at=now, last_reply="deaktiviert")
    )
    await session.execute(delete(BriefingQueue).where(BriefingQueue.subscriber_id == subscriber_id))
    return int(result.rowcount)  # type: ignore[attr-defined]


# -- subscribers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SubscriberFilter:
    text: str = ""  # part of the address or the name
    organisation_path: str | None = None  # the unit and everything below it
    role: Role | None = None
    topic: str | None = None
    status: SubscriberStatus | None = None


def _conditions(f: SubscriberFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if f.text:
        pattern = f"%{f.text.lower()}%"
        conditions.append(
            or_(
                func.lower(Subscriber.email).like(pattern, escape="\\"),
                func.lower(Subscriber.name).like(pattern, escape="\\"),
            )
        )
    if f.organisation_path:
        conditions.append(Organisation.path.startswith(f.organisation_path, autoescape=True))
    if f.role is not None:
        conditions.append(Subscriber.role == f.role)
    if f.status is not None:
        conditions.append(Subscriber.status == f.status)
    if f.topic:
        conditions.append(
            or_(
                Subscriber.all_topics == true(),
                exists().where(
                    Subscription.subscriber_id == Subscriber.id,
                    Subscription.topic_key == f.topic,
                ),
            )
        )
    return conditions


async def search_subscribers(
    session: AsyncSession, f: SubscriberFilter, *, limit: int, offset: int
) -> tuple[int, list[Subscriber]]:
    """The total that matches and one page of it, ordered by address."""
    conditions = _conditions(f)
    base = select(Subscriber).join(Organisation, Organisation.id == Subscriber.organisation_id)
    if conditions:
        base = base.where(and_(*conditions))
    total = int(await session.scalar(select(func.count()).select_from(base.subquery())) or 0)
    rows = await session.scalars(
        base.options(selectinload(Subscriber.organisation), selectinload(Subscriber.subscriptions))
        .order_by(Subscriber.email)
        .limit(limit)
        .offset(offset)
    )
    return total, list(rows)


async def subscriber(session: AsyncSession, subscriber_id: int) -> Subscriber | None:
    result: Subscriber | None = await session.scalar(
        select(Subscriber)
        .where(Subscriber.id == subscriber_id)
        .options(selectinload(Subscriber.organisation), selectinload(Subscriber.subscriptions))
    )
    return result


async def first_recipient(session: AsyncSession, audience_ids: Any) -> Subscriber | None:
    """The first subscriber of an audience (a sample recipient for a preview)."""
    result: Subscriber | None = await session.scalar(
        select(Subscriber)
        .where(Subscriber.id.in_(audience_ids.limit(1).scalar_subquery()))
        .options(selectinload(Subscriber.organisation), selectinload(Subscriber.subscriptions))
    )
    return result
