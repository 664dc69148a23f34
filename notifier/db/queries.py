"""Named queries: all SQL that routing and delivery need lives here.

The statements are written once with SQLAlchemy Core and work on SQLite and PostgreSQL; the few
places where the two differ (row locks, advisory locks) branch on the session's dialect here, so
no caller knows which database it talks to.

Concurrency: on SQLite every transaction takes the write lock at BEGIN (see engine.py), so
transactions never interleave. On PostgreSQL (READ COMMITTED) they do; every guard below is a
single statement that re-checks its condition on the row it changes (``UPDATE … WHERE status =
…``, ``INSERT … ON CONFLICT DO NOTHING``, ``DELETE … RETURNING``) or locks the rows it reads
(``FOR UPDATE``), so two processes doing the same work at once do it once.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Integer,
    Select,
    Table,
    TextualSelect,
    and_,
    bindparam,
    column,
    delete,
    exists,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from .models import (
    OUTBOX_OPEN,
    OUTBOX_TROUBLE,
    AuditEntry,
    BriefingQueue,
    Digest,
    DigestItem,
    InstallationValue,
    Item,
    ItemKind,
    ItemStatus,
    LoginThrottle,
    Organisation,
    OrgKind,
    OutboxMessage,
    OutboxState,
    RateBucket,
    Rhythm,
    Role,
    ScheduleState,
    SenderStatus,
    Subscriber,
    SubscriberStatus,
    Subscription,
)

PENDING = (OutboxState.queued, OutboxState.deferred)


async def scope_paths(session: AsyncSession, keys: Sequence[str]) -> list[str]:
    """Materialised paths of the units with these keys (unknown keys are left out)."""
    if not keys:
        return []
    rows = await session.scalars(select(Organisation.path).where(Organisation.key.in_(keys)))
    return list(rows)


def audience(
    topics: Sequence[str], paths: Sequence[str] | None, roles: Sequence[str]
) -> Select[int]:
    """Active subscribers whose topics meet ``topics`` (empty: any), whose unit lies under one
    of ``paths`` (None: the whole tree) and whose role is in ``roles`` (empty: any)."""
    conditions: list[ColumnElement[bool]] = [Subscriber.status == SubscriberStatus.active]
    if paths is not None:
        conditions.append(
            or_(false(), *(Organisation.path.startswith(p, autoescape=True) for p in paths))
        )
    if roles:
        conditions.append(Subscriber.role.in_([Role(r) for r in roles]))
    if topics:
        conditions.append(
            or_(
                Subscriber.all_topics == true(),
                exists().where(
                    Subscription.subscriber_id == Subscriber.id,
                    Subscription.topic_key.in_(list(topics)),
                ),
            )
        )
    return (
        select(Subscriber.id)
        .join(Organisation, Organisation.id == Subscriber.organisation_id)
        .where(and_(*conditions))
    )


async def audience_for(session: AsyncSession, item: Item) -> Select[int]:
    paths = await scope_paths(session, item.scope) if item.scope else None
    return audience(item.topics, paths, item.roles)


async def audience_breakdown(session: AsyncSession, item: Item) -> list[tuple[OrgKind, Role, int]]:
    """How many recipients an item has, by organisation level and role."""
    ids = (await audience_for(session, item)).subquery()
    stmt = (
        select(Organisation.kind, Subscriber.role, func.count())
        .select_from(Subscriber)
        .join(ids, ids.c.id == Subscriber.id)
        .join(Organisation, Organisation.id == Subscriber.organisation_id)
        .group_by(Organisation.kind, Subscriber.role)
    )
    return [(kind, role, count) for kind, role, count in (await session.execute(stmt)).all()]


async def due_items(session: AsyncSession, now: datetime) -> list[int]:
    """Ids of scheduled items whose send time has come, oldest first within each source, the
    sources taking turns (announcements of the office and the API count as one more source).

    Routing writes an item's outbox rows together and the senders claim rows in id order, so
    the order of routing is the order of sending: taking turns, one source's backlog of many
    items does not make another's item wait behind all of them."""
    stmt = (
        select(Item.id, Item.source)
        .where(Item.status == ItemStatus.scheduled, Item.send_at <= now)
        .order_by(Item.send_at, Item.id)
    )
    lanes: dict[str | None, list[int]] = {}
    for item_id, source in (await session.execute(stmt)).all():
        lanes.setdefault(source, []).append(item_id)
    queues = list(lanes.values())  # in order of each source's oldest due item
    turns: list[int] = []
    for rank in range(max((len(q) for q in queues), default=0)):
        turns.extend(q[rank] for q in queues if rank < len(q))
    return turns


async def next_send_at(session: AsyncSession, now: datetime) -> datetime | None:
    """The earliest send time of a scheduled item that is not yet due."""
    stmt = select(func.min(Item.send_at)).where(
        Item.status == ItemStatus.scheduled, Item.send_at > now
    )
    return await session.scalar(stmt)


def _is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _insert(session: AsyncSession) -> Any:
    return postgresql.insert if _is_postgres(session) else sqlite.insert


# Advisory lock keys (PostgreSQL) of work that one process at a time may do.
SETUP_LOCK = 0x6E6F7469_00000002  # mirroring the configured topics at start


