"""Leadership: exactly one process of a cluster does a job (the scheduler).

PostgreSQL: a session-level advisory lock held on a connection of its own. The lock lasts as
long as that session: when the leading process dies, even by SIGKILL or with its machine, the
server ends the session (at once on a closed socket, after about half a minute of TCP keepalive
on a vanished host) and the next process that asks becomes the leader.

SQLite: one service per database file (see :mod:`notifier.db.lockfile`), so it always leads.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from .engine import Database, postgres_connect_args

logger = logging.getLogger(__name__)

SCHEDULER_LOCK = 0x6E6F7469_00000003  # "noti" + 3
# How long a check of the lock's connection may take before leadership counts as lost.
CHECK_TIMEOUT_SECONDS = 5.0


class LeaderLock:
    """One advisory lock; an async context manager that gives it up on exit.

    :meth:`try_acquire` never waits for the lock; :meth:`holds` says whether it is still held
    (its connection still answers). Both raise nothing on database trouble: they answer False.
    """

    def __init__(self, db: Database, key: int, *, name: str) -> None:
        self.db = db
        self.key = key
        self.name = name
        self._engine: AsyncEngine | None = None
        self._connection: AsyncConnection | None = None

    async def __aenter__(self) -> LeaderLock:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def try_acquire(self) -> bool:
        """Take the lock if it is free; True if this process holds it now."""
        if not self.db.is_postgres:
            return True
        if self._connection is not None:
            return True
        if self._engine is None:
            # Its own engine without a pool: closing the connection really ends the session
            # (and with it the lock), and no pooled transaction ever runs on it.
            self._engine = create_async_engine(
                self.db.url,
                poolclass=NullPool,
                isolation_level="AUTOCOMMIT",
                connect_args=postgres_connect_args(self.name),
            )
        try:
            connection = await asyncio.wait_for(self._engine.connect(), CHECK_TIMEOUT_SECONDS)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            logger.warning("%s: keine Verbindung zur Datenbank: %s", self.name, exc)
            return False
        try:
            got = await connection.scalar(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}
            )
        except (SQLAlchemyError, OSError) as exc:
            logger.warning("%s: Sperre nicht abfragbar: %s", self.name, exc)
            await self._close(connection)
            return False
        if not got:
            await self._close(connection)
            return False
        self._connection = connection
        return True

    async def holds(self) -> bool:
        """True while the lock's session is alive (and so the lock held)."""
        if not self.db.is_postgres:
            return True
        connection = self._connection
        if connection is None:
            return False
        try:
            await asyncio.wait_for(connection.scalar(text("SELECT 1")), CHECK_TIMEOUT_SECONDS)
        except (DBAPIError, SQLAlchemyError, OSError, TimeoutError) as exc:
            logger.warning("%s: Verbindung der Sperre verloren: %s", self.name, exc)
            self._connection = None
            await self._close(connection)
            return False
        return True

    async def release(self) -> None:
        """Give the lock up (by ending its session)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await self._close(connection)

    async def aclose(self) -> None:
        await self.release()
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    @staticmethod
    async def _close(connection: AsyncConnection) -> None:
        try:
            await connection.invalidate()  # the session ends; no reuse of a doubtful connection
            await connection.close()
        except (SQLAlchemyError, OSError):
            logger.debug("closing a lock connection failed", exc_info=True)
