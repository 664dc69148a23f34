"""Backups of a SQLite database, made while the service runs, and their restoration.

A backup is SQLite's online backup API run in one step: it reads one snapshot in a read
transaction, which in WAL mode neither waits for nor holds up the service's writes. The copy is
written beside its target, verified (``PRAGMA integrity_check``, a notifier schema at a known
migration) and only then moved into place, so a file named FILE is always a whole backup.

A restore refuses while a service holds the database's lock (:mod:`notifier.db.lockfile`) and
holds that lock itself until it is done, so no service starts on a half-replaced file. The
replaced database is kept under a new name, never deleted. PostgreSQL has its own tools
(pg_dump, pg_restore), which the commands name instead.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..errors import NotifierError
from .engine import head_revision, known_revisions, sqlite_path
from .failures import database_error, where
from .lockfile import ServiceLock, ServiceLockedError

# What a backup's line counts: table -> German label.
COUNTED = {"subscribers": "Abonnenten", "outbox": "Outbox-Nachrichten"}
# The companions of a SQLite file in WAL mode.
COMPANIONS = ("-wal", "-shm")
KEPT_SUFFIX = ".vor-wiederherstellung-"


class BackupError(NotifierError):
    """A backup could not be made, verified or restored; ``path`` names the file concerned."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class PostgresBackupError(BackupError):
    """The database is PostgreSQL: its own tools make and restore backups."""

    def __init__(self, shown: str) -> None:
        super().__init__(
            shown,
            "Sicherung und Wiederherstellung mit notifier gibt es nur für SQLite. Für "
            "PostgreSQL: pg_dump -Fc -f notifier.dump DATENBANK, zurück mit pg_restore "
            "--clean -d DATENBANK notifier.dump (siehe README, Abschnitt „Backups“).",
        )


class DatabaseInUseError(BackupError):
    """A running service holds the database's lock; ``holder`` is its pid if known."""

    def __init__(self, database: Path, holder: int | None) -> None:
        self.holder = holder
        who = f" (Prozess {holder})" if holder else ""
        super().__init__(
            database,
            f"die Datenbank wird von einem laufenden notifier-Dienst benutzt{who}; "
            "beenden Sie ihn vor der Wiederherstellung.",
        )


@dataclass(frozen=True)
class Checked:
    """A verified database file: its size in bytes, migration and row counts (see COUNTED)."""

    path: Path
    size: int
    revision: str
    counts: dict[str, int]

    @property
    def at_head(self) -> bool:
        return self.revision == head_revision()


@dataclass(frozen=True)
class Restored:
    """What a restore did: the database written, the backup read, where the old file went."""

    database: Path
    backup: Checked
    kept: Path | None


def database_file(url: str) -> Path:
    """The SQLite file of ``url``; raises :class:`PostgresBackupError` for PostgreSQL."""
    path = sqlite_path(url)
    if path is None:
        raise PostgresBackupError(where(url))
    return path


