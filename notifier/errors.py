"""The one error root of notifier and the typed errors of its boundaries.

Each error carries structured fields (``key``, ``row``, ``recipient`` …) beside its message, so
callers can react to them and the CLI can print one clear line.
"""

from __future__ import annotations

from dataclasses import dataclass


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


class InputError(NotifierError):
    """An input file (CSV, announcement) was refused whole; ``problems`` lists every reason."""

    def __init__(self, path: str, problems: list[RowProblem], summary: str | None = None) -> None:
        self.path = path
        self.problems = problems
        head = summary or f"{path}: {len(problems)} Fehler, nichts wurde gespeichert"
        super().__init__("\n".join([head, *(f"  {p}" for p in problems)]))


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
    """A source (feed, calendar) could not be fetched or parsed; ``source`` names it."""

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        self.problem = problem
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
