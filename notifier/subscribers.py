"""Subscribers: CSV import (validated whole, then written in one transaction) and export."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from .addresses import normalise_email
from .audit import record
from .clock import utcnow
from .csvfiles import read_csv
from .db.models import Organisation, Rhythm, Role, Subscriber, SubscriberStatus, Subscription
from .errors import InputError, RowProblem
from .organisations import organisation_index

logger = logging.getLogger(__name__)

COLUMNS = ["email", "name", "role", "organisation", "topics", "rhythm"]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class SubscriberRow:
    line: int
    email: str
    name: str
    role: Role
    organisation: Organisation
    topics: tuple[str, ...]  # empty: all topics
    rhythm: Rhythm


class SubscriberData(Protocol):
    """What a new subscriber is made from: a CSV row, or the office's form."""

    @property
    def email(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def role(self) -> Role: ...
    @property
    def organisation(self) -> Organisation: ...
    @property
    def topics(self) -> tuple[str, ...]: ...  # empty: all topics
    @property
    def rhythm(self) -> Rhythm: ...


def active_subscriber(data: SubscriberData, now: datetime) -> Subscriber:
    """A new subscriber, active at once (imported, or entered by the office)."""
    return Subscriber(
        email=data.email,
        name=data.name,
        role=data.role,
        organisation_id=data.organisation.id,
        rhythm=data.rhythm,
        all_topics=not data.topics,
        status=SubscriberStatus.active,
        created_at=now,
        updated_at=now,
        subscriptions=[Subscription(topic_key=t) for t in data.topics],
    )


@dataclass
class ImportReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    # Unsubscribed or suppressed addresses: the file does not subscribe them again.
    kept_inactive: list[str] = field(default_factory=list)


def _check_row(
    line: int,
    row: dict[str, str],
    units: tuple[dict[str, Organisation], dict[str, Organisation]],
    topic_keys: set[str],
    problems: list[RowProblem],
) -> SubscriberRow | None:
    before = len(problems)
    email = ""
    try:
        email = normalise_email(row["email"])
    except ValueError as exc:
        problems.append(RowProblem(line, "email", f"{row['email']!r}: {exc}"))
    name = row["name"]
    if not name:
        problems.append(RowProblem(line, "name", "leer"))
    elif _CONTROL.search(name) or len(name) > 200:
        problems.append(RowProblem(line, "name", "Steuerzeichen oder länger als 200 Zeichen"))
    role = Role.__members__.get(row["role"])
    if role is None:
        allowed = ", ".join(Role.__members__)
        problems.append(RowProblem(line, "role", f"{row['role']!r} ist keine von {allowed}"))
    org = units[0].get(row["organisation"]) or units[1].get(row["organisation"])
    if org is None:
        problems.append(
            RowProblem(
                line,
                "organisation",
                f"{row['organisation']!r} ist weder Schlüssel noch Name einer Einheit",
            )
        )
    topics = tuple(sorted({t.strip() for t in re.split(r"[;,]", row["topics"]) if t.strip()}))
    unknown = [t for t in topics if t not in topic_keys]
    if unknown:
        problems.append(RowProblem(line, "topics", "unbekannte Themen: " + ", ".join(unknown)))
    rhythm = Rhythm.__members__.get(row["rhythm"])
    if rhythm is None:
        allowed = ", ".join(Rhythm.__members__)
        problems.append(RowProblem(line, "rhythm", f"{row['rhythm']!r} ist keiner von {allowed}"))
    if len(problems) > before or role is None or org is None or rhythm is None:
        return None
    return SubscriberRow(line, email, name, role, org, topics, rhythm)


async def parse_subscribers(
    session: AsyncSession, path: Path, topic_keys: set[str]
) -> list[SubscriberRow]:
    """Read and check a subscriber CSV against the stored tree and the known topics.

    Raises :class:`InputError` listing every bad row; nothing is returned half.
    """
    table = read_csv(path, COLUMNS)
    units = await organisation_index(session)
    problems: list[RowProblem] = list(table.problems)
    rows: list[SubscriberRow] = []
    first_line: dict[str, int] = {}
    for line, raw in table.rows:
        row = _check_row(line, raw, units, topic_keys, problems)
        if row is None:
            # Still note the address, so a later row with it is reported as a duplicate.
            with contextlib.suppress(ValueError):
                first_line.setdefault(normalise_email(raw["email"]), line)
            continue
        if row.email in first_line:
            problems.append(
                RowProblem(
                    line, "email", f"{row.email} steht schon in Zeile {first_line[row.email]}"
                )
            )
            continue
        first_line[row.email] = line
        rows.append(row)
    if problems:
        raise InputError(table.path, sorted(problems, key=lambda p: p.line))
    return rows


def _topics_of(sub: Subscriber) -> tuple[str, ...]:
    return () if sub.all_topics else tuple(sorted(s.topic_key for s in sub.subscriptions))


async def apply_subscribers(
    session: AsyncSession, rows: Sequence[SubscriberRow], *, actor: str, dry_run: bool = False
) -> ImportReport:
    """Insert new subscribers and update changed ones, in the caller's transaction.

    Importing the same rows twice changes nothing. With ``dry_run`` nothing is written.
    """
    report = ImportReport()
    existing = {
        s.email: s
        for s in (
            await session.scalars(
                select(Subscriber)
                .where(Subscriber.email.in_([r.email for r in rows]))
                .options(selectinload(Subscriber.subscriptions))
            )
        ).all()
    }
    now = utcnow()
    added: list[Subscriber] = []
    for row in rows:
        sub = existing.get(row.email)
        if sub is None:
            report.added.append(row.email)
            if dry_run:
                continue
            sub = active_subscriber(row, now)
            session.add(sub)
            added.append(sub)
            continue
        if sub.status is not SubscriberStatus.active:
            report.kept_inactive.append(row.email)
        before = (sub.name, sub.role, sub.organisation_id, sub.rhythm, _topics_of(sub))
        after = (row.name, row.role, row.organisation.id, row.rhythm, row.topics)
        if before == after:
            if sub.status is SubscriberStatus.active:
                report.unchanged.append(row.email)
            continue
        report.updated.append(row.email)
        if dry_run:
            continue
        sub.name, sub.role, sub.organisation_id, sub.rhythm = (
            row.name,
            row.role,
            row.organisation.id,
            row.rhythm,
        )
        sub.all_topics = not row.topics
        sub.subscriptions = [Subscription(topic_key=t) for t in row.topics]
        sub.updated_at = now
        changed = [
            c
            for c, b, a in zip(
                ("name", "role", "organisation", "rhythm", "topics"), before, after, strict=True
            )
            if b != a
        ]
        await record(
            session,
            actor,
            "subscriber.updated",
            "subscriber",
            sub.id,
            {"email": row.email, "changed": changed},
        )
    if added:
        # One flush for all new rows (batched INSERTs) gives them their ids for the audit log;
        # a flush per row made an import of 10,000 rows take half a minute.
        await session.flush()
        for sub in added:
            await record(
                session, actor, "subscriber.imported", "subscriber", sub.id, {"email": sub.email}
            )
    await session.flush()
    return report


async def import_subscribers(
    session: AsyncSession, path: Path, topic_keys: set[str], *, actor: str, dry_run: bool = False
) -> ImportReport:
    """Check a whole CSV file, then apply it; raises :class:`InputError` and writes nothing if
    any row is bad."""
    rows = await parse_subscribers(session, path, topic_keys)
    return await apply_subscribers(session, rows, actor=actor, dry_run=dry_run)


async def export_subscribers(session: AsyncSession) -> str:
    """Active subscribers as CSV in the import format (UTF-8, ',' separated)."""
    subs = (
        await session.scalars(
            select(Subscriber)
            .where(Subscriber.status == SubscriberStatus.active)
            .options(selectinload(Subscriber.subscriptions), selectinload(Subscriber.organisation))
            .order_by(Subscriber.email)
        )
    ).all()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for s in subs:
        writer.writerow(
            [
                s.email,
                s.name,
                s.role.value,
                s.organisation.key,
                ";".join(_topics_of(s)),
                s.rhythm.value,
            ]
        )
    return out.getvalue()