async def serialize(session: AsyncSession, key: int) -> None:
    """Wait until no other transaction holds ``key``, and hold it until this one ends.

    PostgreSQL: a transaction-level advisory lock. SQLite: nothing to do, its transactions
    never interleave."""
    if _is_postgres(session):
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


async def _queue_messages(
    session: AsyncSession, subscriber_ids: Select[Any], item_id: int, notice: str, now: datetime
) -> int:
    """Outbox rows for (subscriber ids from a select) × one item and notice; duplicates are
    skipped by the unique constraint."""
    rows = subscriber_ids.add_columns(
        literal(item_id),
        literal(notice),
        literal(OutboxState.queued.value),
        literal(0),
        literal(now, type_=OutboxMessage.created_at.type),
        literal(now, type_=OutboxMessage.updated_at.type),
        literal(now, type_=OutboxMessage.next_attempt_at.type),
    )
    columns = [
        "subscriber_id",
        "item_id",
        "notice",
        "state",
        "attempts",
        "created_at",
        "updated_at",
        "next_attempt_at",
    ]
    stmt = _insert(session)(OutboxMessage).from_select(columns, rows).on_conflict_do_nothing()
    return int((await session.execute(stmt)).rowcount)  # type: ignore[attr-defined]


async def route_item(session: AsyncSession, item_id: int, now: datetime) -> int | None:
    """Route a scheduled item and mark it routed, atomically.

    Subscribers on "immediate" (everyone, for an important item) get an outbox row; those on
    "daily" or "weekly" get a row in the briefing queue. Returns the number of recipients, or
    None if the item was no longer scheduled (another run routed or cancelled it), so an item
    is never routed twice.
    """
    claimed = await session.execute(
        update(Item)
        .where(Item.id == item_id, Item.status == ItemStatus.scheduled)
        .values(status=ItemStatus.routed, routed_at=now)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return None
    item = await session.get_one(Item, item_id)
    everyone = await audience_for(session, item)
    if item.important:
        written = await _queue_messages(session, everyone, item_id, "", now)
    else:
        immediate = everyone.where(Subscriber.rhythm == Rhythm.immediate)
        written = await _queue_messages(session, immediate, item_id, "", now)
        later = everyone.where(Subscriber.rhythm != Rhythm.immediate).add_columns(
            literal(item_id), literal(now, type_=BriefingQueue.queued_at.type)
        )
        queued = await session.execute(
            _insert(session)(BriefingQueue)
            .from_select(["subscriber_id", "item_id", "queued_at"], later)
            .on_conflict_do_nothing()
        )
        written += int(queued.rowcount)  # type: ignore[attr-defined]
    item.recipient_count = written
    return written


def told_about(item_id: int) -> Select[Any]:
    """Active subscribers who were told about an item: by their own message (sent or on its
    way) or in a briefing."""
    by_message = select(OutboxMessage.subscriber_id).where(
        OutboxMessage.item_id == item_id,
        OutboxMessage.notice == "",
        OutboxMessage.state.in_(
            [OutboxState.sent, OutboxState.sending, OutboxState.queued, OutboxState.deferred]
        ),
    )
    by_briefing = (
        select(Digest.subscriber_id)
        .join(DigestItem, DigestItem.digest_id == Digest.id)
        .where(DigestItem.item_id == item_id)
    )
    return select(Subscriber.id).where(
        Subscriber.status == SubscriberStatus.active,
        or_(Subscriber.id.in_(by_message), Subscriber.id.in_(by_briefing)),
    )


async def notify_told(
    session: AsyncSession,
    item_id: int,
    notice: str,
    now: datetime,
    *,
    told_item_id: int | None = None,
) -> int:
    """Send a follow-up notice (change, cancellation) to everyone told about an item, or about
    ``told_item_id`` (the series of an occurrence). Idempotent: a notice reaches each
    subscriber once."""
    told = told_about(item_id if told_item_id is None else told_item_id)
    return await _queue_messages(session, told, item_id, notice, now)


def told_cancelled(item_id: int) -> Select[Any]:
    """Active subscribers who got (or are getting) a cancellation of an item."""
    cancellations = select(OutboxMessage.subscriber_id).where(
        OutboxMessage.item_id == item_id,
        OutboxMessage.notice.startswith("cancelled"),
        OutboxMessage.state.in_(
            [OutboxState.sent, OutboxState.sending, OutboxState.queued, OutboxState.deferred]
        ),
    )
    return select(Subscriber.id).where(
        Subscriber.status == SubscriberStatus.active, Subscriber.id.in_(cancellations)
    )


async def notify_cancelled(session: AsyncSession, item_id: int, notice: str, now: datetime) -> int:
    """Send a notice ("it takes place after all") to those who got the item's cancellation."""
    return await _queue_messages(session, told_cancelled(item_id), item_id, notice, now)


async def notify_audience(session: AsyncSession, item: Item, notice: str, now: datetime) -> int:
    """Send a notice (a reminder) to every active subscriber the item is meant for now: whose
    topics, organisation and role match at this moment, told before or not."""
    return await _queue_messages(session, await audience_for(session, item), item.id, notice, now)


async def briefing_queue_count(session: AsyncSession, item_id: int) -> int:
    """How many subscribers still wait for an item in their next briefing."""
    stmt = select(func.count()).select_from(BriefingQueue).where(BriefingQueue.item_id == item_id)
    return int(await session.scalar(stmt) or 0)


def _live(now: datetime) -> ColumnElement[bool]:
    """Items still worth telling: not cancelled, and no event that has already begun (a
    series is worth telling while it runs)."""
    return and_(
        Item.status != ItemStatus.cancelled,
        Item.event_cancelled == false(),
        or_(Item.kind != ItemKind.event, Item.starts_at > now, Item.recurrence.is_not(None)),
    )


async def drop_from_briefings(session: AsyncSession, item_id: int) -> None:
    """Take an item out of every briefing not yet built (it was cancelled)."""
    await session.execute(delete(BriefingQueue).where(BriefingQueue.item_id == item_id))


async def build_briefings(
    session: AsyncSession, rhythm: Rhythm, slot_at: datetime, now: datetime
) -> int:
    """Turn the briefing queue of every active subscriber on ``rhythm`` into one briefing each
    (an outbox row with a digest for the cron slot ``slot_at``), holding every item queued up to
    ``now``. Items cancelled meanwhile, and events already begun, are dropped. Returns the number
    of briefings; a subscriber with nothing gets none.
    """
    # Take the waiting rows in one statement: a row is taken by exactly one transaction even
    # when two builds (two rhythms, or an old and a new scheduler leader) run at once.
    taken = (
        await session.execute(
            delete(BriefingQueue)
            .where(
                BriefingQueue.queued_at <= now,
                BriefingQueue.subscriber_id.in_(
                    select(Subscriber.id).where(
                        Subscriber.status == SubscriberStatus.active,
                        # Someone who switched to "immediate" gets what was waiting in the next
                        # briefing.
                        Subscriber.rhythm.in_([rhythm, Rhythm.immediate]),
                    )
                ),
            )
            .returning(BriefingQueue.subscriber_id, BriefingQueue.item_id)
        )
    ).all()
    item_ids_taken = sorted({item_id for _, item_id in taken})
    live_items: set[int] = set()
    for chunk in id_chunks(item_ids_taken):  # a flood of items must not exceed SQLite's variables
        live_items.update(
            await session.scalars(select(Item.id).where(Item.id.in_(chunk), _live(now)))
        )
    per_subscriber: dict[int, list[int]] = {}
    for subscriber_id, item_id in sorted(taken):
        if item_id in live_items:
            per_subscriber.setdefault(subscriber_id, []).append(item_id)
    for subscriber_id, item_ids in per_subscriber.items():
        digest = Digest(subscriber_id=subscriber_id, rhythm=rhythm, slot_at=slot_at, created_at=now)
        session.add(digest)
        await session.flush()
        session.add_all(DigestItem(digest_id=digest.id, item_id=i) for i in item_ids)
        session.add(
            OutboxMessage(
                digest_id=digest.id,
                subscriber_id=subscriber_id,
                notice="",
                state=OutboxState.queued,
                attempts=0,
                created_at=now,
                updated_at=now,
                next_attempt_at=now,
            )
        )
    await session.flush()
    return len(per_subscriber)


async def digest_items(
    session: AsyncSession, digest_ids: Sequence[int], now: datetime
) -> dict[int, list[Item]]:
    """The items of each briefing that are still worth telling at ``now`` (an item cancelled
    after the briefing was built is left out)."""
    rows = await session.execute(
        select(DigestItem.digest_id, Item)
        .join(Item, Item.id == DigestItem.item_id)
        .where(DigestItem.digest_id.in_(digest_ids), _live(now))
    )
    out: dict[int, list[Item]] = {}
    for digest_id, item in rows.all():
        out.setdefault(digest_id, []).append(item)
    return out


async def slot_state(session: AsyncSession, key: str) -> datetime | None:
    return await session.scalar(select(ScheduleState.last_slot_at).where(ScheduleState.key == key))


async def set_slot_state(
    session: AsyncSession, key: str, previous: datetime | None, slot: datetime
) -> bool:
    """Move a job's last handled slot from ``previous`` to ``slot``; False if another run moved
    it first (so the caller must not do the slot's work)."""
    if previous is None:
        result = await session.execute(
            _insert(session)(ScheduleState)
            .values(key=key, last_slot_at=slot)
            .on_conflict_do_nothing()
        )
    else:
        result = await session.execute(
            update(ScheduleState)
            .where(ScheduleState.key == key, ScheduleState.last_slot_at == previous)
            .values(last_slot_at=slot)
        )
    return int(result.rowcount) == 1  # type: ignore[attr-defined]


async def upcoming_events(session: AsyncSession, now: datetime, until: datetime) -> list[Item]:
    """Routed, not cancelled single events (no series) starting between ``now`` and ``until``."""
    return list(
        await session.scalars(
            select(Item)
            .where(
                Item.kind == ItemKind.event,
                Item.status == ItemStatus.routed,
                Item.event_cancelled == false(),
                Item.recurrence.is_(None),
                Item.series_key.is_(None),
                Item.starts_at > now,
                Item.starts_at <= until,
            )
            .order_by(Item.starts_at)
        )
    )


async def series_occurrences(
    session: AsyncSession, since: datetime, until: datetime
) -> list[tuple[Item, Item]]:
    """Not cancelled occurrences starting in (since, until] of routed, running series, with
    their series item, by series and start."""
    series = aliased(Item)
    rows = await session.execute(
        select(Item, series)
        .join(
            series,
            and_(series.source == Item.source, series.external_key == Item.series_key),
        )
        .where(
            Item.kind == ItemKind.event,
            Item.series_key.is_not(None),
            Item.event_cancelled == false(),
            Item.starts_at > since,
            Item.starts_at <= until,
            series.status == ItemStatus.routed,
            series.event_cancelled == false(),
        )
        .order_by(series.id, Item.starts_at)
    )
    return [(occurrence, parent) for occurrence, parent in rows.all()]


async def calendar_events_ahead(
    session: AsyncSession, source: str, now: datetime, until: datetime
) -> list[Item]:
    """The not cancelled events of a calendar source starting in (now, until) that were
    announced or are to be (single events), and the occurrences of its series; not the series
    items themselves."""
    return list(
        await session.scalars(
            select(Item).where(
                Item.source == source,
                Item.kind == ItemKind.event,
                Item.event_cancelled.is_(False),
                Item.recurrence.is_(None),
                or_(
                    Item.status.in_([ItemStatus.routed, ItemStatus.scheduled, ItemStatus.held]),
                    Item.series_key.is_not(None),
                ),
                Item.starts_at > now,
                Item.starts_at < until,
            )
        )
    )


async def occurrences_of(session: AsyncSession, source: str, series_key: str) -> list[Item]:
    """The occurrence items of one series."""
    return list(
        await session.scalars(
            select(Item).where(Item.source == source, Item.series_key == series_key)
        )
    )


async def cancel_item(session: AsyncSession, item_id: int, now: datetime) -> int:
    """Cancel every message of an item that is not yet on its way; returns how many."""
    result = await session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.item_id == item_id, OutboxMessage.state.in_(PENDING))
        .values(state=OutboxState.cancelled, updated_at=now, lease_until=None)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ClaimedRow:
    """One claimed outbox row as the claim returns it."""

    id: int
    attempts: int
    created_at: datetime
    item_id: int | None
    digest_id: int | None
    notice: str
    subscriber_id: int
    owner: str  # the claim's lease owner token


