"""The statements of the personal-link pages (preferences, one-click unsubscribe), as synchronous
SQLAlchemy Core for :meth:`Database.read` and :meth:`Database.write`.

These pages are what thousands of people open in the minutes after a big announcement, while the
same service is still sending. So each request reads in one worker-thread transaction and writes
in one, with plain rows instead of ORM objects, and holds SQLite's write lock only for its own
statements (see :meth:`notifier.db.engine.Database.write`).
"""

from __future__ import annotations

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


def subscriber(
    connection: Connection, subscriber_id: int, *, topics: bool = True
) -> PersonalRow | None:
    """The subscriber with their topics (without: ``topics`` is empty; None if there is no
    such subscriber)."""
    row = connection.execute(
        select(
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
        ).where(_S.id == subscriber_id)
    ).one_or_none()
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
    result = connection.execute(
        update(_OUTBOX)
        .where(
            _OUTBOX.c.subscriber_id == subscriber_id,
            _OUTBOX.c.state.in_((OutboxState.queued, OutboxState.deferred)),
            (_OUTBOX.c.item_id.is_not(None)) | (_OUTBOX.c.digest_id.is_not(None)),
        )
        .values(state=OutboxState.cancelled, updated_at=now, last_reply="abgemeldet")
    )
    connection.execute(delete(_BRIEFING).where(_BRIEFING.c.subscriber_id == subscriber_id))
    return result.rowcount


def unsubscribe(
    connection: Connection, sub: PersonalRow, *, how: str, ip: str, now: datetime
) -> bool:
    """Unsubscribe at once (idempotent); returns whether anything changed. Messages not yet on
    their way are cancelled in the same transaction."""
    if sub.status in GONE:
        return False
    _set_status(connection, sub.id, SubscriberStatus.unsubscribed, now)
    cancelled = stop_pending_mail(connection, sub.id, now)
    audit(
        connection,
        "web",
        "unsubscribe",
        sub.id,
        {"how": how, "ip": ip, "cancelled": cancelled},
        at=now,
    )
    return True


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
