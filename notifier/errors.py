"""The one error root of notifier and the typed errors of its boundaries.

Each error carries structured fields (``key``, ``row``, ``recipient`` …) beside its message, so
callers can react to them and the CLI can print one clear line.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar


class NotifierError(Exception):
    """Root of every error notifier raises on purpose."""


class ConfigError(NotifierError):
    """The configuration file or environment holds a value that cannot be used."""

    def __init__(self, path: str, key: str | None, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        where = f"{path}: key '{key}'" if key else path
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class RowProblem:
    """One problem of one input row: ``line`` counts from 1 and includes the header line."""

    line: int
    column: str
    reason: str

    def __str__(self) -> str:
        return f"Zeile {self.line}, Spalte '{self.column}': {self.reason}"


# An input error lists at most this many problems (the first ones) and counts the others.
MAX_LISTED = 100


class InputError(NotifierError):
    """An input file (CSV, announcement) was refused whole; ``problems`` lists the reasons (the
    first :data:`MAX_LISTED`), ``total`` counts them all."""

    def __init__(
        self,
        path: str,
        problems: list[RowProblem],
        summary: str | None = None,
        *,
        total: int | None = None,
    ) -> None:
        self.path = path
        self.problems = problems[:MAX_LISTED]
        self.total = len(problems) if total is None else total
        self.omitted = self.total - len(self.problems)
        head = summary or f"{path}: {self.total} Fehler, nichts wurde gespeichert"
        lines = [head, *(f"  {p}" for p in self.problems)]
        if self.omitted:
            lines.append(f"  … und {self.omitted} weitere")
        super().__init__("\n".join(lines))


class FieldError(NotifierError, ValueError):
    """One input field (of a form, an API request or a command's argument) was refused."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class NotFoundError(NotifierError, LookupError):
    """A record named by the caller (announcement id, mail number …) does not exist."""


class StateError(NotifierError):
    """The requested change does not fit the record's current state."""


class SourceError(NotifierError):
    """A source (feed, calendar) could not be fetched or parsed; ``source`` names it.

    ``problem`` is one German line for the office that repeats nothing of the source's content;
    ``detail`` is the technical cause (a library's words) for the log only."""

    def __init__(self, source: str, problem: str, *, detail: str | None = None) -> None:
        self.source = source
        self.problem = problem
        self.detail = detail
        super().__init__(f"{source}: {problem}")


class DeliveryError(NotifierError):
    """Sending one message failed; ``code`` and ``reply`` are the SMTP server's answer if any."""

    def __init__(self, recipient: str, code: int | None, reply: str) -> None:
        self.recipient = recipient
        self.code = code
        self.reply = reply
        super().__init__(f"{recipient}: {code or '-'} {reply}")


class TemporaryDeliveryError(DeliveryError, ConnectionError):
    """A failure worth retrying later (4xx reply, lost connection, timeout)."""


class PermanentDeliveryError(DeliveryError):
    """A failure that retrying cannot fix (a 5xx reply). ``bounced`` is true when the server
    refused the recipient's address itself (at RCPT), which is what counts towards suppressing
    it; a refused message content does not."""

    def __init__(
        self, recipient: str, code: int | None, reply: str, *, bounced: bool = False
    ) -> None:
        super().__init__(recipient, code, reply)
        self.bounced = bounced


class SmtpUnavailable(TemporaryDeliveryError):
    """No session with the SMTP server could be set up (refused, unreachable, a 421 greeting,
    a failed TLS handshake or login): no message was tried. The sender pauses the connection
    instead of trying the next message at once."""


def megabytes(size: int, *, round_up: bool = False) -> str:
    """A size in bytes for people: ``12,3 MB`` (one decimal), below 1 MB ``350 kB``. Sizes
    compared with a limit round up and the limit down, so "too large" never reads as equal."""
    unit, name = (1_000_000, "MB") if size >= 1_000_000 else (1_000, "kB")
    step = unit // 10 if name == "MB" else unit
    count = -(-size // step) if round_up else size // step
    if name == "kB":
        return f"{count} kB"
    whole, tenth = divmod(count, 10)
    return f"{whole} MB" if tenth == 0 else f"{whole},{tenth} MB"


class AnnouncementRefused(NotifierError):
    """An announcement that may not be scheduled as it is; the message says why."""


class MessageTooLargeError(AnnouncementRefused):
    """A message would be larger than allowed; ``size`` and ``limit`` are in bytes."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"Die Nachricht ist mit {megabytes(size, round_up=True)} zu groß "
            f"(höchstens {megabytes(limit)})."
        )


class RemoteImageError(AnnouncementRefused):
    """An announcement's text loads images from ``hosts``, none listed in ``[mail]
    image_hosts``."""

    def __init__(self, hosts: list[str], allowed: list[str]) -> None:
        self.hosts = hosts
        self.allowed = allowed
        named = ", ".join(hosts)
        listed = ", ".join(allowed) if allowed else "keine"
        super().__init__(
            f"Der Text lädt Bilder von einem fremden Rechner ({named}). Ein solches Bild verrät "
            "dem Rechner, wer die E-Mail wann öffnet; erlaubt sind nur Rechner aus "
            f"[mail] image_hosts (derzeit: {listed}). Bitte das Bild entfernen oder als "
            "Link angeben."
        )


# German descriptions of what goes wrong with storage, shared by the database and files.
DISK_FULL = "kein Speicherplatz frei"
READ_ONLY = "keine Schreibberechtigung oder schreibgeschützt"
_OS_REASONS = {
    errno.ENOSPC: DISK_FULL,
    errno.EDQUOT: "Speicherkontingent erschöpft",
    errno.EACCES: READ_ONLY,
    errno.EPERM: READ_ONLY,
    errno.EROFS: READ_ONLY,
    errno.ENOENT: "nicht vorhanden",
    errno.ENOTDIR: "ein Teil des Pfades ist kein Verzeichnis",
    errno.EISDIR: "ist ein Verzeichnis",
}


def os_reason(exc: OSError) -> str:
    """What an operating-system error means, in German (the system's text for rare ones)."""
    return _OS_REASONS.get(exc.errno or 0) or exc.strerror or str(exc)


class FileError(NotifierError):
    """A file could not be read or written; ``path`` names it, ``errno`` is the system's."""

    def __init__(self, path: str, errno: int | None, problem: str) -> None:
        self.path = path
        self.errno = errno
        self.problem = problem
        super().__init__(f"Datei {path}: {problem}")

    @classmethod
    def from_os(cls, exc: OSError, path: object = None) -> FileError:
        """The error for ``exc`` about ``path`` (by default the file the error names)."""
        named = path if path is not None else exc.filename
        return cls(str(named) if named is not None else "?", exc.errno, os_reason(exc))


class DatabaseError(NotifierError):
    """The database failed, refused a statement, or could not be reached.

    ``cause`` names the common causes (a key of :attr:`CAUSES`), None for others; ``detail`` is
    the driver's message (first line, secrets masked), ``where`` the database file or URL
    without its password.
    """

    CAUSES: ClassVar[Mapping[str, str]] = {
        "disk_full": DISK_FULL,
        "read_only": READ_ONLY,
        "locked": "gesperrt, ein anderer Prozess schreibt gerade",
        "cannot_open": "die Datenbankdatei lässt sich nicht öffnen",
        "not_a_database": "die Datei ist keine SQLite-Datenbank",
        "corrupt": "die Datenbankdatei ist beschädigt",
        "io_error": "Ein-/Ausgabefehler des Datenträgers",
        "unreachable": "der Datenbankserver ist nicht erreichbar",
        "login_refused": "Anmeldung am Datenbankserver abgelehnt",
        "no_database": "die Datenbank existiert auf dem Server nicht",
        "connection_lost": "die Verbindung zum Datenbankserver ist abgebrochen",
    }

    def __init__(self, cause: str | None, detail: str, where: str = "") -> None:
        self.cause = cause
        self.detail = detail
        self.where = where
        reason = self.CAUSES.get(cause or "")
        if reason:
            within = f"{where}: {detail}" if where else detail
            text = f"Datenbank: {reason} ({within})"
        else:
            text = f"Datenbank: {detail}" + (f" ({where})" if where else "")
        super().__init__(text)
