"""How the sender copes with trouble that is not one message's: an SMTP server that cannot be
reached, a database that refuses writes. Both are met with growing pauses instead of a retry
per message (or per 50 ms), and each is logged once when it starts and once when it ends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.exc import DBAPIError

logger = logging.getLogger(__name__)

# A connection whose session cannot be set up waits this long before it tries again, doubling
# up to CONNECTION_PAUSE_MAX; with every connection paused, the sender claims nothing and sends
# a small batch as a probe after OUTAGE_PROBE_FIRST seconds, doubling up to OUTAGE_PROBE_MAX.
CONNECTION_PAUSE_FIRST = 1.0
CONNECTION_PAUSE_MAX = 60.0
OUTAGE_PROBE_FIRST = 2.0
OUTAGE_PROBE_MAX = 60.0


def short_reason(exc: BaseException) -> str:
    """One line about an error, without what it may carry (a database error's SQL and its
    parameters, which can hold addresses)."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


class Trouble:
    """Failures of one operation in a row (writing outcomes, claiming): :meth:`failed` logs the
    first with its traceback and returns the pause before the next try (growing), and
    :meth:`recovered` logs the end of it."""

    def __init__(self, what: str, *, first: float = 0.05, most: float = 30.0) -> None:
        self.what = what
        self.first = first
        self.most = most
        self.failures = 0

    def failed(self, exc: BaseException) -> float:
        self.failures += 1
        if self.failures == 1:
            logger.error(
                "%s gestört: %s – neue Versuche mit wachsenden Pausen (bis %d s)",
                self.what,
                short_reason(exc),
                self.most,
                exc_info=exc,
            )
        else:
            logger.debug("%s: Versuch %d: %s", self.what, self.failures, short_reason(exc))
        return float(min(self.first * 2 ** (self.failures - 1), self.most))

    def recovered(self) -> None:
        if self.failures:
            logger.warning("%s wieder in Ordnung nach %d Fehlversuchen", self.what, self.failures)
            self.failures = 0


@dataclass
class Outage:
    """Every connection failed to reach the SMTP server."""

    since: datetime
    reason: str
    probe_at: float  # loop time of the next probe
    probes: int = 0


@dataclass
class SmtpHealth:
    """The connections' reachability. A connection that cannot set up its session is paused
    (:meth:`pause`); when every connection is paused, the server counts as unreachable (an
    :class:`Outage`) until one message goes through again."""

    connections: int
    outage: Outage | None = None
    _paused: dict[int, tuple[float, int]] = field(default_factory=dict)  # until, failures

    def connection_failed(self, index: int, reason: str, now: datetime, loop_time: float) -> bool:
        """Pause connection ``index``; True when this makes the server count as unreachable."""
        failures = self._paused.get(index, (0.0, 0))[1] + 1
        pause = min(CONNECTION_PAUSE_FIRST * 2 ** (failures - 1), CONNECTION_PAUSE_MAX)
        self._paused[index] = (loop_time + pause, failures)
        logger.debug("SMTP-Verbindung %d: %s – Pause %.0f s", index, reason, pause)
        if self.outage is not None:
            if loop_time >= self.outage.probe_at:  # the probe failed: wait longer
                self.outage.probes += 1
                self.outage.probe_at = loop_time + min(
                    OUTAGE_PROBE_FIRST * 2**self.outage.probes, OUTAGE_PROBE_MAX
                )
            return False
        if len(self._paused) < self.connections:
            return False
        self.outage = Outage(since=now, reason=reason, probe_at=loop_time + OUTAGE_PROBE_FIRST)
        return True

    def connection_ok(self, index: int) -> Outage | None:
        """Connection ``index`` works; returns the outage this ends, if any."""
        self._paused.pop(index, None)
        ended, self.outage = self.outage, None
        if ended is not None:
            self._paused.clear()
        return ended

    def working(self, index: int) -> bool:
        """Whether connection ``index`` reached the server when it last tried (or never did)."""
        return self.outage is None and index not in self._paused

    def pause(self, index: int, loop_time: float) -> float:
        """Seconds connection ``index`` should wait before its next message (0: none). In an
        outage no connection waits: claiming waits instead, and each probe message tries."""
        if self.outage is not None or index not in self._paused:
            return 0.0
        return max(0.0, self._paused[index][0] - loop_time)