@dataclass(frozen=True)
class Claimed(ClaimedRow):
    """One claimed outbox row with what rendering needs."""

    email: str
    name: str
    organisation: str
    all_topics: bool
    rhythm: Rhythm
    version: int  # the subscriber's token_version, signed into the personal links


# The claim's sub-select for SQLite: the open rows (OUTBOX_OPEN, the partial index's condition,
# word for word) that are due: queued or deferred and due, or sending with an expired lease.
_SQLITE_CLAIMABLE = (
    "SELECT id FROM outbox INDEXED BY ix_outbox_open"
    " WHERE state IN ('queued', 'deferred', 'sending')"
    " AND ((state IN ('queued', 'deferred') AND next_attempt_at <= :claim_now)"
    " OR (state = 'sending' AND lease_until < :claim_now))"
    " ORDER BY id LIMIT :claim_limit"
)
assert OUTBOX_OPEN in _SQLITE_CLAIMABLE


def _sqlite_claimable(now: datetime, limit: int) -> TextualSelect:
    """The ids of the first ``limit`` due rows, found by walking the partial index ix_outbox_open
    in id order. Left to itself, SQLite's planner answered the state terms from another index
    (ix_outbox_state_next, since dropped): it collected every due row and sorted them all, on
    every claim (about 20 ms per claim at 30,000 queued rows, growing with the queue); walking
    the index stops after ``limit`` rows (about 8 ms, whatever the queue). SQLAlchemy renders no
    table hints for SQLite, hence the text."""
    return (
        text(_SQLITE_CLAIMABLE)
        .bindparams(
            bindparam("claim_now", now, type_=OutboxMessage.next_attempt_at.type),
            bindparam("claim_limit", limit, type_=Integer()),
        )
        .columns(column("id", Integer()))
    )


