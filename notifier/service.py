"""Starts and stops the parts of ``notifier run`` in order (AsyncExitStack)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from . import metrics
from .clock import utcnow
from .config import Settings
from .db import Database
from .db.engine import sqlite_path
from .db.lockfile import ServiceLock
from .delivery import Sender, SmtpTransport
from .errors import NotifierError
from .metrics.directory import leave as leave_metrics
from .rendering import Renderer
from .topics import sync_topics

if TYPE_CHECKING:
    from .catcher_server import MailCatcher

logger = logging.getLogger(__name__)


def limit_malloc_arenas(arenas: int = 1) -> None:
    """Use at most ``arenas`` glibc malloc arenas (what MALLOC_ARENA_MAX sets).

    Each thread that allocates (the database threads, the worker threads of short write
    transactions) otherwise gets an arena of its own, which keeps freed memory for itself:
    measured, 20 MB less resident memory for a sender pair during a bulk send. Must run before
    threads start; does nothing where malloc is not glibc's.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_ARENA_MAX, arenas)
    except (OSError, AttributeError):
        logger.debug("mallopt is not available; malloc arenas are not limited")


_M_ARENA_MAX = -8  # from glibc's malloc.h


async def prepare_database(db: Database, settings: Settings) -> None:
    """Apply migrations and mirror the configured topics."""
    await db.migrate()
    async with db.transaction() as session:
        await sync_topics(session, settings.topics)


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` names this machine (localhost, 127.0.0.0/8, ::1)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_about_plain_http(settings: Settings) -> None:
    """One warning when recipients reach the service over http:// from elsewhere: the big
    providers (Gmail, GMX, WEB.DE, T-Online) offer one-click unsubscribing (RFC 8058) only for
    HTTPS links."""
    url = settings.mail.public_base_url
    if url.startswith("http://") and not is_loopback_url(url):
        logger.warning(
            "[mail] public_base_url %s verwendet http://: Abmelden mit einem Klick "
            "(List-Unsubscribe-Post) setzt bei den E-Mail-Anbietern HTTPS voraus.",
            url,
        )


def start_metrics(settings: Settings) -> Path | None:
    """A fresh set of metrics for this process: in ``[metrics] directory`` when enabled (the
    scrape adds up the machine's processes), else in memory. Raises NotifierError naming the
    key and the path when the directory cannot be used."""
    if not settings.metrics.enabled:
        metrics.configure(None)
        return None
    directory = settings.metrics_dir
    try:
        metrics.configure(directory)
    except OSError as exc:
        raise NotifierError(
            f"[metrics] directory: {directory} ist nicht anlegbar oder nicht beschreibbar "
            f"({exc.strerror or exc})"
        ) from exc
    if not settings.metrics.token.get_secret_value() and not _loopback_host(settings.web.host):
        logger.warning(
            "[metrics] ist ohne token eingeschaltet und die Web-Oberfläche lauscht auf %s: "
            "/metrics ist für jeden erreichbar, der diese Adresse erreicht.",
            settings.web.host,
        )
    return directory


def _loopback_host(host: str) -> bool:
    return is_loopback_url(f"http://{host}/")


ROLES = ("sender", "scheduler", "web")
# Roles of which SQLite allows one service per database file (see notifier.db.lockfile); a
# web-only process reads and writes through the database like the command line.
EXCLUSIVE = {"sender", "scheduler"}


class Service:
    """The service: database, catcher (if enabled), sender, scheduler and web application.

    ``roles`` selects the parts (both by default). With ``[delivery] processes`` above one, the
    full service starts that many sender processes in all (itself included), so sending uses
    every core; they share the outbox through the database.
    """

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], datetime] = utcnow,
        *,
        roles: Sequence[str] = ROLES,
        smtp_override: tuple[str, int] | None = None,
        parent_pid: int | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.roles = tuple(roles)
        self.smtp_override = smtp_override
        self.parent_pid = parent_pid
        self.ready = asyncio.Event()
        self.stopped = asyncio.Event()
        self.catcher: MailCatcher | None = None
        self.web_port: int | None = None  # where the web application listens, once ready
        self.bounce_port: int | None = None  # where the bounce listener listens, if it does
        self.helpers: list[asyncio.subprocess.Process] = []

    def stop(self) -> None:
        self.stopped.set()

    async def run(self, *, install_signal_handlers: bool = True) -> None:
        """Run until :meth:`stop` (or SIGINT/SIGTERM) and shut down cleanly."""
        settings = self.settings
        loop = asyncio.get_running_loop()
        limit_malloc_arenas()
        if self.parent_pid is None:  # a helper's parent has warned already
            warn_about_plain_http(settings)
        if settings.dkim.enabled:
            # Before anything starts: a key that cannot sign stops the start with one line.
            from .dkim import Signer

            Signer.from_settings(settings)
        async with AsyncExitStack() as stack:
            if install_signal_handlers:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, self.stop)
                    stack.callback(loop.remove_signal_handler, sig)
            if self.parent_pid is not None:
                watch = asyncio.create_task(self._watch_parent(self.parent_pid))
                stack.callback(watch.cancel)
            metrics_directory = start_metrics(settings)
            if metrics_directory is not None:
                stack.callback(leave_metrics, metrics_directory)
            sqlite_file = sqlite_path(settings.database_url)
            if sqlite_file is not None and self.parent_pid is None and EXCLUSIVE & {*self.roles}:
                # One service per SQLite file (its helpers run under this lock).
                stack.enter_context(ServiceLock(sqlite_file))
            db = await stack.enter_async_context(
                Database(
                    settings.database_url, echo=settings.database.echo, role="+".join(self.roles)
                )
            )
            if self.parent_pid is None:  # a helper's parent has prepared the database
                await prepare_database(db, settings)
            host, port, tls = settings.smtp.host, settings.smtp.port, settings.smtp.tls
            if self.smtp_override is not None:
                (host, port), tls = self.smtp_override, "none"
            elif settings.smtp.catcher and "sender" not in self.roles:
                # The catcher runs where messages are sent; this process only names it.
                host, port, tls = settings.catcher.host, settings.catcher.port, "none"
            elif settings.smtp.catcher:
                from .catcher_server import MailCatcher  # aiosmtpd only where it runs

                self.catcher = await stack.enter_async_context(
                    MailCatcher(
                        settings.catcher_dir,
                        settings.catcher.host,
                        settings.catcher.port,
                    )
                )
                host, port, tls = self.catcher.host, self.catcher.port, "none"
            wake: Callable[[], None] = lambda: None  # noqa: E731
            if "sender" in self.roles:
                sender = Sender(
                    db,
                    settings,
                    Renderer(settings),
                    lambda: SmtpTransport(settings.smtp, host=host, port=port, tls=tls),
                    self.clock,
                )
                sender_task = asyncio.create_task(sender.run(), name="sender")
                stack.push_async_callback(self._stop_sender, sender, sender_task)
                wake = sender.wake.set
                if self.roles == ROLES and settings.delivery.processes > 1:
                    await self._start_helpers(settings.delivery.processes - 1, host, port)
                    stack.push_async_callback(self._stop_helpers)
            if "scheduler" in self.roles:
                # Imported here: a sender-only process does without feeds, calendars and jobs.
                from .scheduling import LeadingScheduler, Scheduler

                poller = None
                if settings.sources.all:
                    # Imported only then: httpx, feedparser and icalendar are about 10 MB.
                    from .sources.poller import SourcePoller, http_client

                    client = await stack.enter_async_context(http_client())
                    poller = SourcePoller(db, settings, client, self.clock)
                # Only the elected leader of all scheduler processes runs the jobs.
                scheduler = LeadingScheduler(
                    db, lambda: Scheduler(db, settings, self.clock, wake, poller)
                )
                scheduler.start()
                stack.push_async_callback(scheduler.aclose)
                listen = settings.bounces.listen_address
                if listen is not None:
                    # Bounces forwarded by the mail server: one listener, beside the scheduler.
                    from .bounces.intake import BounceIntake
                    from .bounces.listener import BounceListener

                    listener = await stack.enter_async_context(
                        BounceListener(
                            BounceIntake(db, settings, self.clock),
                            *listen,
                            max_bytes=settings.bounces.max_message_bytes,
                        )
                    )
                    self.bounce_port = listener.port
            if "web" in self.roles and settings.web.enabled:
                # Imported here: a sender-only process does without FastAPI and uvicorn.
                from .catcher import MailStore
                from .web import WebServer, create_app

                app = create_app(
                    settings,
                    db,
                    self.clock,
                    wake=wake,
                    mails=MailStore(settings.catcher_dir) if settings.smtp.catcher else None,
                )
                # Test messages from the office go where this service sends (the catcher too).
                app.state.ctx.extra["smtp"] = (host, port, tls)
                web = await stack.enter_async_context(
                    WebServer(app, settings.web.host, settings.web.port)
                )
                self.web_port = web.port
            logger.info(
                "notifier running (%s): database %s, SMTP %s:%d%s",
                ", ".join(self.roles),
                db.display_url,
                host,
                port,
                " (mail catcher)" if settings.smtp.catcher else "",
            )
            self.ready.set()
            await self.stopped.wait()
            logger.info("notifier stopping")
        logger.info("notifier stopped")

    @staticmethod
    async def _stop_sender(sender: Sender, task: asyncio.Task[None]) -> None:
        sender.stop()
        # The messages on the wire may finish; after 10 s they are abandoned (their lease
        # brings them back at the next start).
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, timeout=10)

    async def _start_helpers(self, count: int, host: str, port: int) -> None:
        if self.settings.config_file is None:
            raise NotifierError("[delivery] processes > 1 needs the service started from a file")
        # The catcher (or an override) is this process's: the helpers send to the same port.
        smtp_args: list[str] = []
        if self.catcher is not None or self.smtp_override is not None:
            smtp_args = ["--smtp", f"{host}:{port}"]
        for _ in range(count):
            self.helpers.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "notifier",
                    "--config",
                    str(self.settings.config_file),
                    "run",
                    "--only",
                    "sender",
                    "--parent",
                    str(os.getpid()),
                    *smtp_args,
                )
            )
        logger.info("started %d more sender processes", count)

    async def _stop_helpers(self) -> None:
        for proc in self.helpers:
            if proc.returncode is None:
                proc.terminate()
        for proc in self.helpers:
            try:
                await asyncio.wait_for(proc.wait(), timeout=15)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    async def _watch_parent(self, parent: int) -> None:
        """A helper process ends when the process that started it is gone (even by SIGKILL)."""
        # No event announces a parent's death (it may die by SIGKILL): polling it is.
        while os.getppid() == parent:  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        logger.warning("parent process %d is gone; stopping", parent)
        self.stop()
