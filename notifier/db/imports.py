"""The statements of a subscriber import (:mod:`notifier.subscribers`), as synchronous SQLAlchemy
Core: the rows are checked before, without any lock; this writes them, a chunk at a time, inside
one transaction that :meth:`Database.write` runs in a worker thread (so SQLite's write lock is
held for the statements, seconds for 100,000 rows, not for a minute of ORM work on a busy event
loop while the senders wait)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import cast

from sqlalchemy import Connection, Table, delete, insert, select, update

from .erasure import address_hash
from .models import (
    AuditEntry,
    ErasedAddress,
    LegalBasis,
    Rhythm,
    Role,
    Subscriber,
    SubscriberSource,
    SubscriberStatus,
    Subscription,
)

_SUBSCRIBERS = cast(Table, Subscriber.__table__)
_S = _SUBSCRIBERS.c
_SUBSCRIPTIONS = cast(Table, Subscription.__table__)
_AUDIT = cast(Table, AuditEntry.__table__)


@dataclass(frozen=True)
class ImportRow:
    """One checked row of an import file."""

    line: int
    email: str  # normalised
    name: str
    role: Role
    organisation_id: int
    topics: tuple[str, ...]  # sorted; empty: all topics
    rhythm: Rhythm


@dataclass
class ChunkOutcome:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    kept_inactive: list[str] = field(default_factory=list)
    skipped_erased: list[tuple[int, str, str]] = field(default_factory=list)  # line, email, why


def apply_chunk(
    connection: Connection,
    rows: Sequence[ImportRow],
    *,
    salt: bytes,
    actor: str,
    provenance: str,
    now: datetime,
    dry_run: bool,
) -> ChunkOutcome:
    """Insert the new subscribers among ``rows`` and update the changed ones, with their audit
    entries; with ``dry_run`` only count. Erased people's rows are skipped and listed.
    ``provenance`` is the new subscribers' ``actor`` (who, from which file)."""
    outcome = ChunkOutcome()
    emails = [r.email for r in rows]
    existing = {
        row.email: row
        for row in connection.execute(
            select(
                _S.id,
                _S.email,
                _S.name,
                _S.role,
                _S.organisation_id,
                _S.rhythm,
                _S.all_topics,
                _S.status,
            ).where(_S.email.in_(emails))
        )
    }
    topics: dict[int, list[str]] = {}
    if existing:
        for subscriber_id, key in connection.execute(
            select(_SUBSCRIPTIONS.c.subscriber_id, _SUBSCRIPTIONS.c.topic_key)
            .where(_SUBSCRIPTIONS.c.subscriber_id.in_([r.id for r in existing.values()]))
            .order_by(_SUBSCRIPTIONS.c.topic_key)
        ):
            topics.setdefault(subscriber_id, []).append(key)
    by_hash = {address_hash(salt, e): e for e in emails if e not in existing}
    erased: dict[str, str] = {}
    if by_hash:
        erased = {
            by_hash[h]: reason
            for h, reason in connection.execute(
                select(ErasedAddress.address_hash, ErasedAddress.reason).where(
                    ErasedAddress.address_hash.in_(list(by_hash))
                )
            )
        }
    new: list[ImportRow] = []
    for row in rows:
        sub = existing.get(row.email)
        if sub is None:
            if row.email in erased:
                # Skipped with a line in the report rather than refusing the file: the
                # office's list is usually older than the person's request.
                outcome.skipped_erased.append((row.line, row.email, erased[row.email]))
            else:
                new.append(row)
            continue
        if sub.status is not SubscriberStatus.active:
            outcome.kept_inactive.append(row.email)
        had = () if sub.all_topics else tuple(topics.get(sub.id, ()))
        before = (sub.name, sub.role, sub.organisation_id, sub.rhythm, had)
        after = (row.name, row.role, row.organisation_id, row.rhythm, row.topics)
        if before == after:
            if sub.status is SubscriberStatus.active:
                outcome.unchanged += 1
            continue
        outcome.updated += 1
        if dry_run:
            continue
        connection.execute(
            update(_SUBSCRIBERS)
            .where(_S.id == sub.id)
            .values(
                name=row.name,
                role=row.role,
                organisation_id=row.organisation_id,
                rhythm=row.rhythm,
                all_topics=not row.topics,
                updated_at=now,
            )
        )
        if had != row.topics:
            connection.execute(
                delete(_SUBSCRIPTIONS).where(_SUBSCRIPTIONS.c.subscriber_id == sub.id)
            )
            if row.topics:
                connection.execute(
                    insert(_SUBSCRIPTIONS),
                    [{"subscriber_id": sub.id, "topic_key": t} for t in row.topics],
                )
        changed = [
            c
            for c, b, a in zip(
                ("name", "role", "organisation", "rhythm", "topics"), before, after, strict=True
            )
            if b != a
        ]
        _audit(connection, actor, "subscriber.updated", [(sub.id, row.email, changed)], now)
    outcome.added = len(new)
    if new and not dry_run:
        _insert_new(connection, new, actor=actor, provenance=provenance, now=now)
    return outcome


def _insert_new(
    connection: Connection,
    rows: Sequence[ImportRow],
    *,
    actor: str,
    provenance: str,
    now: datetime,
) -> None:
    """The new subscribers (active at once, held for the authority's public task, DSGVO art.
    6(1)(e)), their topics and an audit entry each: one batched INSERT per table."""
    ids = (
        connection.execute(
            insert(_SUBSCRIBERS).returning(_S.id, sort_by_parameter_order=True),
            [
                {
                    "email": r.email,
                    "name": r.name,
                    "role": r.role,
                    "organisation_id": r.organisation_id,
                    "rhythm": r.rhythm,
                    "all_topics": not r.topics,
                    "status": SubscriberStatus.active,
                    "created_at": now,
                    "updated_at": now,
                    "token_version": 0,
                    "basis": LegalBasis.public_task,
                    "source": SubscriberSource.csv_import,
                    "actor": provenance[:200],
                }
                for r in rows
            ],
        )
        .scalars()
        .all()
    )
    chosen = [
        {"subscriber_id": i, "topic_key": t}
        for i, r in zip(ids, rows, strict=True)
        for t in r.topics
    ]
    if chosen:
        connection.execute(insert(_SUBSCRIPTIONS), chosen)
    connection.execute(
        insert(_AUDIT),
        [
            {
                "at": now,
                "actor": actor,
                "action": "subscriber.imported",
                "entity": "subscriber",
                "entity_id": str(i),
                "details": {"email": r.email},
            }
            for i, r in zip(ids, rows, strict=True)
        ],
    )


def _audit(
    connection: Connection,
    actor: str,
    action: str,
    entries: Sequence[tuple[int, str, list[str]]],
    now: datetime,
) -> None:
    connection.execute(
        insert(_AUDIT),
        [
            {
                "at": now,
                "actor": actor,
                "action": action,
                "entity": "subscriber",
                "entity_id": str(i),
                "details": {"email": email, "changed": changed},
            }
            for i, email, changed in entries
        ],
    )