def claim_batch(
    connection: Connection, now: datetime, limit: int, lease: timedelta, owner: str
) -> list[ClaimedRow]:
    """Take up to ``limit`` due messages (queued, deferred and due, or sending with an expired
    lease) and mark them sending until ``now + lease``, leased to ``owner`` (a token unique to
    this claim: only it can record the messages' outcomes).

    One statement, so the write transaction around it is short (on SQLite it holds the write
    lock): what rendering needs besides the row is read afterwards (:func:`describe_claimed`).
    PostgreSQL: the rows are locked with ``FOR UPDATE SKIP LOCKED``, so processes claiming at
    the same moment get disjoint batches without waiting for each other."""
    if not owner:
        raise ValueError("a claim needs a lease owner token")
    values = {
        "state": OutboxState.sending,
        "lease_until": now + lease,
        "lease_owner": owner,
        "updated_at": now,
        "attempts": OutboxMessage.attempts + 1,
    }
    if connection.dialect.name == "postgresql":
        # A materialised CTE: the locking sub-select runs once, so no more than ``limit`` rows
        # are locked, and rows another claim holds are skipped rather than waited for.
        due = or_(
            and_(OutboxMessage.state.in_(PENDING), OutboxMessage.next_attempt_at <= now),
            and_(OutboxMessage.state == OutboxState.sending, OutboxMessage.lease_until < now),
        )
        ids = (
            select(OutboxMessage.id)
            .where(text(OUTBOX_OPEN), due)  # literal: matches the partial index ix_outbox_open
            .order_by(OutboxMessage.id)
            .limit(limit)
        )
        claimable = (
            ids.with_for_update(skip_locked=True).cte("claimable").prefix_with("MATERIALIZED")
        )
        stmt = update(OutboxMessage).where(OutboxMessage.id == claimable.c.id)
    else:
        stmt = update(OutboxMessage).where(OutboxMessage.id.in_(_sqlite_claimable(now, limit)))
    rows = connection.execute(
        stmt.values(values).returning(
            OutboxMessage.id,
            OutboxMessage.attempts,
            OutboxMessage.created_at,
            OutboxMessage.item_id,
            OutboxMessage.digest_id,
            OutboxMessage.notice,
            OutboxMessage.subscriber_id,
        )
    )
    claimed = [
        ClaimedRow(
            id=row.id,
            attempts=row.attempts,
            created_at=row.created_at,
            item_id=row.item_id,
            digest_id=row.digest_id,
            notice=row.notice,
            subscriber_id=row.subscriber_id,
            owner=owner,
        )
        for row in rows.all()
    ]
    return sorted(claimed, key=lambda r: r.id)


