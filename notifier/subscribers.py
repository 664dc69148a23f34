"""Subscribers: CSV import (checked whole, then written in one transaction) and export."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from .addresses import AddressError, display_email, normalise_email
from .audit import record
from .clock import utcnow
from .csvfiles import FirstLines, Problems, csv_text, read_csv
from .db.erasure import erased_among
from .db.models import (
    LegalBasis,
    Organisation,
    Rhythm,
    Role,
    Subscriber,
    SubscriberSource,
    SubscriberStatus,
    Subscription,
)
from .errors import InputError, RowProblem
from .organisations import organisation_index

logger = logging.getLogger(__name__)

COLUMNS = ["email", "name", "role", "organisation", "topics", "rhythm"]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Rows applied per step of an import: a chunk's objects are freed once it is written.
CHUNK_ROWS = 500


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


def active_subscriber(
    data: SubscriberData, now: datetime, *, source: SubscriberSource, actor: str
) -> Subscriber:
    """A new subscriber, active at once (imported, or entered by the office or the API): held
    for the authority's public task (DSGVO art. 6(1)(e)), with ``source`` and ``actor`` as its
    provenance."""
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
        basis=LegalBasis.public_task,
        source=source,
        actor=actor[:200],
    )


@dataclass
class ImportReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    # Unsubscribed or suppressed addresses: the file does not subscribe them again.
    kept_inactive: list[str] = field(default_factory=list)
    # Rows of people who were erased (see notifier.erasure): skipped, not added again.
    skipped_erased: list[ErasedRow] = field(default_factory=list)


@dataclass(frozen=True)
class ErasedRow:
    """A skipped row whose address belongs to an erased person."""

    line: int
    email: str
    reason: str  # notifier.erasure.REQUEST or RETENTION

    @property
    def message(self) -> str:
        """The German line of the import report."""
        why = (
            "diese Person hat die Löschung ihrer Daten verlangt"
            if self.reason == "request"
            else "diese Person hatte sich abgemeldet; ihre Daten wurden nach Ablauf der Frist "
            "gelöscht"
        )
        return (
            f"Zeile {self.line}: {display_email(self.email)} übersprungen – {why}. "
            "Neu aufnehmen nur mit ihrer Anmeldung unter /anmelden."
        )


Units = tuple[dict[str, Organisation], dict[str, Organisation]]  # by key, by name


def _check_row(
    line: int, row: dict[str, str], units: Units, topic_keys: set[str], problems: Problems
) -> tuple[str, SubscriberRow | None]:
    """The row's normalised address ("" if it is not valid), and the row if nothing is wrong
    with it; each problem goes to ``problems``."""
    before = len(problems)
    email = ""
    try:
        email = normalise_email(row["email"])
    except AddressError as exc:
        problems.add(RowProblem(line, "email", f"{row['email']!r}: {exc}"))
    name = row["name"]
    if not name:
        problems.add(RowProblem(line, "name", "leer"))
    elif _CONTROL.search(name) or len(name) > 200:
        problems.add(RowProblem(line, "name", "Steuerzeichen oder länger als 200 Zeichen"))
    role = Role.__members__.get(row["role"])
    if role is None:
        allowed = ", ".join(Role.__members__)
        problems.add(RowProblem(line, "role", f"{row['role']!r} ist keine von {allowed}"))
    org = units[0].get(row["organisation"]) or units[1].get(row["organisation"])
    if org is None:
        problems.add(
            RowProblem(
                line,
                "organisation",
                f"{row['organisation']!r} ist weder Schlüssel noch Name einer Einheit",
            )
        )
    topics = tuple(sorted({t.strip() for t in re.split(r"[;,]", row["topics"]) if t.strip()}))
    unknown = [t for t in topics if t not in topic_keys]
    if unknown:
        problems.add(RowProblem(line, "topics", "unbekannte Themen: " + ", ".join(unknown)))
    rhythm = Rhythm.__members__.get(row["rhythm"])
    if rhythm is None:
        allowed = ", ".join(Rhythm.__members__)
        problems.add(RowProblem(line, "rhythm", f"{row['rhythm']!r} ist keiner von {allowed}"))
    if len(problems) > before or role is None or org is None or rhythm is None:
        return email, None
    return email, SubscriberRow(line, email, name, role, org, topics, rhythm)


def _check_file(path: Path, units: Units, topic_keys: set[str]) -> None:
    """The first pass over a subscriber CSV: check every row against the stored tree and the
    known topics, and find addresses that occur twice. Keeps no rows.

    Raises :class:`InputError` listing the bad rows.
    """
    problems = Problems()
    with read_csv(path, COLUMNS) as table, FirstLines() as seen:
        for record in table:
            if isinstance(record, RowProblem):
                problems.add(record)
                continue
            line, raw = record
            email, row = _check_row(line, raw, units, topic_keys, problems)
            # A bad row's address counts too, so a later row with it is reported as a duplicate.
            first = seen.note(email, line) if email else None
            if first is not None and row is not None:
                problems.add(RowProblem(line, "email", f"{email} steht schon in Zeile {first}"))
    problems.raise_if_any(table.path)


def _rows(path: Path, units: Units, topic_keys: set[str]) -> Generator[SubscriberRow]:
    """The second pass: the rows of a file that :func:`_check_file` passed. They are checked
    again, in case the file changed in between; :class:`InputError` then ends the import."""
    problems = Problems()
    with read_csv(path, COLUMNS) as table:
        for record in table:
            if isinstance(record, RowProblem):
                problems.add(record)
                continue
            _, row = _check_row(*record, units, topic_keys, problems)
            if row is not None:
                yield row
    problems.raise_if_any(table.path)


def _version(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError as exc:
        raise InputError(str(path), [], f"{path}: Datei nicht lesbar: {exc.strerror}") from exc
    return stat.st_size, stat.st_mtime_ns


def _topics_of(sub: Subscriber) -> tuple[str, ...]:
    return () if sub.all_topics else tuple(sorted(s.topic_key for s in sub.subscriptions))


async def _apply(
    session: AsyncSession,
    rows: Sequence[SubscriberRow],
    report: ImportReport,
    *,
    actor: str,
    file_name: str,
    now: datetime,
    dry_run: bool,
) -> None:
    """Insert the new subscribers among ``rows`` and update the changed ones; counts them in
    ``report``. With ``dry_run`` nothing is written. New subscribers' provenance names the
    actor and the file."""
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
    erased = await erased_among(session, [r.email for r in rows if r.email not in existing])
    added: list[Subscriber] = []
    for row in rows:
        sub = existing.get(row.email)
        if sub is None and row.email in erased:
            # Skipped with a line in the report rather than refusing the file: the office's
            # list is usually older than the person's request, and every other row is good.
            report.skipped_erased.append(ErasedRow(row.line, row.email, erased[row.email]))
            continue
        if sub is None:
            report.added += 1
            if dry_run:
                continue
            sub = active_subscriber(
                row, now, source=SubscriberSource.csv_import, actor=f"{actor} ({file_name})"
            )
            session.add(sub)
            added.append(sub)
            continue
        if sub.status is not SubscriberStatus.active:
            report.kept_inactive.append(row.email)
        before = (sub.name, sub.role, sub.organisation_id, sub.rhythm, _topics_of(sub))
        after = (row.name, row.role, row.organisation.id, row.rhythm, row.topics)
        if before == after:
            if sub.status is SubscriberStatus.active:
                report.unchanged += 1
            continue
        report.updated += 1
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
        # One flush for the chunk's new rows (batched INSERTs) gives them their ids for the
        # audit log; a flush per row made an import of 10,000 rows take half a minute.
        await session.flush()
        for sub in added:
            await record(
                session, actor, "subscriber.imported", "subscriber", sub.id, {"email": sub.email}
            )
    # Written now, the chunk's objects are no longer held by the session and can be freed.
    await session.flush()


async def import_subscribers(
    session: AsyncSession,
    path: Path,
    topic_keys: set[str],
    *,
    actor: str,
    file_name: str | None = None,
    dry_run: bool = False,
) -> ImportReport:
    """Import a subscriber CSV in the caller's transaction: new addresses are added, changed
    ones updated; importing the same file twice changes nothing. With ``dry_run`` nothing is
    written. New subscribers are recorded as imported by ``actor`` from ``file_name`` (default:
    the file's own name; an upload names the file the user chose).

    Raises :class:`InputError` listing the bad rows, before anything is written, if any row is
    bad. The file is read twice, a row at a time: first every row is checked (keeping only the
    addresses, on disk, to find duplicates), then the rows are applied in chunks of
    :data:`CHUNK_ROWS`; memory stays flat whatever the size of the file. Should the file change
    in between, :class:`InputError` says so and the caller's rollback undoes the chunks.
    """
    units = await organisation_index(session)
    version = await asyncio.to_thread(_version, path)
    await asyncio.to_thread(_check_file, path, units, topic_keys)
    report = ImportReport()
    now = utcnow()
    with contextlib.closing(_rows(path, units, topic_keys)) as rows:
        # Reading and checking a chunk takes a while: in a thread, the web application keeps
        # answering meanwhile.
        while chunk := await asyncio.to_thread(list, itertools.islice(rows, CHUNK_ROWS)):
            await _apply(
                session,
                chunk,
                report,
                actor=actor,
                file_name=file_name or path.name,
                now=now,
                dry_run=dry_run,
            )
    if await asyncio.to_thread(_version, path) != version:
        raise InputError(
            str(path),
            [],
            f"{path}: Die Datei wurde während des Imports geändert; nichts wurde gespeichert. "
            "Bitte noch einmal importieren.",
        )
    return report


async def export_subscribers(session: AsyncSession, *, excel: bool = False) -> str:
    """Active subscribers as CSV in the import format: UTF-8, ','-separated, or with ``excel``
    the ';'-separated form with BOM that German Excel opens directly (both import again).
    Cells that a spreadsheet would run as a formula start with ``'`` (see
    :func:`~notifier.csvfiles.neutralised`; the import drops it again)."""
    subs = (
        await session.scalars(
            select(Subscriber)
            .where(Subscriber.status == SubscriberStatus.active)
            .options(selectinload(Subscriber.subscriptions), selectinload(Subscriber.organisation))
            .order_by(Subscriber.email)
        )
    ).all()
    rows = [
        [
            s.email,
            s.name,
            s.role.value,
            s.organisation.key,
            ";".join(_topics_of(s)),
            s.rhythm.value,
        ]
        for s in subs
    ]
    return csv_text([COLUMNS, *rows], excel=excel)
