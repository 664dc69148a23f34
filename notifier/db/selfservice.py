"""The statements of the personal-link pages (preferences, one-click unsubscribe), as synchronous
SQLAlchemy Core for :meth:`Database.read` and :meth:`Database.write`.

These pages are what thousands of people open in the minutes after a big announcement, while the
same service is still sending. So each request reads in one small transaction on the event loop
(``Database.read(inline=True)``) and writes in one, with plain rows instead of ORM objects, and
holds SQLite's write lock only for its own statements (see :meth:`Database.write`); the
one-click unsubscribes of a moment share one transaction (:func:`unsubscribe_many`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, delete, insert, select, update

from .models import (
    AuditEntry,
    BriefingQueue,
    OutboxMessage,
    OutboxState,
    Rhythm,
    Role,
    Subscriber,
    SubscriberStatus,
    Subscription,
)
from .queries import id_chunks

_SUBSCRIBERS = cast(Table, Subscriber.__table__)
_S = _SUBSCRIBERS.c
_SUBSCRIPTIONS = cast(Table, Subscription.__table__)
_OUTBOX = cast(Table, OutboxMessage.__table__)
_AUDIT = cast(Table, AuditEntry.__table__)
_BRIEFING = cast(Table, BriefingQueue.__table__)

# Whose messages are no longer wanted: no longer sent to, and the links show a notice instead.
GONE = (SubscriberStatus.unsubscribed, SubscriberStatus.suppressed)


@dataclass(frozen=True)
class PersonalRow:
    """A subscriber as the personal-link pages show and change them."""

    id: int
    email: str
    name: str
    role: Role
    organisation_id: int
    rhythm: Rhythm
    all_topics: bool
    status: SubscriberStatus
    token_version: int
    updated_at: datetime
    topics: tuple[str, ...]  # the chosen topics' keys, sorted (empty with all_topics)


# The subscribers' columns of a PersonalRow (its topics come from subscriptions).
_PERSONAL_COLUMNS = (
    _S.id,
    _S.email,
    _S.name,
    _S.role,
    _S.organisation_id,
    _S.rhythm,
    _S.all_topics,
    _S.status,
    _S.token_version,
    _S.updated_at,
)


def subscriber(
    connection: Connection, subscriber_id: int, *, topics: bool = True
) -> PersonalRow | None:
    """The subscriber with their topics (without: ``topics`` is empty; None if there is no
    such subscriber)."""
    row = connection.execute(select(*_PERSONAL_COLUMNS).where(_S.id == subscriber_id)).one_or_none()
    if row is None:
        return None
    values: dict[str, Any] = dict(row._mapping)
    if not topics:
        return PersonalRow(**values, topics=())
    return PersonalRow(
        **values,
        topics=tuple(
            connection.execute(
                select(_SUBSCRIPTIONS.c.topic_key)
                .where(_SUBSCRIPTIONS.c.subscriber_id == subscriber_id)
                .order_by(_SUBSCRIPTIONS.c.topic_key)
            ).scalars()
        ),
    )


def audit(
    connection: Connection,
    actor: str,
    action: str,
    subscriber_id: int,
    details: dict[str, Any],
    *,
    at: datetime,
) -> None:
    """One audit entry about a subscriber, in the caller's transaction."""
    connection.execute(
        insert(_AUDIT).values(
            at=at,
            actor=actor,
            action=action,
            entity="subscriber",
            entity_id=str(subscriber_id),
            details=details,
        )
    )


def _set_status(
    connection: Connection, subscriber_id: int, status: SubscriberStatus, now: datetime
) -> None:
    connection.execute(
        update(_SUBSCRIBERS).where(_S.id == subscriber_id).values(status=status, updated_at=now)
    )


def stop_pending_mail(connection: Connection, subscriber_id: int, now: datetime) -> int:
    """Cancel the subscriber's messages not yet on their way (announcements and briefings, not
    service mail), and empty their briefing queue; returns how many messages were cancelled."""
    return _stop_pending_mail(connection, [subscriber_id], now)[subscriber_id]


def _stop_pending_mail(
    connection: Connection, subscriber_ids: Sequence[int], now: datetime
) -> Counter[int]:
    """:func:`stop_pending_mail` for several subscribers: cancelled messages per subscriber."""
    cancelled = connection.execute(
        update(_OUTBOX)
        .where(
            _OUTBOX.c.subscriber_id.in_(subscriber_ids),
            _OUTBOX.c.state.in_((OutboxState.queued, OutboxState.deferred)),
            (_OUTBOX.c.item_id.is_not(None)) | (_OUTBOX.c.digest_id.is_not(None)),
        )
        .values(state=OutboxState.cancelled, updated_at=now, last_reply="abgemeldet")
        .returning(_OUTBOX.c.subscriber_id)
    ).scalars()
    counts = Counter(cancelled)
    connection.execute(delete(_BRIEFING).where(_BRIEFING.c.subscriber_id.in_(subscriber_ids)))
    return counts


