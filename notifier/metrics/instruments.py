"""The service's metrics (counters, gauges, histograms), one set per process.

Call sites take the current set with :func:`current` and count: an increment is a few
microseconds (an addition, and in multiprocess mode a write into a memory-mapped file), never
a lock shared with other processes or a system call, so the delivery path can count every
message. Values that the database knows anyway (the outbox by state, the age of each source's
last success) are not counted here but read at the scrape (:mod:`notifier.metrics.exposition`).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

from .directory import prepare_directory

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Seconds from a message's release (its outbox row is made when its item is sent, its
# briefing built or its sign-up confirmed) to the SMTP server's acceptance.
LATENCY_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 72 * 3600)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Instruments:
    """Every metric of the service. ``registry`` collects them in single-process mode; in
    multiprocess mode the scrape reads the files of all processes instead."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.sent = Counter(
            "notifier_messages_sent", "Messages the SMTP server accepted.", registry=r
        )
        self.deferred = Counter(
            "notifier_messages_deferred",
            "Messages deferred for another attempt, by reason class.",
            ["reason"],
            registry=r,
        )
        self.failed = Counter(
            "notifier_messages_failed",
            "Messages failed for good, by reason class.",
            ["reason"],
            registry=r,
        )
        self.latency = Histogram(
            "notifier_send_latency_seconds",
            "Seconds from a message's release (its outbox row made) to the server's acceptance.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.smtp_session_errors = Counter(
            "notifier_smtp_session_errors",
            "SMTP sessions that could not be set up (refused, unreachable, TLS, login), by class.",
            ["reason"],
            registry=r,
        )
        self.rate_limit_waits = Counter(
            "notifier_rate_limit_waits",
            "Times a connection waited for the rate limit ([delivery] rate_per_*).",
            registry=r,
        )
        self.rate_limit_wait_seconds = Counter(
            "notifier_rate_limit_wait_seconds",
            "Seconds connections waited for the rate limit.",
            registry=r,
        )
        self.source_polls = Counter(
            "notifier_source_polls",
            "Polls of a source, by result (ok, not_modified, error).",
            ["source", "result"],
            registry=r,
        )
        self.source_errors = Counter(
            "notifier_source_errors", "Polls of a source that failed.", ["source"], registry=r
        )
        self.scheduler_leader = Gauge(
            "notifier_scheduler_leader",
            "1 while this process runs the scheduler's jobs (the elected leader).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.briefing_runs = Counter(
            "notifier_briefing_runs",
            "Briefing slots handled, by rhythm.",
            ["rhythm"],
            registry=r,
        )
        self.briefings_built = Counter(
            "notifier_briefings_built",
            "Briefings (one per recipient) built, by rhythm.",
            ["rhythm"],
            registry=r,
        )
        self.signups = Counter("notifier_signups", "Sign-ups through the form.", registry=r)
        self.signups_refused = Counter(
            "notifier_signups_refused",
            "Sign-up posts that sent nothing: a limit on confirmation mails, or the hidden field.",
            ["reason"],
            registry=r,
        )
        self.confirmations = Counter(
            "notifier_confirmations", "Sign-ups confirmed (double opt-in).", registry=r
        )
        self.unsubscribes = Counter(
            "notifier_unsubscribes",
            "Unsubscribes through the personal link (page or one click).",
            registry=r,
        )
        self.http_requests = Counter(
            "notifier_http_requests",
            "HTTP requests, by method, route template and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "notifier_http_request_duration_seconds",
            "Seconds to answer an HTTP request, by method and route template.",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )


_lock = threading.Lock()
_current: Instruments | None = None
_directory: Path | None = None


def current() -> Instruments:
    """This process's metrics (in memory only, until :func:`configure` says otherwise)."""
    global _current
    if _current is None:
        with _lock:
            if _current is None:
                _current = Instruments(CollectorRegistry(auto_describe=True))
    return _current


def directory() -> Path | None:
    """The multiprocess directory this process writes into; None: in memory only."""
    return _directory


def configure(directory: Path | None) -> Instruments:
    """Start a fresh set of metrics: kept in ``directory`` for the scrape to add up over the
    processes of the machine (multiprocess mode), or in memory (None). Raises OSError if the
    directory cannot be made or written."""
    global _current, _directory
    with _lock:
        if directory is None:
            os.environ.pop(MULTIPROC_ENV, None)
            values.ValueClass = values.MutexValue
            _current = Instruments(CollectorRegistry(auto_describe=True))
            _directory = None
            return _current
        with prepare_directory(directory):
            # prometheus-client picks the kind of value when a metric (or a labelled child)
            # is made, and the folder of its file from the environment: from here on, values
            # live in files of this directory (named after this process).
            os.environ[MULTIPROC_ENV] = str(directory)
            values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
            _current = Instruments(CollectorRegistry(auto_describe=True))
            _directory = directory
        return _current
