"""Moving a SQLite database to PostgreSQL: ``notifier db copy --to postgresql+asyncpg://…``.

Every table of the metadata (:mod:`notifier.db.models`) is copied in dependency order, so a
table added to the models is copied without a change here. Rows keep their ids; PostgreSQL's
sequences are set past the largest id afterwards. The target's schema is first brought to the
same migration as the source (Alembic); then the rows are written in one transaction, so a
failure leaves the target as empty as it was. Rows are read and written in batches: memory does
not grow with the database.

The copy runs only while no service uses the SQLite file (its lock, :mod:`notifier.db.lockfile`,
is held for the whole copy). Afterwards every table is counted on both sides; a difference
fails the copy (and rolls it back).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Table, bindparam, func, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from ..errors import NotifierError
from .backup import verify
from .engine import Database, head_revision, is_postgres_url, sqlite_path
from .failures import database_error, where
from .lockfile import ServiceLock, ServiceLockedError
from .models import Base

logger = logging.getLogger(__name__)

BATCH = 1000
# Rows that a migration or `notifier migrate` makes in a new database: the Message-ID key
# (migration 0010) and the configured topics. A target holding only these counts as empty;
# the source's rows replace them (the key above all: the copy must keep the source's).
PREPARED = frozenset({"installation", "topics"})
# Tables of the database that are no notifier data.
FOREIGN = ("alembic_version", "sqlite_")


class CopyError(NotifierError):
    """The copy was refused or failed; the target is left as it was."""


@dataclass(frozen=True)
class TableCount:
    """Rows of one table in the source and, after the copy, in the target."""

    table: str
    source: int
    target: int

    @property
    def matches(self) -> bool:
        return self.source == self.target


@dataclass(frozen=True)
class Copied:
    """What a copy did: the migration both databases are at and each table's counts."""

    revision: str
    tables: tuple[TableCount, ...]


class CountMismatchError(CopyError):
    """After writing, some table's counts differ; nothing was kept."""

    def __init__(self, copied: Copied) -> None:
        self.copied = copied
        differing = ", ".join(t.table for t in copied.tables if not t.matches)
        super().__init__(
            f"die Zeilenzahlen stimmen nicht überein (Tabelle {differing}); die Kopie wurde "
            "zurückgenommen, die Zieldatenbank ist unverändert."
        )


def tables() -> list[Table]:
    """The tables to copy, parents before the tables that refer to them."""
    return list(Base.metadata.sorted_tables)


def _self_references(table: Table) -> list[str]:
    """Columns of ``table`` that refer to ``table`` itself (a tree such as organisations)."""
    return [fk.parent.name for fk in table.foreign_keys if fk.column.table is table]


async def _count(connection: AsyncConnection, table: Table) -> int:
    return int((await connection.execute(select(func.count()).select_from(table))).scalar_one())


async def _revision(connection: AsyncConnection) -> str:
    rows = (await connection.execute(text("SELECT version_num FROM alembic_version"))).all()
    return ", ".join(str(r[0]) for r in rows) or "–"


async def _unknown_tables(connection: AsyncConnection) -> list[str]:
    """Tables in the source that the metadata does not know (their rows would be lost)."""
    names: list[str] = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
    known = set(Base.metadata.tables)
    return sorted(n for n in names if n not in known and not n.startswith(FOREIGN))


async def _copy_table(
    source: AsyncConnection, target: AsyncConnection, table: Table, batch: int
) -> None:
    """Stream ``table``'s rows from ``source`` into ``target`` in batches, ids included. A
    column referring to the table itself is written afterwards: a row may come before the row
    it refers to."""
    later = _self_references(table)
    key = list(table.primary_key.columns)
    result = await source.stream(select(table).order_by(*key))
    async for rows in result.mappings().partitions(batch):
        values = [dict(row) for row in rows]
        if later:
            pending = [v for v in values if any(v[c] is not None for c in later)]
            for v in values:
                v.update(dict.fromkeys(later, None))
        await target.execute(table.insert(), values)
        if later and pending:
            update = (
                table.update()
                .where(*(c == bindparam(f"key_{c.name}") for c in key))
                .values({c: bindparam(f"new_{c}") for c in later})
            )
            await target.execute(
                update,
                [
                    {
                        **{f"key_{c.name}": row[c.name] for c in key},
                        **{f"new_{c}": row[c] for c in later},
                    }
                    for row in rows
                    if any(row[c] is not None for c in later)
                ],
            )


async def _fix_sequences(target: AsyncConnection, table: Table) -> None:
    """Set the sequence behind an integer id past the largest id copied (PostgreSQL only)."""
    for column in table.primary_key.columns:
        found = await target.execute(
            text("SELECT pg_get_serial_sequence(:table, :column)"),
            {"table": table.name, "column": column.name},
        )
        sequence = found.scalar_one_or_none()
        if sequence is None:
            continue
        top = (await target.execute(select(func.max(column)))).scalar_one_or_none()
        await target.execute(
            text("SELECT setval(:sequence, :value, :called)"),
            {"sequence": sequence, "value": top or 1, "called": top is not None},
        )


def _failed(exc: Exception, url: str, table: str | None) -> Exception:
    """The German error for a failure of the database at ``url``; other exceptions (bugs)
    unchanged."""
    found = database_error(exc, url)
    if found is None:
        return exc
    detail = str(found)
    within = f"Tabelle {table}: " if table else ""
    return CopyError(
        f"{within}{detail}. Die Kopie wurde zurückgenommen, die Zieldatenbank ist unverändert."
    )


