"""Subscribers: CSV import (checked whole without any lock, then written in one short
transaction) and export."""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy import Connection, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from .addresses import AddressError, display_email, normalise_email
from .clock import utcnow
from .csvfiles import FirstLines, Problems, csv_text, read_csv
from .db import Database
from .db.erasure import erasure_salt
from .db.imports import ImportRow, apply_chunk
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
from .errors import RowProblem
from .organisations import organisation_index

logger = logging.getLogger(__name__)

COLUMNS = ["email", "name", "role", "organisation", "topics", "rhythm"]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Rows written per statement batch of an import.
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


class _Spool:
    """The checked rows of a file, kept in a private temporary SQLite file that is deleted on
    close: the check reads the file once, without any lock, and the write reads the rows back
    in chunks. Memory stays flat however many rows a file has."""

    def __init__(self) -> None:
        # Filled in one worker thread, read in another.
        self._db = sqlite3.connect("", check_same_thread=False)  # "": a private temporary file
        self._db.execute(
            "CREATE TABLE rows (line INTEGER PRIMARY KEY, email TEXT, name TEXT, role TEXT, "
            "organisation_id INTEGER, topics TEXT, rhythm TEXT)"
        )
        self._pending: list[tuple[int, str, str, str, int, str, str]] = []

    def add(self, row: ImportRow) -> None:
        self._pending.append(
            (
                row.line,
                row.email,
                row.name,
                row.role.value,
                row.organisation_id,
                "\n".join(row.topics),
                row.rhythm.value,
            )
        )
        if len(self._pending) >= CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        self._db.executemany("INSERT INTO rows VALUES (?, ?, ?, ?, ?, ?, ?)", self._pending)
        self._pending.clear()

    def chunks(self) -> Iterator[list[ImportRow]]:
        self.flush()
        after = 0
        while rows := self._db.execute(
            "SELECT * FROM rows WHERE line > ? ORDER BY line LIMIT ?", (after, CHUNK_ROWS)
        ).fetchall():
            yield [
                ImportRow(
                    line,
                    email,
                    name,
                    Role(role),
                    organisation_id,
                    tuple(topics.split("\n")) if topics else (),
                    Rhythm(rhythm),
                )
                for line, email, name, role, organisation_id, topics, rhythm in rows
            ]
            after = rows[-1][0]

    def close(self) -> None:
        self._db.close()


def _check_file(path: Path, units: Units, topic_keys: set[str]) -> _Spool:
    """Check every row of a subscriber CSV against the stored tree and the known topics, and
    find addresses that occur twice; the checked rows go to a spool (one pass over the file, in
    a worker thread, before any transaction).

    Raises :class:`InputError` listing the bad rows.
    """
    problems = Problems()
    spool = _Spool()
    try:
        with read_csv(path, COLUMNS) as table, FirstLines() as seen:
            for record in table:
                if isinstance(record, RowProblem):
                    problems.add(record)
                    continue
                line, raw = record
                email, row = _check_row(line, raw, units, topic_keys, problems)
                # A bad row's address counts too, so a later row with it is reported as a
                # duplicate.
                first = seen.note(email, line) if email else None
                if first is not None and row is not None:
                    problems.add(RowProblem(line, "email", f"{email} steht schon in Zeile {first}"))
                elif row is not None and not problems.count:
                    spool.add(
                        ImportRow(
                            row.line,
                            row.email,
                            row.name,
                            row.role,
                            row.organisation.id,
                            row.topics,
                            row.rhythm,
                        )
                    )
        problems.raise_if_any(table.path)
    except BaseException:
        spool.close()
        raise
    return spool


def _write(
    connection: Connection,
    spool: _Spool,
    *,
    salt: bytes,
    actor: str,
    provenance: str,
    now: datetime,
    dry_run: bool,
) -> ImportReport:
    """Every spooled row, a chunk at a time, in the caller's one transaction."""
    report = ImportReport()
    for chunk in spool.chunks():
        done = apply_chunk(
            connection,
            chunk,
            salt=salt,
            actor=actor,
            provenance=provenance,
            now=now,
            dry_run=dry_run,
        )
        report.added += done.added
        report.updated += done.updated
        report.unchanged += done.unchanged
        report.kept_inactive.extend(done.kept_inactive)
        report.skipped_erased.extend(ErasedRow(*e) for e in done.skipped_erased)
    return report


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
    bad. The file is read once, a row at a time, in a worker thread (the checked rows wait in
    a temporary file, so memory stays flat whatever the size of the file); then the rows are
    written with batched statements. The web application uses :func:`import_file`, which does
    the same with the write transaction in a worker thread.
    """
    units = await organisation_index(session)
    salt = await erasure_salt(session)
    spool = await asyncio.to_thread(_check_file, path, units, topic_keys)
    try:
        provenance = f"{actor} ({file_name or path.name})"
        return await session.run_sync(
            lambda sync: _write(
                sync.connection(),
                spool,
                salt=salt,
                actor=actor,
                provenance=provenance,
                now=utcnow(),
                dry_run=dry_run,
            )
        )
    finally:
        spool.close()


async def import_file(
    db: Database,
    path: Path,
    topic_keys: set[str],
    *,
    actor: str,
    file_name: str | None = None,
    dry_run: bool = False,
) -> ImportReport:
    """:func:`import_subscribers` in a transaction of its own, for a running service (the
    office's upload): the file is read and checked in a worker thread before any transaction,
    then written in ONE transaction that runs whole in a worker thread
    (:meth:`Database.write`), so the senders and the web pages wait for the database only
    while the rows are written, and an import is still all or nothing."""
    async with db.reading() as session:
        units = await organisation_index(session)
        salt = await erasure_salt(session)
    spool = await asyncio.to_thread(_check_file, path, units, topic_keys)
    try:
        provenance = f"{actor} ({file_name or path.name})"

        def work(connection: Connection) -> ImportReport:
            return _write(
                connection,
                spool,
                salt=salt,
                actor=actor,
                provenance=provenance,
                now=utcnow(),
                dry_run=dry_run,
            )

        return await (db.read(work) if dry_run else db.write(work))
    finally:
        spool.close()


def _topics_of(sub: Subscriber) -> tuple[str, ...]:
    return () if sub.all_topics else tuple(sorted(s.topic_key for s in sub.subscriptions))


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
