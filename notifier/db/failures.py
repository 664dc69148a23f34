"""What a failure of the database means: driver errors (sqlite3, asyncpg, as SQLAlchemy wraps
them or not) and the operating system's errors about the database's files and server, turned
into one :class:`~notifier.errors.DatabaseError` that names the common cause in German.

The password of the database URL never appears in it: the URL is shown without it, and the
driver's message is masked too.
"""

from __future__ import annotations

import errno
import socket
import sqlite3
from pathlib import Path

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from ..errors import DatabaseError
from .engine import is_postgres_url, sqlite_path

# SQLite's primary result codes (Python's sqlite_errorname, e.g. "SQLITE_IOERR_WRITE").
_SQLITE_CAUSES = {
    "SQLITE_FULL": "disk_full",
    "SQLITE_READONLY": "read_only",
    "SQLITE_PERM": "read_only",
    "SQLITE_BUSY": "locked",
    "SQLITE_LOCKED": "locked",
    "SQLITE_CANTOPEN": "cannot_open",
    "SQLITE_NOTADB": "not_a_database",
    "SQLITE_CORRUPT": "corrupt",
    "SQLITE_IOERR": "io_error",
}
# The same by message, for errors that carry no result code.
_SQLITE_MESSAGES = {
    "database or disk is full": "disk_full",
    "readonly database": "read_only",
    "database is locked": "locked",
    "database table is locked": "locked",
    "unable to open database file": "cannot_open",
    "file is not a database": "not_a_database",
    "database disk image is malformed": "corrupt",
    "disk i/o error": "io_error",
}
# PostgreSQL's SQLSTATE codes (and classes, by their first two characters).
_POSTGRES_CAUSES = {
    "53100": "disk_full",
    "25006": "read_only",
    "55P03": "locked",
    "28P01": "login_refused",
    "28000": "login_refused",
    "3D000": "no_database",
    "57P01": "connection_lost",
    "57P02": "connection_lost",
    "57P03": "unreachable",
    "53300": "unreachable",
    "08": "connection_lost",
}
_POSTGRES_MESSAGES = {
    "password authentication failed": "login_refused",
    "no pg_hba.conf entry": "login_refused",
    "connection was closed": "connection_lost",
    "connection is closed": "connection_lost",
}
_OS_CAUSES = {
    errno.ENOSPC: "disk_full",
    errno.EDQUOT: "disk_full",
    errno.EACCES: "read_only",
    errno.EPERM: "read_only",
    errno.EROFS: "read_only",
    errno.ENOTDIR: "cannot_open",
    errno.EEXIST: "cannot_open",
    errno.EISDIR: "cannot_open",
    errno.ENOENT: "cannot_open",
    errno.EIO: "io_error",
}
_NETWORK = (ConnectionError, TimeoutError, socket.gaierror)
_NETWORK_ERRNOS = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNREFUSED, errno.ETIMEDOUT}


def where(url: str) -> str:
    """The database as people may see it: the SQLite file, or the URL without its password."""
    file = sqlite_path(url)
    if file is not None:
        return str(file)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return "?"


def _mask(text: str, url: str) -> str:
    try:
        password = make_url(url).password
    except sa_exc.ArgumentError:
        password = None
    first = text.strip().splitlines()[0] if text.strip() else ""
    if password:
        first = first.replace(str(password), "***")
    return first


def _sqlite_cause(error: BaseException) -> str | None:
    name = getattr(error, "sqlite_errorname", "") or ""
    for code, cause in _SQLITE_CAUSES.items():
        if name == code or name.startswith(code + "_"):
            return cause
    message = str(error).lower()
    return next((c for text, c in _SQLITE_MESSAGES.items() if text in message), None)


def _postgres_cause(error: BaseException) -> str | None:
    state = str(getattr(error, "sqlstate", None) or getattr(error, "pgcode", None) or "")
    cause = _POSTGRES_CAUSES.get(state) or _POSTGRES_CAUSES.get(state[:2])
    if cause is None:
        message = str(error).lower()
        cause = next((c for text, c in _POSTGRES_MESSAGES.items() if text in message), None)
    return cause


def _is_database_file(filename: str, url: str) -> bool:
    """Whether an OS error's file is the SQLite file, one of its companions (-wal, -shm,
    -journal, .lock) or a folder it lies in."""
    database = sqlite_path(url)
    if database is None:
        return False
    path = Path(filename).absolute()
    database = database.absolute()
    companion = path.parent == database.parent and path.name.startswith(database.name)
    return companion or path in database.parents


def database_error(exc: BaseException, url: str) -> DatabaseError | None:
    """The :class:`DatabaseError` that ``exc`` means for the database at ``url``; None if it is
    not a failure of the database (a bug, or a file of another kind)."""
    if isinstance(exc, DatabaseError):
        return exc
    shown = where(url)
    if isinstance(exc, sa_exc.DBAPIError):
        driver = exc.orig if exc.orig is not None else exc
        detail = _mask(str(driver), url) or type(driver).__name__
        if is_postgres_url(url):
            cause = _postgres_cause(driver)
            if cause is None and exc.connection_invalidated:
                cause = "connection_lost"
        else:
            cause = _sqlite_cause(driver)
        return DatabaseError(cause, detail, shown)
    if isinstance(exc, sqlite3.Error):
        return DatabaseError(_sqlite_cause(exc), _mask(str(exc), url), shown)
    if isinstance(exc, OSError):
        detail = _mask(exc.strerror or str(exc), url)
        if exc.filename is not None and _is_database_file(str(exc.filename), url):
            return DatabaseError(_OS_CAUSES.get(exc.errno or 0), f"{exc.filename}: {detail}", shown)
        if (
            exc.filename is None
            and is_postgres_url(url)
            and (isinstance(exc, _NETWORK) or exc.errno in _NETWORK_ERRNOS)
        ):
            return DatabaseError("unreachable", _mask(str(exc), url), shown)
        return None
    if is_postgres_url(url) and type(exc).__module__.startswith("asyncpg"):
        # An asyncpg error SQLAlchemy did not wrap (it happens while connecting).
        return DatabaseError(_postgres_cause(exc), _mask(str(exc), url), shown)
    return None


__all__ = ["database_error", "where"]
