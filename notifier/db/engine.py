"""Engine, sessions and schema migrations.

:class:`Database` owns one async engine: create it with ``async with Database(url) as db`` and it
is disposed on exit. Migrations (Alembic) are applied with :meth:`Database.migrate`.
"""

from __future__ import annotations

import asyncio
import logging
import re
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


_REVISION = re.compile(r'^revision(?:: str)? = "(\w+)"', re.M)
_DOWN = re.compile(r'^down_revision(?:: str \| None)? = (?:"(\w+)"|None)', re.M)


def head_revision() -> str | None:
    """The newest migration's id, read from the files (None if that is not clear: Alembic
    then decides)."""
    revisions: set[str] = set()
    downs: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        text = path.read_text("utf-8")
        revision, down = _REVISION.search(text), _DOWN.search(text)
        if revision is None or down is None:
            return None
        revisions.add(revision.group(1))
        if down.group(1):
            downs.add(down.group(1))
    heads = revisions - downs
    return heads.pop() if len(heads) == 1 else None


def _sqlite_file(url: str) -> Path | None:
    for prefix in ("sqlite+aiosqlite:///", "sqlite:///"):
        if url.startswith(prefix):
            rest = url[len(prefix) :].split("?", 1)[0]
            return None if rest in ("", ":memory:") else Path(rest)
    return None


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN itself (pysqlite's own handling
        # would start transactions lazily and deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
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
        if connection.get_execution_options().get(READ_ONLY):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """One engine and its session factory; an async context manager that disposes the engine."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        file = _sqlite_file(url)
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_async_engine(
            url,
            echo=echo,
            connect_args={"cached_statements": 16} if url.startswith("sqlite") else {},
        )
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        # SQLite: short write transactions run whole in a worker thread (see write()).
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

    async def write(self, work: Callable[[Connection], T]) -> T:
        """Run ``work(connection)`` (synchronous SQLAlchemy Core) in one write transaction.

        For the hot, short writes of delivery (claiming, recording outcomes). On SQLite the
        whole transaction runs in a worker thread, from BEGIN IMMEDIATE to COMMIT, without
        waiting for the event loop in between: the database's single write lock is held for
        the statements only, not for as long as a busy loop takes to come back (which made
        the other sender processes wait). Elsewhere it runs on the async engine.
        """
        sync_engine = self._sync_engine
        if sync_engine is None:
            async with self.engine.begin() as connection:
                return await connection.run_sync(work)

        def run() -> T:
            with sync_engine.begin() as connection:
                return work(connection)

        return await asyncio.to_thread(run)

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
            await connection.run_sync(upgrade)

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
        logger.debug("database migrated: %s", self.engine.url.render_as_string(hide_password=True))
