"""Engine, sessions and schema migrations.

:class:`Database` owns one async engine: create it with ``async with Database(url) as db`` and it
is disposed on exit. Migrations (Alembic) are applied with :meth:`Database.migrate`.

Two backends: SQLite (aiosqlite, the embedded default, one service) and PostgreSQL (asyncpg,
any number of processes on any number of machines). Whatever differs between them stays in this
package (here and in :mod:`notifier.db.queries`).
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import Connection, event, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


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
            time.sleep(0.02)  # in aiosqlite's thread, not the event loop


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN itself (pysqlite's own handling
        # would start transactions lazily and deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=10000")
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # 1 MiB of page cache per connection (SQLite's default is 2 MiB): the hot pages are
        # few (the outbox index, the latest rows), and a sender holds several connections.
        cursor.execute("PRAGMA cache_size=-1024")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # IMMEDIATE takes the write lock up front: a transaction that reads and then writes
        # cannot fail half-way with "database is locked" when another process (the CLI beside
        # the running service) wrote in between; busy_timeout makes it wait instead.
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
        self.engine = create_async_engine(url, echo=echo, **kwargs)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self.is_postgres = self.engine.dialect.name == "postgresql"
        self.sqlite_file = file
        if self.is_sqlite:
            _configure_sqlite(self.engine)
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

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on any error."""
        async with self.sessions() as session, session.begin():
            yield session

    async def migrate(self) -> None:
        """Apply every pending Alembic migration (idempotent)."""

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
