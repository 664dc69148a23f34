"""APScheduler wiring: the jobs that move items along.

The database, not the scheduler's memory, says what is due: every check asks for scheduled items
whose time has come, briefing slots not yet handled, reminders not yet sent. So announcements
written by another process (the CLI) are seen, and work whose time passed while the service was
down is done once at the next start. An item due before the next check gets a timer of its own
at its send time, so it is routed at that moment, not up to ``poll_seconds`` later.

Several processes may run the scheduler role (on PostgreSQL); :class:`LeadingScheduler` runs
the jobs only in the one that holds the scheduler lock, and another takes over within seconds
when that one dies. The database guards every job, so work is never done twice, even when an
old leader still finishes a job while the new one starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from . import metrics, reach, retention
from .briefings import next_briefing_slot, run_due_briefings, send_due_reminders
from .config import CalendarSource, FeedSource, Settings
from .db import Database
from .db.leader import SCHEDULER_LOCK, LeaderLock
from .routing import next_release, release_due

if TYPE_CHECKING:
    from .bounces.imap import ImapPoller
    from .sources.poller import SourcePoller

logger = logging.getLogger(__name__)

# How long a stop waits for running jobs before they are cancelled.
JOB_GRACE_SECONDS = 10.0
# How often a standby asks for the scheduler lock, and the leader checks it still holds it.
ELECTION_SECONDS = 1.0
# How often the retention periods of [retention] are carried out.
PURGE_SECONDS = 24 * 3600.0


class Scheduler:
    """Owns an AsyncIOScheduler; ``on_queued`` is called when new messages wait in the outbox."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        clock: Callable[[], datetime],
        on_queued: Callable[[], None],
        poller: SourcePoller | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self.on_queued = on_queued
        tz = settings.scheduler.tz
        self.scheduler = AsyncIOScheduler(timezone=tz)
        self._running: set[asyncio.Task[None]] = set()
        # The next briefing slot of any rhythm: until then the check needs no database (every
        # SQLite transaction takes the write lock the senders need).
        self._next_briefing: datetime | None = None
        checks: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("release-due-items", self.release_due_items),
            ("briefings", self.briefings),
            ("reminders", self.reminders),
        ]
        for job_id, func in checks:
            self._add(job_id, func, settings.scheduler.poll_seconds)
        # Bounces: the IMAP mailbox every poll_minutes; raw messages past keep_raw_days hourly.
        from .bounces.intake import BounceIntake

        self.bounce_intake = BounceIntake(db, settings, clock)
        if settings.bounces.imap.host:
            from .bounces.imap import ImapPoller

            self._add(
                "bounces:imap",
                functools.partial(self._poll_bounces, ImapPoller(settings, self.bounce_intake)),
                settings.bounces.imap.poll_minutes * 60,
            )
        self._add("bounces:clean", self.clean_bounces, 3600)
        # The retention periods: at the leader's start, then daily.
        self._add("privacy-purge", self.privacy_purge, PURGE_SECONDS)
        # Today's reach for the chart of reach over time: at the leader's start, then hourly.
        self._add("reach-snapshot", self.reach_snapshot, reach.SNAPSHOT_SECONDS)
        if poller is not None:
            for source in settings.sources.all:
                # A partial, not a lambda: APScheduler must see a coroutine function to await it.
                self._add(
                    f"source:{source.name}",
                    functools.partial(self._poll, poller, source),
                    source.poll_minutes * 60,
                )

    def _add(self, job_id: str, func: Callable[[], Awaitable[None]], seconds: float) -> None:
        self.scheduler.add_job(
            func,
            "interval",
            seconds=seconds,
            id=job_id,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,  # a late run (busy loop) still runs; every job is idempotent
            next_run_time=datetime.now(self.settings.scheduler.tz),
        )

    async def _guarded(self, name: str, work: Callable[[], Awaitable[bool]]) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            queued = await work()
        except Exception:
            logger.exception("%s failed; trying again at the next interval", name)
            return
        finally:
            if task is not None:
                self._running.discard(task)
        if queued:
            self.on_queued()

    async def release_due_items(self) -> None:
        async def work() -> bool:
            released = await release_due(self.db, self.clock())
            await self._time_next_release()
            return bool(released)

        await self._guarded("releasing due items", work)

    async def _time_next_release(self) -> None:
        """Run the release check exactly at the next send time if that comes before the next
        regular check."""
        now = self.clock()
        due = await next_release(self.db, now)
        if due is None:
            return
        delay = (due - now).total_seconds()
        if delay >= self.settings.scheduler.poll_seconds:
            return  # a later check sees it first, and times it then
        self.scheduler.add_job(
            self.release_due_items,
            "date",
            # The scheduler runs on the wall clock; ``self.clock`` may be another (tests).
            run_date=datetime.now(self.settings.scheduler.tz) + timedelta(seconds=delay),
            id="release-at-send-time",
            replace_existing=True,
            misfire_grace_time=None,
        )

    async def briefings(self) -> None:
        now = self.clock()
        if self._next_briefing is not None and now < self._next_briefing:
            return

        async def work() -> bool:
            built = await run_due_briefings(self.db, self.settings, now)
            self._next_briefing = next_briefing_slot(self.settings, now)
            return any(built.values())

        await self._guarded("building briefings", work)

    async def reminders(self) -> None:
        async def work() -> bool:
            return bool(await send_due_reminders(self.db, self.settings, self.clock()))

        await self._guarded("sending reminders", work)

    async def privacy_purge(self) -> None:
        async def work() -> bool:
            await retention.purge(self.db, self.settings, self.clock())
            return False

        await self._guarded("purging by the retention periods", work)

    async def reach_snapshot(self) -> None:
        async def work() -> bool:
            settings = self.settings
            await reach.take_snapshot(
                self.db, settings.topic_keys, self.clock(), settings.scheduler.tz
            )
            return False

        await self._guarded("recording the reach of the day", work)

    async def _poll(self, poller: SourcePoller, source: FeedSource | CalendarSource) -> None:
        async def work() -> bool:
            result = await poller.poll(source)
            # New items are routed by the next release check; notices are queued already.
            return bool(result.new or result.cancelled or result.changed)

        await self._guarded(f"polling {source.name}", work)

    async def _poll_bounces(self, poller: ImapPoller) -> None:
        from .bounces.imap import ImapError

        async def work() -> bool:
            try:
                result = await poller.poll()
            except ImapError as exc:
                logger.warning("Bounce-Postfach: %s; neuer Versuch beim nächsten Abruf", exc)
                return False
            if result.looked_at:
                logger.info(
                    "Bounce-Postfach: %d Nachrichten, %d verarbeitet, %d liegen gelassen",
                    result.looked_at,
                    result.processed,
                    result.left,
                )
            return False

        await self._guarded("polling the bounce mailbox", work)

    async def clean_bounces(self) -> None:
        async def work() -> bool:
            await self.bounce_intake.clean()
            return False

        await self._guarded("forgetting old bounce messages", work)

    def start(self) -> None:
        self.scheduler.start()

    async def aclose(self) -> None:
        """Start no more jobs, let running ones finish (a poll, a briefing build), then stop.

        APScheduler's own shutdown would cancel them mid-transaction."""
        if not self.scheduler.running:
            return
        self.scheduler.pause()
        if self._running:
            await asyncio.wait(set(self._running), timeout=JOB_GRACE_SECONDS)
        self.scheduler.shutdown(wait=False)