async def describe_claimed(session: AsyncSession, rows: Sequence[ClaimedRow]) -> list[Claimed]:
    """The claimed rows with their recipients (a read; no lock needed)."""
    if not rows:
        return []
    recipients: dict[int, dict[str, Any]] = {
        sid: {
            "email": email,
            "name": name,
            "organisation": organisation,
            "all_topics": all_topics,
            "rhythm": rhythm,
            "version": version,
        }
        for sid, email, name, organisation, all_topics, rhythm, version in await session.execute(
            select(
                Subscriber.id,
                Subscriber.email,
                Subscriber.name,
                Organisation.name,
                Subscriber.all_topics,
                Subscriber.rhythm,
                Subscriber.token_version,
            )
            .join(Organisation, Organisation.id == Subscriber.organisation_id)
            .where(Subscriber.id.in_({r.subscriber_id for r in rows}))
        )
    }
    # A recipient erased since the claim is missing: the erasure cancelled the row.
    return [
        Claimed(**vars(r), **recipients[r.subscriber_id])
        for r in rows
        if r.subscriber_id in recipients
    ]


async def subscriber_topics(
    session: AsyncSession, subscriber_ids: Sequence[int]
) -> dict[int, list[str]]:
    rows = await session.execute(
        select(Subscription.subscriber_id, Subscription.topic_key)
        .where(Subscription.subscriber_id.in_(subscriber_ids))
        .order_by(Subscription.topic_key)
    )
    out: dict[int, list[str]] = {}
    for sid, key in rows.all():
        out.setdefault(sid, []).append(key)
    return out


@dataclass(frozen=True)
class Outcome:
    """What became of one claimed message."""

    outbox_id: int
    state: OutboxState  # sent, deferred, failed or cancelled
    at: datetime
    code: int | None = None
    reply: str | None = None
    message_id: str | None = None
    retry_at: datetime | None = None
    # Set when the server refused the recipient's address (5xx at RCPT): whose address bounced.
    subscriber_id: int | None = None
    # The lease owner token of the claim (Claimed.owner): an outcome whose claim no longer
    # holds the row (its lease ran out and another claim took it) changes nothing.
    owner: str = ""


_OUTBOX = cast(Table, OutboxMessage.__table__)


async def cancelled_items(session: AsyncSession, item_ids: Sequence[int]) -> set[int]:
    """Which of these items were cancelled (announcements whose sending must stop)."""
    rows = await session.scalars(
        select(Item.id).where(Item.id.in_(item_ids), Item.status == ItemStatus.cancelled)
    )
    return set(rows)


# Rows a statement names by id at most (SQLite allows 32,766 variables; PostgreSQL 65,535).
ID_CHUNK = 500


def id_chunks(ids: Sequence[int]) -> list[Sequence[int]]:
    """``ids`` in pieces of at most :data:`ID_CHUNK`, one statement's worth each."""
    return [ids[i : i + ID_CHUNK] for i in range(0, len(ids), ID_CHUNK)]


def still_held(connection: Connection, claims: Sequence[tuple[int, str]]) -> set[int]:
    """Which of these (outbox id, lease owner) claims still hold their row: it is "sending"
    and leased to that claim. On PostgreSQL the rows are locked until the transaction ends, so
    what the caller writes next goes to rows that are still its own (on SQLite the write
    transaction excludes every other writer anyway)."""
    owners = dict(claims)
    held: set[int] = set()
    for chunk in id_chunks(sorted(owners)):
        stmt = select(_OUTBOX.c.id, _OUTBOX.c.lease_owner).where(
            _OUTBOX.c.id.in_(chunk), _OUTBOX.c.state == OutboxState.sending
        )
        if connection.dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        held.update(i for i, owner in connection.execute(stmt) if owners[i] == owner)
    return held


