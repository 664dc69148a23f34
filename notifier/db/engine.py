"""Engine, sessions and schema migrations.

:class:`Database` owns one async engine: create it with ``async with Database(url) as db`` and it
is disposed on exit. Migrations (Alembic) are applied with :meth:`Database.migrate`.

Two backends: SQLite (aiosqlite, the embedded default, one service) and PostgreSQL (asyncpg,
any number of processes on any number of machines). Whatever differs between them stays in this
package (here and in :mod:`notifier.db.queries`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.ext.asyncio import (
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

MIGRATIONS = Path(__file__).parent / "migrations"
READ_ONLY = "notifier_read_only"  # execution option of Database.reading()
# Execution option of Database.write(inline=True): the write lock is taken already.
LOCKED = "notifier_locked"
# How long a SQLite connection waits for the write lock before "database is locked".
BUSY_TIMEOUT_SECONDS = 10.0


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY or "locked" in str(exc)


_REVISION = re.compile(r'^revision(?:: str)? = "(\w+)"', re.M)
_DOWN = re.compile(r'^down_revision(?:: str \| None)? = (?:"(\w+)"|None)', re.M)


def _revisions() -> dict[str, str | None] | None:
    """Each migration's id and the id it follows, read from the files (None if a file does not
    say so plainly)."""
    found: dict[str, str | None] = {}
    for path in (MIGRATIONS / "versions").glob("*.py"):
        text = path.read_text("utf-8")
        revision, down = _REVISION.search(text), _DOWN.search(text)
        if revision is None or down is None:
            return None
        found[revision.group(1)] = down.group(1) or None
    return found


def known_revisions() -> frozenset[str]:
    """The ids of every migration of this version (empty if the files are not plain)."""
    return frozenset(_revisions() or ())


def head_revision() -> str | None:
    """The newest migration's id, read from the files (None if that is not clear: Alembic
    then decides)."""
    revisions = _revisions()
    if revisions is None:
        return None
    heads = set(revisions) - {down for down in revisions.values() if down}
    return heads.pop() if len(heads) == 1 else None


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL (None: another database, or in memory)."""
    for prefix in ("sqlite+aiosqlite:///", "sqlite:///"):
        if url.startswith(prefix):
            rest = url[len(prefix) :].split("?", 1)[0]
            return None if rest in ("", ":memory:") else Path(rest)
    return None