class LeadingScheduler:
    """Runs a :class:`Scheduler` (made by ``make``) only while this process holds the scheduler
    lock: at once on SQLite, after winning the election on PostgreSQL. A leader that loses its
    lock's connection stops its jobs; a standby asks again every ``interval`` seconds."""

    def __init__(
        self,
        db: Database,
        make: Callable[[], Scheduler],
        interval: float = ELECTION_SECONDS,
    ) -> None:
        self.db = db
        self.make = make
        self.interval = interval
        self.leading = asyncio.Event()
        self._lock = LeaderLock(db, SCHEDULER_LOCK, name="scheduler")
        self._scheduler: Scheduler | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._elect(), name="scheduler-election")

    async def _elect(self) -> None:
        waiting_logged = False
        while True:
            try:
                if self._scheduler is None:
                    if await self._lock.try_acquire():
                        if self.db.is_postgres:
                            logger.info("Planer: Leitung übernommen; dieser Prozess plant jetzt")
                        scheduler = self.make()
                        scheduler.start()
                        self._scheduler = scheduler
                        self.leading.set()
                        metrics.current().scheduler_leader.set(1)
                    elif not waiting_logged:
                        logger.info("Planer: in Bereitschaft, ein anderer Prozess plant")
                        waiting_logged = True
                elif not await self._lock.holds():
                    logger.warning("Planer: Leitung verloren; Aufträge angehalten, neue Wahl")
                    await self._step_down()
                    waiting_logged = False
            except Exception:
                # Whatever went wrong, the election goes on: a process that cannot tell whether
                # it leads stops its jobs and asks again.
                logger.exception("Planer: Wahl fehlgeschlagen; neuer Versuch")
                await self._step_down()
            await asyncio.sleep(self.interval)

    async def _step_down(self) -> None:
        self.leading.clear()
        metrics.current().scheduler_leader.set(0)
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            await scheduler.aclose()
        await self._lock.release()

    async def aclose(self) -> None:
        """Stop electing, let the running jobs finish, then give the lock up."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            await scheduler.aclose()
        self.leading.clear()
        metrics.current().scheduler_leader.set(0)
        await self._lock.aclose()