def renew_leases(
    connection: Connection, claims: Sequence[tuple[int, str]], until: datetime
) -> set[int]:
    """Extend the leases of the rows these claims still hold to ``until``; returns their ids.
    A row missing from the answer was taken over by another claim (its lease had run out)."""
    held = still_held(connection, claims)
    for chunk in id_chunks(sorted(held)):
        connection.execute(update(_OUTBOX).where(_OUTBOX.c.id.in_(chunk)).values(lease_until=until))
    return held


def record_outcomes(connection: Connection, outcomes: Sequence[Outcome]) -> list[int]:
    """Write many outcomes with one executemany statement per kind. Only rows still in
    "sending" and leased to the outcome's claim change, so a late outcome cannot overwrite a
    newer state or a row another process has claimed since: the ids of such outcomes are
    returned (nothing was written for them)."""
    # SQLite counts the rows an executemany changed, and its write transaction shuts out every
    # other writer: the guarded update alone tells whether every row was still held (a check
    # follows only when one was not). PostgreSQL does not count them: the rows are checked
    # (and locked) first.
    counted = connection.dialect.name == "sqlite"
    held = (
        {o.outbox_id for o in outcomes}
        if counted
        else still_held(connection, [(o.outbox_id, o.owner) for o in outcomes])
    )
    by_state: dict[OutboxState, list[dict[str, Any]]] = {}
    for o in outcomes:
        if o.outbox_id not in held:
            continue
        by_state.setdefault(o.state, []).append(
            {
                "b_id": o.outbox_id,
                "b_at": o.at,
                "b_code": o.code,
                "b_reply": o.reply,
                "b_message_id": o.message_id,
                "b_retry_at": o.retry_at or o.at,
                "b_bounced": o.subscriber_id is not None,
                "b_owner": o.owner,
            }
        )
    changed = 0
    for state, params in by_state.items():
        values: dict[str, Any] = {
            "state": state,
            "updated_at": bindparam("b_at"),
            "lease_until": None,
            "lease_owner": None,
            "last_code": bindparam("b_code"),
            "last_reply": bindparam("b_reply"),
        }
        if state is OutboxState.sent:
            values |= {"sent_at": bindparam("b_at"), "message_id": bindparam("b_message_id")}
        elif state is OutboxState.failed:
            values["bounced"] = bindparam("b_bounced")
        elif state is OutboxState.deferred:
            values["next_attempt_at"] = bindparam("b_retry_at")
        stmt = (
            update(_OUTBOX)
            .where(
                _OUTBOX.c.id == bindparam("b_id"),
                _OUTBOX.c.state == OutboxState.sending,
                _OUTBOX.c.lease_owner == bindparam("b_owner"),
            )
            .values(values)
        )
        changed += connection.execute(stmt, params).rowcount
    if counted and changed != len(outcomes):
        # Which did not change: those not now in the state the outcome wrote, at its time.
        written = {o.outbox_id: (o.state, o.at) for o in outcomes}
        held = {
            i
            for chunk in id_chunks(sorted(written))
            for i, state, at, owner in connection.execute(
                select(
                    _OUTBOX.c.id, _OUTBOX.c.state, _OUTBOX.c.updated_at, _OUTBOX.c.lease_owner
                ).where(_OUTBOX.c.id.in_(chunk))
            )
            if owner is None and (state, at) == written[i]
        }
    return [o.outbox_id for o in outcomes if o.outbox_id not in held]


def suppress_bouncing(
    connection: Connection, subscriber_ids: set[int], threshold: int, now: datetime
) -> list[int]:
    """Suppress subscribers whose address has failed hard ``threshold`` times; their waiting
    messages are cancelled and routing skips them from now on. Returns whom it suppressed."""
    counts = connection.execute(
        select(OutboxMessage.subscriber_id, func.count())
        .where(
            OutboxMessage.subscriber_id.in_(subscriber_ids),
            OutboxMessage.state == OutboxState.failed,
            OutboxMessage.bounced == true(),
        )
        .group_by(OutboxMessage.subscriber_id)
    )
    suppressed = [sid for sid, count in counts.all() if sid is not None and count >= threshold]
    if suppressed:
        connection.execute(
            update(Subscriber)
            .where(Subscriber.id.in_(suppressed), Subscriber.status == SubscriberStatus.active)
            .values(status=SubscriberStatus.suppressed, updated_at=now)
        )
        connection.execute(
            update(OutboxMessage)
            .where(OutboxMessage.subscriber_id.in_(suppressed), OutboxMessage.state.in_(PENDING))
            .values(state=OutboxState.cancelled, updated_at=now, last_reply="Adresse gesperrt")
        )
        connection.execute(delete(BriefingQueue).where(BriefingQueue.subscriber_id.in_(suppressed)))
        connection.execute(
            insert(AuditEntry),
            [
                {
                    "at": now,
                    "actor": "delivery",
                    "action": "subscriber.suppressed",
                    "entity": "subscriber",
                    "entity_id": str(sid),
                    "details": {"hard_failures": threshold},
                }
                for sid in suppressed
            ],
        )
    return suppressed


