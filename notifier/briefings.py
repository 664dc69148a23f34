"""Daily and weekly briefings, and event reminders: cron-driven work whose progress lives in the
database, so a restart neither repeats nor forgets it.

Each rhythm remembers the last cron slot it handled. At every check the latest slot that has come
is handled once: if the service was down over several slots, one briefing goes out (when the
latest slot is within the grace period), not one per slot; items wait in the queue otherwise.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from apscheduler.triggers.cron import CronTrigger

from . import metrics
from .config import CalendarSource, Settings
from .db import Database, queries
from .db.models import Rhythm

logger = logging.getLogger(__name__)

RHYTHMS = (Rhythm.daily, Rhythm.weekly)
_TICK = timedelta(microseconds=1)


def latest_slot(trigger: CronTrigger, after: datetime, now: datetime) -> datetime | None:
    """The last fire time of ``trigger`` in (after, now], or None."""
    latest = None
    slot = trigger.get_next_fire_time(None, after + _TICK)
    while slot is not None and slot <= now:
        latest = slot
        slot = trigger.get_next_fire_time(slot, slot + _TICK)
    return latest


def next_briefing_slot(settings: Settings, after: datetime) -> datetime | None:
    """The first cron slot of any rhythm after ``after``."""
    slots = [
        settings.briefings.trigger(r.value, settings.scheduler.tz).get_next_fire_time(
            None, after + _TICK
        )
        for r in RHYTHMS
    ]
    return min((s for s in slots if s is not None), default=None)


async def run_due_briefings(db: Database, settings: Settings, now: datetime) -> dict[Rhythm, int]:
    """Build the briefings whose slot has come; returns how many per rhythm."""
    built: dict[Rhythm, int] = {}
    grace = timedelta(hours=settings.briefings.grace_hours)
    for rhythm in RHYTHMS:
        key = f"briefing:{rhythm.value}"
        trigger = settings.briefings.trigger(rhythm.value, settings.scheduler.tz)
        async with db.transaction() as session:
            last = await queries.slot_state(session, key)
            if last is None:
                # A new installation starts counting now: no briefing for the past.
                await queries.set_slot_state(session, key, None, now)
                continue
            slot = latest_slot(trigger, last, now)
            if slot is None or not await queries.set_slot_state(session, key, last, slot):
                continue
            if now - slot > grace:
                logger.warning(
                    "%s briefing of %s missed by more than the grace period; its items wait "
                    "for the next one",
                    rhythm.value,
                    slot.isoformat(),
                )
                continue
            built[rhythm] = await queries.build_briefings(session, rhythm, slot, now)
        counted = metrics.current()
        counted.briefing_runs.labels(rhythm.value).inc()
        counted.briefings_built.labels(rhythm.value).inc(built[rhythm])
        if built.get(rhythm):
            logger.info(
                "%d %s briefings built for %s", built[rhythm], rhythm.value, slot.isoformat()
            )
    return built


async def send_due_reminders(db: Database, settings: Settings, now: datetime) -> int:
    """Queue the reminders whose time has come (``remind_days_before`` of the event's calendar)
    to everyone told about the event. Only the nearest due reminder is sent: after a long
    downtime nobody gets "in 7 days" and "tomorrow" at once. Returns how many messages."""
    days_by_source: dict[str, list[int]] = {
        s.name: sorted(s.remind_days_before)
        for s in settings.sources.calendar
        if isinstance(s, CalendarSource)
    }
    horizon = max((max(d) for d in days_by_source.values() if d), default=0)
    if not horizon:
        return 0
    queued = 0
    async with db.transaction() as session:
        events = await queries.upcoming_events(session, now, now + timedelta(days=horizon + 1))
        for item in events:
            assert item.starts_at is not None
            due = [
                d
                for d in days_by_source.get(item.source or "", [])
                if item.starts_at - timedelta(days=d) <= now
                # An event first seen after its reminder time gets no late reminder.
                and item.routed_at is not None
                and item.routed_at < item.starts_at - timedelta(days=d)
            ]
            for d in sorted(due):
                key = f"reminder:{item.id}:{d}"
                if not await queries.set_slot_state(session, key, None, now):
                    continue  # done before
                if d == due[0]:
                    queued += await queries.notify_told(session, item.id, f"reminder:{d}", now)
    return queued