async def copy_database(
    source_url: str,
    target_url: str,
    *,
    batch: int = BATCH,
) -> Copied:
    """Copy the SQLite database ``source_url`` into the empty PostgreSQL ``target_url``.

    Refuses (:class:`CopyError`) a source that is no SQLite file or is in use by a service, a
    target that is no PostgreSQL database or holds rows, and source tables the models do not
    know; a damaged source or one from a newer version raises
    :class:`~notifier.db.backup.BackupError`. Both schemas are migrated to this version's head
    first (an older SQLite file too, as every command does). Raises
    :class:`CountMismatchError` when the counts differ after writing; the target then keeps
    nothing of the copy.
    """
    database = sqlite_path(source_url)
    if database is None:
        raise CopyError(
            f"die Quelle {where(source_url)} ist keine SQLite-Datei; db copy zieht eine "
            "SQLite-Datenbank nach PostgreSQL um."
        )
    if not database.is_file():
        raise CopyError(f"{database}: die Datenbank existiert nicht (nichts zu kopieren)")
    if not is_postgres_url(target_url):
        raise CopyError(
            f"das Ziel {where(target_url)} ist keine PostgreSQL-Adresse; erwartet wird "
            "postgresql+asyncpg://BENUTZER@HOST:5432/DATENBANK"
        )
    lock = ServiceLock(database)
    try:
        lock.acquire()
    except ServiceLockedError as exc:
        who = f" (Prozess {exc.holder})" if exc.holder else ""
        raise CopyError(
            f"{database}: die Datenbank wird von einem laufenden notifier-Dienst benutzt{who}; "
            "beenden Sie ihn vor dem Kopieren."
        ) from None
    try:
        # A whole database at a migration this version knows (integrity_check), or the
        # BackupError that says what is wrong with it.
        await asyncio.to_thread(verify, database)
        return await _copy_locked(database, source_url, target_url, batch)
    finally:
        lock.release()


async def _copy_locked(
    database: Path,
    source_url: str,
    target_url: str,
    batch: int,
) -> Copied:
    async with Database(source_url) as source_db, Database(target_url, role="copy") as target_db:
        for db in (source_db, target_db):
            try:
                await db.migrate()
            except Exception as exc:
                failure = _failed(exc, db.url, None)
                if failure is exc:
                    raise
                raise failure from exc
        async with source_db.engine.connect() as source:
            # The connection's one transaction (begun by the first statement) reads one state.
            unknown = await _unknown_tables(source)
            if unknown:
                raise CopyError(
                    f"{database}: Tabelle {', '.join(unknown)} ist dieser notifier-Version "
                    "unbekannt und würde nicht kopiert; verwenden Sie die Version, die die "
                    "Datenbank zuletzt benutzt hat."
                )
            revision = await _revision(source)
            async with target_db.engine.connect() as target:
                target_revision = await _revision(target)
                await target.rollback()  # the copy's own transaction follows
                if revision != target_revision or revision != head_revision():
                    raise CopyError(
                        f"Schema-Stand der Quelle {revision}, des Ziels {target_revision}: "
                        "beide müssen auf dem neuesten Stand sein"
                    )
                return await _write(source, target, target_url, revision, batch)


async def _write(
    source: AsyncConnection,
    target: AsyncConnection,
    target_url: str,
    revision: str,
    batch: int,
) -> Copied:
    chosen = tables()
    current: str | None = None
    try:
        async with target.begin():
            for table in chosen:
                current = table.name
                rows = await _count(target, table)
                if rows and table.name not in PREPARED:
                    raise CopyError(
                        f"die Zieldatenbank {where(target_url)} ist nicht leer: Tabelle "
                        f"{table.name} enthält {rows} Zeilen. db copy schreibt nur in eine "
                        "leere Datenbank."
                    )
            # Children first: a prepared row may be referred to (subscriptions → topics).
            for table in reversed(chosen):
                if table.name in PREPARED:
                    current = table.name
                    await target.execute(table.delete())
            counts: list[TableCount] = []
            for table in chosen:
                current = table.name
                await _copy_table(source, target, table, batch)
                await _fix_sequences(target, table)
                count = TableCount(
                    table.name, await _count(source, table), await _count(target, table)
                )
                counts.append(count)
                logger.debug("copied %s: %d of %d rows", table.name, count.target, count.source)
            current = None
            copied = Copied(revision, tuple(counts))
            if not all(c.matches for c in counts):
                raise CountMismatchError(copied)
    except CopyError:
        raise
    except Exception as exc:
        failure = _failed(exc, target_url, current)
        if failure is exc:
            raise
        raise failure from exc
    return copied


def summary(copied: Copied) -> Sequence[str]:
    """German lines: each table with its rows in the source and the target."""
    width = max(len(t.table) for t in copied.tables)
    lines = [f"{'Tabelle':<{width}}  {'SQLite':>9}  {'PostgreSQL':>10}"]
    for t in copied.tables:
        mark = "" if t.matches else "  ✗ verschieden"
        lines.append(f"{t.table:<{width}}  {t.source:>9}  {t.target:>10}{mark}")
    lines.append(f"{'alembic_version':<{width}}  {copied.revision:>9}  {copied.revision:>10}")
    return lines


__all__ = [
    "BATCH",
    "Copied",
    "CopyError",
    "CountMismatchError",
    "TableCount",
    "copy_database",
    "summary",
    "tables",
]