def release(connection: Connection, claims: Sequence[tuple[int, str]], now: datetime) -> None:
    """Hand claimed but unsent messages back (clean shutdown): queued, attempt not counted.
    ``claims`` are (outbox id, lease owner) pairs; a row another claim holds now is left."""
    if claims:
        connection.execute(
            update(_OUTBOX)
            .where(
                _OUTBOX.c.id == bindparam("b_id"),
                _OUTBOX.c.state == OutboxState.sending,
                _OUTBOX.c.lease_owner == bindparam("b_owner"),
            )
            .values(
                state=OutboxState.queued,
                lease_until=None,
                lease_owner=None,
                updated_at=now,
                attempts=_OUTBOX.c.attempts - 1,
            ),
            [{"b_id": outbox_id, "b_owner": owner} for outbox_id, owner in claims],
        )


def set_sender_status(
    connection: Connection,
    owner: str,
    *,
    reachable: bool,
    since: datetime,
    now: datetime,
    reason: str | None = None,
    waiting: int | None = None,
    max_size: int | None = None,
) -> None:
    """Record (insert or replace) what the sender ``owner`` knows of its SMTP server."""
    values = {
        "owner": owner,
        "reachable": reachable,
        "since": since,
        "reason": reason,
        "waiting": waiting,
        "max_size": max_size,
        "updated_at": now,
    }
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(SenderStatus).values(values)
    connection.execute(
        stmt.on_conflict_do_update(
            index_elements=[SenderStatus.owner],
            set_={k: v for k, v in values.items() if k != "owner"},
        )
    )


async def count_login_failure(session: AsyncSession, key: str, *, now: datetime) -> int:
    """One more failed login under ``key`` (inserted or incremented in one statement, so two
    attempts at the same moment both count); returns the failures so far."""
    stmt = _insert(session)(LoginThrottle).values(key=key, failures=1, last_failure_at=now)
    stmt = stmt.on_conflict_do_update(
        index_elements=[LoginThrottle.key],
        set_={"failures": LoginThrottle.failures + 1, "last_failure_at": now},
    ).returning(LoginThrottle.failures)
    return int((await session.execute(stmt)).scalar_one())


def drop_sender_status(connection: Connection, *, older_than: datetime) -> None:
    """Remove the records not refreshed since ``older_than`` (of senders long gone)."""
    connection.execute(delete(SenderStatus).where(SenderStatus.updated_at < older_than))


# A sender refreshes its status record every minute; one older than this is of a process that
# ended without a clean stop (or whose loop is stuck).
SENDER_STATUS_FRESH = timedelta(minutes=3)


async def sender_statuses(session: AsyncSession, now: datetime) -> list[SenderStatus]:
    """The SMTP states of the running senders (records refreshed within SENDER_STATUS_FRESH)."""
    rows = await session.scalars(
        select(SenderStatus)
        .where(SenderStatus.updated_at >= now - SENDER_STATUS_FRESH)
        .order_by(SenderStatus.since)
    )
    return list(rows)


async def smtp_size_limit(session: AsyncSession) -> int | None:
    """The smallest message size limit the SMTP server announced to a sender (SIZE) that is
    recorded (senders keep theirs up to a day after they end), if any."""
    value = await session.scalar(select(func.min(SenderStatus.max_size)))
    return int(value) if value else None


MESSAGE_ID_KEY = "message_id_key"


async def installation_secret(session: AsyncSession, key: str) -> bytes:
    """A secret of this database (32 bytes) kept in ``installation`` under ``key``: made by a
    migration, or here if the row is missing (the first writer wins)."""
    query = select(InstallationValue.value).where(InstallationValue.key == key)
    value = await session.scalar(query)
    if value is None:
        await session.execute(
            _insert(session)(InstallationValue)
            .values(key=key, value=secrets.token_hex(32))
            .on_conflict_do_nothing()
        )
        value = await session.scalar(query)
        assert value is not None
    return bytes.fromhex(value)


async def message_id_key(session: AsyncSession) -> bytes:
    """This database's secret for Message-IDs (made by migration 0010). A copy of the database
    keeps it, so a restored installation keeps its Message-IDs; two databases have different
    ones."""
    return await installation_secret(session, MESSAGE_ID_KEY)


async def open_count(session: AsyncSession) -> int:
    """Messages not yet final (queued, deferred or being sent), counted on ix_outbox_open."""
    return int(
        await session.scalar(
            select(func.count()).select_from(OutboxMessage).where(text(OUTBOX_OPEN))
        )
        or 0
    )


async def outbox_counts(
    session: AsyncSession, item_id: int | None = None
) -> dict[OutboxState, int]:
    stmt = select(OutboxMessage.state, func.count()).group_by(OutboxMessage.state)
    if item_id is not None:
        stmt = stmt.where(OutboxMessage.item_id == item_id)
    return {state: count for state, count in (await session.execute(stmt)).all()}


async def organisation_count(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(Organisation)) or 0)


async def subscriber_count(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(Subscriber)) or 0)


async def send_rate(session: AsyncSession, now: datetime, window: timedelta) -> float:
    """Messages sent per second over the last ``window``."""
    count = await session.scalar(
        select(func.count())
        .select_from(OutboxMessage)
        .where(OutboxMessage.state == OutboxState.sent, OutboxMessage.sent_at > now - window)
    )
    return int(count or 0) / window.total_seconds()


