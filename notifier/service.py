"""Starts and stops the parts of ``notifier run`` in order (AsyncExitStack)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import datetime

from .catcher import MailCatcher
from .clock import utcnow
from .config import Settings
from .db import Database
from .delivery import Sender, SmtpTransport
from .rendering import Renderer
from .scheduling import Scheduler
from .sources.poller import SourcePoller, http_client
from .topics import sync_topics

logger = logging.getLogger(__name__)


async def prepare_database(db: Database, settings: Settings) -> None:
    """Apply migrations and mirror the configured topics."""
    await db.migrate()
    async with db.transaction() as session:
        await sync_topics(session, settings.topics)


class Service:
    """The whole service: database, catcher (if enabled), sender and scheduler."""

    def __init__(self, settings: Settings, clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.clock = clock
        self.ready = asyncio.Event()
        self.stopped = asyncio.Event()
        self.catcher: MailCatcher | None = None

    def stop(self) -> None:
        self.stopped.set()

    async def run(self, *, install_signal_handlers: bool = True) -> None:
        """Run until :meth:`stop` (or SIGINT/SIGTERM) and shut down cleanly."""
        settings = self.settings
        loop = asyncio.get_running_loop()
        async with AsyncExitStack() as stack:
            if install_signal_handlers:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, self.stop)
                    stack.callback(loop.remove_signal_handler, sig)
            db = await stack.enter_async_context(
                Database(settings.database_url, echo=settings.database.echo)
            )
            await prepare_database(db, settings)
            host, port, tls = settings.smtp.host, settings.smtp.port, settings.smtp.tls
            if settings.smtp.catcher:
                self.catcher = await stack.enter_async_context(
                    MailCatcher(
                        settings.path(settings.catcher.directory),
                        settings.catcher.host,
                        settings.catcher.port,
                    )
                )
                host, port, tls = self.catcher.host, self.catcher.port, "none"
            sender = Sender(
                db,
                settings,
                Renderer(settings),
                lambda: SmtpTransport(settings.smtp, host=host, port=port, tls=tls),
                self.clock,
            )
            sender_task = asyncio.create_task(sender.run(), name="sender")

            async def stop_sender() -> None:
                sender.stop()
                # The message in flight may finish; after 10 s it is abandoned (its lease brings
                # it back at the next start).
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(sender_task, timeout=10)

            stack.push_async_callback(stop_sender)
            client = await stack.enter_async_context(http_client())
            poller = SourcePoller(db, settings, client, self.clock)
            scheduler = Scheduler(db, settings, self.clock, sender.wake.set, poller)
            scheduler.start()
            stack.push_async_callback(scheduler.aclose)
            logger.info(
                "notifier running: database %s, SMTP %s:%d%s",
                db.engine.url.render_as_string(hide_password=True),
                host,
                port,
                " (mail catcher)" if settings.smtp.catcher else "",
            )
            self.ready.set()
            await self.stopped.wait()
            logger.info("notifier stopping")
        logger.info("notifier stopped")