@dataclass(frozen=True)
class Unsubscribe:
    """One unsubscribe by a personal link: who (and the link's ``token_version``), how, from
    where and when."""

    subscriber_id: int
    version: int
    how: str
    ip: str
    at: datetime


def unsubscribe_many(
    connection: Connection, requests: Sequence[Unsubscribe]
) -> list[tuple[PersonalRow | None, bool]]:
    """Unsubscribe several people in one transaction (idempotent). Per request: the subscriber
    as they were before (None: there is no such subscriber) and whether this request changed
    them. A link of another ``token_version`` changes nothing (the caller refuses it), nor does
    a second request for the same person. Messages not yet on their way are cancelled in the
    same transaction, and each change gets its audit entry.

    One statement of each kind for the whole batch: a one-click storm's unsubscribes hold the
    write lock once per batch, not once per click (see ``notifier.web.unsubscribes``)."""
    ids = sorted({r.subscriber_id for r in requests})
    before: dict[int, PersonalRow] = {}
    for chunk in id_chunks(ids):
        for row in connection.execute(select(*_PERSONAL_COLUMNS).where(_S.id.in_(chunk))):
            before[row.id] = PersonalRow(**row._mapping, topics=())
    changing: dict[int, Unsubscribe] = {}
    results: list[tuple[PersonalRow | None, bool]] = []
    for request in requests:
        sub = before.get(request.subscriber_id)
        changes = (
            sub is not None
            and sub.token_version == request.version
            and sub.status not in GONE
            and sub.id not in changing
        )
        if changes:
            changing[request.subscriber_id] = request
        results.append((sub, changes))
    if not changing:
        return results
    now = max(r.at for r in changing.values())
    cancelled: Counter[int] = Counter()
    for chunk in id_chunks(list(changing)):
        connection.execute(
            update(_SUBSCRIBERS)
            .where(_S.id.in_(chunk))
            .values(status=SubscriberStatus.unsubscribed, updated_at=now)
        )
        cancelled.update(_stop_pending_mail(connection, chunk, now))
    connection.execute(
        insert(_AUDIT),
        [
            {
                "at": r.at,
                "actor": "web",
                "action": "unsubscribe",
                "entity": "subscriber",
                "entity_id": str(r.subscriber_id),
                "details": {"how": r.how, "ip": r.ip, "cancelled": cancelled[r.subscriber_id]},
            }
            for r in changing.values()
        ],
    )
    return results


def pause(connection: Connection, sub: PersonalRow, *, now: datetime) -> None:
    if sub.status is SubscriberStatus.active:
        _set_status(connection, sub.id, SubscriberStatus.paused, now)
        cancelled = stop_pending_mail(connection, sub.id, now)
        audit(connection, "web", "pause", sub.id, {"cancelled": cancelled}, at=now)


def resume(connection: Connection, sub: PersonalRow, *, now: datetime) -> None:
    if sub.status is SubscriberStatus.paused:
        _set_status(connection, sub.id, SubscriberStatus.active, now)
        audit(connection, "web", "resume", sub.id, {}, at=now)


def update_preferences(
    connection: Connection,
    sub: PersonalRow,
    *,
    name: str,
    organisation_id: int,
    role: Role,
    rhythm: Rhythm,
    topics: tuple[str, ...],
    now: datetime,
) -> None:
    """Store the subscriber's new choices (``topics`` empty: every topic)."""
    before = {
        "name": sub.name,
        "organisation": sub.organisation_id,
        "role": sub.role.value,
        "rhythm": sub.rhythm.value,
        "topics": [] if sub.all_topics else list(sub.topics),
    }
    connection.execute(
        update(_SUBSCRIBERS)
        .where(_S.id == sub.id)
        .values(
            name=name,
            organisation_id=organisation_id,
            role=role,
            rhythm=rhythm,
            all_topics=not topics,
            updated_at=now,
        )
    )
    connection.execute(delete(_SUBSCRIPTIONS).where(_SUBSCRIPTIONS.c.subscriber_id == sub.id))
    if topics:
        connection.execute(
            insert(_SUBSCRIPTIONS), [{"subscriber_id": sub.id, "topic_key": t} for t in topics]
        )
    audit(connection, "web", "preferences", sub.id, {"before": before}, at=now)