@dataclass(frozen=True)
class Failure:
    email: str
    state: OutboxState
    at: datetime
    code: int | None
    reply: str | None
    attempts: int
    next_attempt_at: datetime


async def recent_failures(session: AsyncSession, limit: int) -> list[Failure]:
    """The latest failed or deferred messages with the server's reply."""
    rows = await session.execute(
        select(
            # Erased recipients (or rows older than [retention] outbox_days) have no address.
            func.coalesce(Subscriber.email, "(gelöscht)"),
            OutboxMessage.state,
            OutboxMessage.updated_at,
            OutboxMessage.last_code,
            OutboxMessage.last_reply,
            OutboxMessage.attempts,
            OutboxMessage.next_attempt_at,
        )
        .outerjoin(Subscriber, Subscriber.id == OutboxMessage.subscriber_id)
        .where(text(OUTBOX_TROUBLE))  # literal: matches the partial index ix_outbox_trouble
        .order_by(OutboxMessage.updated_at.desc(), OutboxMessage.id.desc())
        .limit(limit)
    )
    return [Failure(*r) for r in rows.all()]


# -- shared rate limits ----------------------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    """A configured rate limit as a token bucket: up to ``size`` tokens, refilled at
    ``per_second``."""

    name: str
    size: float
    per_second: float


async def take_tokens(
    session: AsyncSession, buckets: Sequence[Bucket], want: int, now: float
) -> tuple[int, float]:
    """Take up to ``want`` tokens from every bucket at once (as many as the emptiest allows).

    ``now`` is Unix time in seconds. Returns how many were granted and, if fewer than wanted,
    the seconds until the next token. The rows are locked (PostgreSQL) or the database is
    (SQLite) for the transaction, so processes taking at the same time never share a token."""
    by_name = {b.name: b for b in buckets}
    stmt = select(RateBucket).where(RateBucket.name.in_(by_name)).order_by(RateBucket.name)
    if _is_postgres(session):
        stmt = stmt.with_for_update()
    rows = list(await session.scalars(stmt))
    if len(rows) < len(by_name):
        # A new bucket starts full, like a limit nobody has used for a while.
        await session.execute(
            _insert(session)(RateBucket)
            .values([{"name": b.name, "tokens": b.size, "updated_at": now} for b in buckets])
            .on_conflict_do_nothing()
        )
        rows = list(await session.scalars(stmt))
    levels: dict[str, float] = {}
    for row in rows:
        bucket = by_name[row.name]
        # A clock behind another process's (several machines) adds nothing rather than less.
        elapsed = max(0.0, now - row.updated_at)
        levels[row.name] = min(bucket.size, row.tokens + elapsed * bucket.per_second)
    granted = max(0, min(want, *(math.floor(level + 1e-9) for level in levels.values())))
    for row in rows:
        row.tokens = levels[row.name] - granted
        row.updated_at = max(row.updated_at, now)
    wait = 0.0
    if granted < want:
        wait = max(
            (1.0 - row.tokens) / by_name[row.name].per_second for row in rows if row.tokens < 1
        )
    await session.flush()
    return granted, max(wait, 0.0)


async def give_back_tokens(
    session: AsyncSession, buckets: Sequence[Bucket], count: int, now: float
) -> None:
    """Return unused tokens (a stopping sender's), never above a bucket's size."""
    if count <= 0:
        return
    # The two-argument minimum: least() in PostgreSQL, min() in SQLite.
    smaller = func.least if _is_postgres(session) else func.min
    for bucket in buckets:
        await session.execute(
            update(RateBucket)
            .where(RateBucket.name == bucket.name)
            .values(tokens=smaller(bucket.size, RateBucket.tokens + count))
        )


async def keyless_counts(session: AsyncSession, prefix: str) -> dict[str, int]:
    """Per source, how many of its items carry a fallback key starting with ``prefix`` (feed
    entries with neither id nor link; see notifier.sources.feed.FALLBACK_PREFIX)."""
    rows = await session.execute(
        select(Item.source, func.count())
        .where(Item.source.is_not(None), Item.external_key.startswith(prefix, autoescape=True))
        .group_by(Item.source)
    )
    return {name: count for name, count in rows.all() if name is not None}


async def first_digests(session: AsyncSession, digest_ids: Sequence[int]) -> set[int]:
    """Of these briefings, those that are their subscriber's first (no earlier briefing of the
    same subscriber is on record)."""
    if not digest_ids:
        return set()
    earlier = aliased(Digest)
    rows = await session.scalars(
        select(Digest.id).where(
            Digest.id.in_(digest_ids),
            ~exists().where(earlier.subscriber_id == Digest.subscriber_id, earlier.id < Digest.id),
        )
    )
    return set(rows)


async def organisation_rows(session: AsyncSession) -> list[tuple[int, str, str, OrgKind, str]]:
    """Every unit as ``(id, key, name, kind, path)`` in tree order (by materialised path)."""
    rows = await session.execute(
        select(
            Organisation.id,
            Organisation.key,
            Organisation.name,
            Organisation.kind,
            Organisation.path,
        ).order_by(Organisation.path)
    )
    return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]
