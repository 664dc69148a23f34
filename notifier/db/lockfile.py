"""One service per SQLite file.

SQLite serialises every writer of a file and has no way to elect one scheduler among several
processes, so `notifier run` holds an exclusive lock on ``<database>.lock`` while it runs. A
second service on the same file is refused with a message pointing to PostgreSQL; the helper
sender processes a service starts itself (``[delivery] processes``) run under their parent's
lock. The kernel drops the lock when the process ends, however it ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from ..errors import NotifierError


class ServiceLockedError(NotifierError):
    """Another `notifier run` already uses this SQLite file; ``holder`` is its pid if known."""

    def __init__(self, database: Path, holder: int | None) -> None:
        self.database = database
        self.holder = holder
        who = f" (Prozess {holder})" if holder else ""
        super().__init__(
            f"Die SQLite-Datenbank {database} wird schon von einem laufenden notifier-Dienst "
            f"benutzt{who}. Mit SQLite läuft genau ein Dienst (`notifier run`, mit "
            "[delivery] processes auch mehrere Sendeprozesse auf diesem Rechner). Mehrere "
            "unabhängige Prozesse – weitere Sender, ein Planer in Bereitschaft, andere Rechner – "
            'brauchen PostgreSQL: [database] url = "postgresql+asyncpg://…" (siehe README, '
            "Abschnitt „Running at scale“)."
        )


class ServiceLock:
    """An exclusive, non-blocking lock on ``<database>.lock``; a context manager."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.path = database.with_name(database.name + ".lock")
        self._fd: int | None = None

    def __enter__(self) -> ServiceLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock or raise :class:`ServiceLockedError` at once."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise ServiceLockedError(self.database, holder) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the descriptor ends the lock


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None
