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
