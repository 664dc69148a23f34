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
from .db.models import Item, Rhythm

logger = logging.getLogger(__name__)

RHYTHMS = (Rhythm.daily, Rhythm.weekly)
_TICK = timedelta(microseconds=1)
# A reminder this late is left out when a nearer one follows (its "in 7 Tagen" would be wrong).
REMINDER_LATE = timedelta(days=1)


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
    to every active subscriber the event is meant for at this moment (topics, organisation,
    role), whether or not they were told about it. Only the nearest due reminder is sent:
    after a long downtime nobody gets "in 7 days" and "tomorrow" at once.

    Occurrences of a series are reminded as the calendar's ``remind_series`` says: "next" (the
    default) only the series' next occurrence at the reminder's time, "each" every occurrence,
    "none" none. Returns how many messages."""
    calendars = [s for s in settings.sources.calendar if isinstance(s, CalendarSource)]
    days_by_source: dict[str, list[int]] = {s.name: sorted(s.remind_days_before) for s in calendars}
    series_mode = {s.name: s.remind_series for s in calendars}
    horizon = max((max(d) for d in days_by_source.values() if d), default=0)
    if not horizon:
        return 0
    queued = 0
    until = now + timedelta(days=horizon + 1)
    async with db.transaction() as session:
        due_items: list[tuple[Item, list[int]]] = []
        for item in await queries.upcoming_events(session, now, until):
            due_items.append((item, _due(item, item.routed_at, days_by_source, now, None)))
        previous: dict[int, datetime] = {}  # series item id → start of the occurrence before
        since = now - timedelta(days=horizon + 1)
        for occurrence, series in await queries.series_occurrences(session, since, until):
            assert occurrence.starts_at is not None
            before = previous.get(series.id)
            previous[series.id] = occurrence.starts_at
            mode = series_mode.get(occurrence.source or "", "next")
            if occurrence.starts_at <= now or mode == "none":
                continue
            # Announced with its series; an occurrence first seen later (the series' start
            # moved, which makes new occurrences) counts from then.
            told_at = series.routed_at and max(series.routed_at, occurrence.created_at)
            previous_start = before if mode == "next" else None
            due = _due(occurrence, told_at, days_by_source, now, previous_start)
            due_items.append((occurrence, due))
        for item, due in due_items:
            for d in due:
                key = f"reminder:{item.id}:{d}"
                if not await queries.set_slot_state(session, key, None, now):
                    continue  # done before
                if d == due[0]:
                    queued += await queries.notify_audience(session, item, f"reminder:{d}", now)
    return queued


def _due(
    item: Item,
    announced_at: datetime | None,
    days_by_source: dict[str, list[int]],
    now: datetime,
    previous: datetime | None,
) -> list[int]:
    """The reminders of ``item`` due now, nearest first. None for an event first announced
    (``announced_at``: itself or with its series) after the reminder's time; with ``previous`` (the
    start of the series' occurrence before), none while that one is still ahead at the
    reminder's time: then this is not the series' next occurrence."""
    assert item.starts_at is not None
    due = []
    for d in days_by_source.get(item.source or "", []):
        at = item.starts_at - timedelta(days=d)
        if at > now or announced_at is None or announced_at >= at:
            continue
        if now - at > REMINDER_LATE and d != min(days_by_source.get(item.source or "", [d])):
            continue  # "in 7 Tagen" two days before would be wrong; the next reminder follows

        if previous is not None and previous > at:
            continue
        due.append(d)
    return sorted(due)
