"""APScheduler wiring: the jobs that move items along.

The database, not the scheduler's memory, says what is due: the release job asks for scheduled
items whose time has come, so announcements written by another process (the CLI) are seen, and
one whose time passed while the service was down goes out once at the next start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from .config import SchedulerSettings
from .db import Database
from .routing import release_due

logger = logging.getLogger(__name__)


class Scheduler:
    """Owns an AsyncIOScheduler; ``on_routed`` is called after items were routed."""

    def __init__(
        self,
        db: Database,
        settings: SchedulerSettings,
        clock: Callable[[], datetime],
        on_routed: Callable[[], None],
    ) -> None:
        self.db = db
        self.clock = clock
        self.on_routed = on_routed
        self.scheduler = AsyncIOScheduler(timezone=settings.tz)
        self.scheduler.add_job(
            self.release_due_items,
            "interval",
            seconds=settings.poll_seconds,
            id="release-due-items",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,  # a late run (busy loop) still runs; it is idempotent
            next_run_time=datetime.now(settings.tz),
        )

    async def release_due_items(self) -> None:
        try:
            routed = await release_due(self.db, self.clock())
        except Exception:
            logger.exception("releasing due items failed; trying again at the next interval")
            return
        if routed:
            self.on_routed()

    def start(self) -> None:
        self.scheduler.start()

    def shutdown(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