@contextlib.contextmanager
def _connected(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection (autocommit) that is closed on exit; sqlite3's errors become the
    German :class:`~notifier.errors.DatabaseError` naming ``path``."""
    try:
        connection = sqlite3.connect(path, timeout=10, isolation_level=None)
    except sqlite3.Error as exc:
        raise _named(exc, path) from exc
    try:
        yield connection
    except sqlite3.Error as exc:
        raise _named(exc, path) from exc
    finally:
        connection.close()


def _named(exc: sqlite3.Error, path: Path) -> NotifierError:
    return database_error(exc, f"sqlite:///{path}") or BackupError(path, str(exc))


def verify(path: Path) -> Checked:
    """Check that ``path`` is a whole notifier database: ``integrity_check`` is ok and its
    schema is at a migration this version knows. Raises :class:`BackupError` otherwise, or
    :class:`~notifier.errors.DatabaseError` when SQLite cannot read it (not a database …)."""
    if not path.is_file():
        raise BackupError(path, "die Datei existiert nicht")
    with _connected(path) as connection:
        result = [row[0] for row in connection.execute("PRAGMA integrity_check")]
        if result != ["ok"]:
            raise BackupError(path, "die Datei ist beschädigt: " + "; ".join(result[:3]))
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        if "alembic_version" not in tables:
            raise BackupError(path, "keine notifier-Datenbank (kein Schema-Stand)")
        revisions = [
            row[0] for row in connection.execute("SELECT version_num FROM alembic_version")
        ]
        known = known_revisions()  # (empty when the migration files are not plain: no check)
        if len(revisions) != 1 or (known and revisions[0] not in known):
            raise BackupError(
                path,
                f"Schema-Stand {', '.join(revisions) or '–'} ist dieser notifier-Version "
                "unbekannt (eine neuere Version?)",
            )
        counts = {
            table: int(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608
            for table in COUNTED
            if table in tables
        }
    return Checked(path, path.stat().st_size, revisions[0], counts)


def _copy(source: Path, target: Path) -> None:
    """Copy the database ``source`` to the new file ``target`` in one snapshot, as a single
    file (rollback journal, no -wal beside it) written to disk."""
    with _connected(source) as reading, _connected(target) as writing:
        # One step (pages=-1): one read transaction, so the copy is one consistent state even
        # while the service writes.
        reading.backup(writing, pages=-1)
        writing.execute("PRAGMA journal_mode=DELETE")
    with open(target, "rb") as written:
        os.fsync(written.fileno())


def _temporary(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}.tmp")


def _remove(path: Path) -> None:
    for name in (path, *(path.with_name(path.name + c) for c in (*COMPANIONS, "-journal"))):
        name.unlink(missing_ok=True)


def backup(url: str, target: Path, *, force: bool = False) -> Checked:
    """Copy the database of ``url`` to ``target`` and verify the copy; the service may run.

    Refuses an existing ``target`` unless ``force``. Raises :class:`PostgresBackupError`,
    :class:`BackupError`, or :class:`~notifier.errors.DatabaseError`.
    """
    source = database_file(url)
    if not source.is_file():
        raise BackupError(source, "die Datenbank existiert nicht (noch nichts zu sichern)")
    if target.resolve() == source.resolve():
        raise BackupError(target, "das ist die Datenbank selbst")
    if target.exists() and not force:
        raise BackupError(target, "die Datei existiert schon; überschreiben mit --force")
    if not target.parent.is_dir():
        raise BackupError(target, f"das Verzeichnis {target.parent} existiert nicht")
    temporary = _temporary(target)
    try:
        _copy(source, temporary)
        checked = verify(temporary)
        os.replace(temporary, target)
    finally:
        _remove(temporary)
    return Checked(target, checked.size, checked.revision, checked.counts)


def restore(url: str, source: Path, *, now: datetime) -> Restored:
    """Put the backup ``source`` in place of the database of ``url``.

    Verifies the backup first and refuses (:class:`DatabaseInUseError`) while a service holds
    the database's lock. The replaced database, with any -wal/-shm of it, is kept as
    ``<database>.vor-wiederherstellung-<time>``. An older schema is migrated by the next
    ``notifier migrate`` or ``run`` as usual.
    """
    database = database_file(url)
    checked = verify(source)
    lock = ServiceLock(database)
    try:
        lock.acquire()
    except ServiceLockedError as exc:
        raise DatabaseInUseError(database, exc.holder) from None
    temporary = _temporary(database)
    try:
        _copy(source, temporary)
        verify(temporary)
        kept = _keep(database, now)
        os.replace(temporary, database)
        _sync_folder(database.parent)
    finally:
        _remove(temporary)
        lock.release()
    return Restored(database, checked, kept)


def _keep(database: Path, now: datetime) -> Path | None:
    """Move the database (if any) out of the way under a dated name. Its WAL is folded into it
    first; what cannot be folded in moves with it, since a stale -wal beside the restored file
    would be replayed into it."""
    companions = [database.with_name(database.name + c) for c in COMPANIONS]
    if not database.exists():
        for stale in companions:  # belongs to no file: nothing of value
            stale.unlink(missing_ok=True)
        return None
    with contextlib.suppress(NotifierError), _connected(database) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.execute("PRAGMA journal_mode=DELETE")
    kept = database.with_name(f"{database.name}{KEPT_SUFFIX}{now:%Y%m%d-%H%M%S}")
    number = 1
    while kept.exists():  # two restores within a second: never replace a kept file
        number += 1
        kept = kept.with_name(f"{database.name}{KEPT_SUFFIX}{now:%Y%m%d-%H%M%S}-{number}")
    os.replace(database, kept)
    for companion, suffix in zip(companions, COMPANIONS, strict=True):
        if companion.exists():
            os.replace(companion, kept.with_name(kept.name + suffix))
    return kept


def _sync_folder(folder: Path) -> None:
    """Make the renames in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = [
    "BackupError",
    "Checked",
    "DatabaseInUseError",
    "PostgresBackupError",
    "Restored",
    "backup",
    "database_file",
    "restore",
    "verify",
]