def _switch_to_wal(cursor: Any) -> None:
    """Put the file in WAL mode (it stays so). Switching takes a lock without waiting for it
    (SQLite ignores busy_timeout there), so connections opening a new file at the same moment
    (processes starting together) try again for a while instead of failing."""
    cursor.execute("PRAGMA journal_mode")
    if cursor.fetchone()[0] == "wal":
        return
    deadline = time.monotonic() + 10
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)  # in a driver thread, not the event loop


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN itself (pysqlite's own handling
        # would start transactions lazily and deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_SECONDS * 1000)}")
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # 1 MiB of page cache per connection (SQLite's default is 2 MiB): the hot pages are
        # few (the outbox index, the latest rows), and a sender holds several connections.
        cursor.execute("PRAGMA cache_size=-1024")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # IMMEDIATE takes the write lock up front: a transaction that reads and then writes
        # cannot fail half-way with "database is locked" when another process (the CLI beside
        # the running service) wrote in between; busy_timeout makes it wait instead.
        # A read-only transaction (Database.reading) takes no lock: WAL readers never wait.
        options = connection.get_execution_options()
        if options.get(LOCKED):
            return  # Database.write(inline=True) began the transaction itself
        if options.get(READ_ONLY):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


# Keys of PostgreSQL advisory locks (one 64-bit number space per database).
MIGRATION_LOCK = 0x6E6F7469_00000001  # "noti" + 1: one process migrates at a time


def postgres_connect_args(role: str) -> dict[str, Any]:
    """asyncpg connection arguments: the process shows up in ``pg_stat_activity`` under its
    role, host and pid, and the server notices a vanished client within about half a minute
    (TCP keepalive), which ends its sessions and frees its advisory locks."""
    name = f"notifier {role} {socket.gethostname()}:{os.getpid()}"[:63]
    return {
        "server_settings": {
            "application_name": name,
            "tcp_keepalives_idle": "10",
            "tcp_keepalives_interval": "5",
            "tcp_keepalives_count": "3",
        }
    }


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql", "postgres:"))


class Database:
    """One engine and its session factory; an async context manager that disposes the engine.

    ``role`` names the process in PostgreSQL's ``pg_stat_activity`` (e.g. "sender").
    """

    def __init__(self, url: str, *, echo: bool = False, role: str = "cli") -> None:
        self.url = url
        file = sqlite_path(url)
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {}
        if is_postgres_url(url):
            # pre_ping: a connection the server closed (restart, failover) is replaced instead
            # of failing the next transaction.
            kwargs = {"connect_args": postgres_connect_args(role), "pool_pre_ping": True}
        elif url.startswith("sqlite"):
            # Few prepared statements per connection: IN lists of varying length compile to
            # distinct statements, which made memory creep during a long send.
            kwargs = {"connect_args": {"cached_statements": 16}}
        self.engine = create_async_engine(url, echo=echo, **kwargs)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self.is_postgres = self.engine.dialect.name == "postgresql"
        self.sqlite_file = file
        # SQLite: short write transactions run whole in a worker thread or on the loop (see
        # write()), small reads on the loop (see read()).
        self._sync_engine: Engine | None = None
        if self.is_sqlite:
            _configure_sqlite(self.engine.sync_engine)
        if self.is_sqlite and file is not None:  # (an in-memory database is per connection)
            self._sync_engine = create_engine(
                self.engine.url.set(drivername="sqlite+pysqlite"),
                echo=echo,
                connect_args={"check_same_thread": False, "cached_statements": 16},
            )
            _configure_sqlite(self._sync_engine)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.engine.dispose()
        if self._sync_engine is not None:
            self._sync_engine.dispose()

    async def write(self, work: Callable[[Connection], T], *, inline: bool = False) -> T:
        """Run ``work(connection)`` (synchronous SQLAlchemy Core) in one write transaction.

        For the hot, short writes of delivery (claiming, recording outcomes). On SQLite the
        whole transaction runs in a worker thread, from BEGIN IMMEDIATE to COMMIT, without
        waiting for the event loop in between: the database's single write lock is held for
        the statements only, not for as long as a busy loop takes to come back (which made
        the other sender processes wait). ``inline``: on the loop's own thread instead, for
        transactions of a few milliseconds in a process whose loop is busy (see
        :meth:`_write_inline`). Elsewhere it runs on the async engine.
        """
        sync_engine = self._sync_engine
        if sync_engine is None:
            async with self.engine.begin() as connection:
                return await connection.run_sync(work)

        if inline:
            return await self._write_inline(sync_engine, work)

        def run() -> T:
            with sync_engine.begin() as connection:
                return work(connection)

        return await asyncio.to_thread(run)

    async def _write_inline(self, sync_engine: Engine, work: Callable[[Connection], T]) -> T:
        """:meth:`write` on the event loop's own thread, for short transactions in a busy
        process. The write lock is asked for without waiting (``busy_timeout`` 0) and, while
        another connection holds it, asked again after a short sleep of the loop; once taken,
        the statements run without a pause, so the lock is held for their own CPU time only
        (and the COMMIT, in a worker thread: it may checkpoint, which syncs the disk).
        In a worker thread they also waited for the GIL after every SQLite call while the
        loop served web requests, which stretched a few milliseconds of work to tens of them
        and made the other sender processes wait for the lock."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BUSY_TIMEOUT_SECONDS
        pause = 0.0005
        with sync_engine.connect() as connection:
            raw = connection.connection.driver_connection
            assert raw is not None
            raw.execute("PRAGMA busy_timeout=0")
            try:
                while True:
                    try:
                        raw.execute("BEGIN IMMEDIATE")
                        break
                    except sqlite3.OperationalError as exc:
                        if not _is_busy(exc) or loop.time() > deadline:
                            raise
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 0.008)
            finally:
                raw.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_SECONDS * 1000)}")
            try:
                transaction = connection.execution_options(**{LOCKED: True}).begin()
                try:
                    result = work(connection)
                except BaseException:
                    transaction.rollback()
                    raise
                # The COMMIT in a worker thread: it may run SQLite's automatic checkpoint
                # (copying the WAL into the database file and syncing it), which must not
                # stop the loop. Cancelled meanwhile (the service stops), the connection is
                # left alone until the commit is over.
                commit = asyncio.ensure_future(asyncio.to_thread(transaction.commit))
                try:
                    await asyncio.shield(commit)
                except asyncio.CancelledError:
                    await asyncio.wait([commit])
                    raise
                return result
            finally:
                if raw.in_transaction:  # begin() or the commit failed: the lock is given back
                    raw.rollback()

    async def read(self, work: Callable[[Connection], T], *, inline: bool = False) -> T:
        """Run ``work(connection)`` (synchronous SQLAlchemy Core) in one read-only transaction.

        The counterpart of :meth:`write`. On SQLite the whole read runs in a worker thread
        (one hop off the event loop instead of one per statement) and takes no write lock.
        ``inline``: on the event loop's own thread instead, for reads of a few rows by key on
        the hot pages (a personal link's preferences page under a click storm): such a read
        takes no lock and never waits (WAL readers do not wait for writers), and costs less
        than the hop to a worker thread and back, which under a storm also meant waiting for
        the GIL after every SQLite call (525 → 792 preferences pages/s at 20 clients). Never
        for anything long: it would block the loop. Elsewhere it runs on the async engine.
        """
        sync_engine = self._sync_engine
        if sync_engine is None:
            async with self.engine.connect() as connection:
                await connection.execution_options(**{READ_ONLY: True})
                async with connection.begin():
                    return await connection.run_sync(work)

        def run() -> T:
            with sync_engine.connect() as connection:
                connection.execution_options(**{READ_ONLY: True})
                with connection.begin():
                    return work(connection)

        return run() if inline else await asyncio.to_thread(run)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on any error."""
        async with self.sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncSession]:
        """A session inside one read-only transaction: a consistent snapshot that, on SQLite,
        takes no write lock (so it never waits for, nor holds up, another process's writes).
        Anything written in it is rolled back; loaded objects stay usable afterwards."""
        async with self.sessions() as session:
            await session.connection(execution_options={READ_ONLY: True})
            yield session
            # Closing the session (not rolling it back) ends the transaction and keeps the
            # loaded objects' state.

    async def migrate(self) -> None:
        """Apply every pending Alembic migration (idempotent)."""
        if await self._at_head():
            return  # Alembic (about 10 MB once imported) is not needed by this process

        # Imported here: processes that only send never migrate and need not load Alembic.
        from alembic import command
        from alembic.config import Config

        def upgrade(connection: Connection) -> None:
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")

        async with self.engine.begin() as connection:
            if self.is_postgres:
                # Processes starting together migrate one after the other (the lock ends with
                # the transaction); the later ones find nothing to do.
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK}
                )
            await connection.run_sync(upgrade)
        logger.debug("database migrated: %s", self.display_url)

    @property
    def display_url(self) -> str:
        """The URL with the password hidden: the form for logs and messages."""
        return self.engine.url.render_as_string(hide_password=True)

    async def _at_head(self) -> bool:
        head = head_revision()
        if head is None:
            return False
        async with self.engine.connect() as connection:
            has_table = await connection.run_sync(
                lambda sync: inspect(sync).has_table("alembic_version")
            )
            if not has_table:
                return False
            current = (
                (await connection.execute(text("SELECT version_num FROM alembic_version")))
                .scalars()
                .all()
            )
        return current == [head]
