"""Polling sources: fetch, parse, and turn what is new into items, in one transaction.

A failing source (HTTP error, timeout, malformed data, a body over the cap) is recorded with its
name and tried again at the next interval; it changes nothing that was already seen.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from .. import metrics
from ..config import CalendarSource, FeedSource, Settings
from ..db import Database, queries
from ..db.models import Item, ItemKind, ItemStatus, SourceState
from ..errors import NotFoundError, SourceError
from ..organisations import resolve_units
from .calendar import CalendarEvent, CalendarSeries, ParsedCalendar
from .feed import FeedEntry
from .held import held_counts, source_kind
from .http import fetch
from .rules import series_words
from .worker import ParseLimits, parse_isolated

logger = logging.getLogger(__name__)

Source = FeedSource | CalendarSource
# Events that started up to this long ago are still read (to notice a late cancellation).
PAST_WINDOW = timedelta(days=1)
# What one poll's database work may take, on top of the fetch timeout and parse_seconds.
APPLY_SECONDS = 60.0
FLUSH_EVERY = 200
# A feed entry dated outside these bounds around the poll is dated when it was first seen.
PLAUSIBLE_PAST = timedelta(days=25 * 365)
PLAUSIBLE_FUTURE = timedelta(days=2)
# A source's recorded error is at most this long (it is shown in one line).
ERROR_CHARS = 300


@dataclass
class PollResult:
    source: str
    new: int = 0
    changed: int = 0
    cancelled: int = 0
    not_modified: bool = False
    error: str | None = None
    held: int = 0  # of ``new``: held for the office (over max_new_per_poll)


def http_client() -> httpx.AsyncClient:
    """The client sources are fetched with; each fetch sets its own overall deadline."""
    return httpx.AsyncClient(timeout=httpx.Timeout(60.0), trust_env=False)


class SourcePoller:
    """Polls configured sources into the database."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        client: httpx.AsyncClient,
        clock: Callable[[], datetime],
    ) -> None:
        self.db = db
        self.settings = settings
        self.client = client
        self.clock = clock
        self._slots = asyncio.Semaphore(settings.sources.max_concurrent_polls)

    def _url(self, source: Source) -> str:
        if "://" in source.url:
            return source.url
        return str(self.settings.path(source.url))

    def _deadline(self, source: Source) -> float:
        """Seconds one poll of ``source`` may take in all: fetch, parse and database work."""
        return source.timeout + self.settings.sources.parse_seconds + APPLY_SECONDS

    async def poll_all(self, sources: Sequence[Source]) -> list[PollResult]:
        """Poll these sources, at most ``max_concurrent_polls`` at once; one source's failure
        is its own result and never stops the others."""
        return list(await asyncio.gather(*(self.poll(s) for s in sources)))

    async def poll(self, source: Source) -> PollResult:
        """Poll one source now. Never raises for the source's own failures, nor for unexpected
        ones: they are logged and stored as its last error, so no source stops another.

        At most ``[sources] max_concurrent_polls`` polls run at once (the others wait for a
        slot), and each must finish within its fetch timeout + ``parse_seconds`` +
        APPLY_SECONDS."""
        result = PollResult(source.name)
        async with self._slots:
            now = self.clock()
            deadline = self._deadline(source)
            try:
                async with asyncio.timeout(deadline):
                    await self._poll(source, result, now)
            # The recorded error is shown after the source's name: it does not repeat it.
            except SourceError as exc:
                result.error = exc.problem
                logger.warning(
                    "source %s failed: %s%s",
                    source.name,
                    exc.problem,
                    f" ({exc.detail})" if exc.detail else "",
                    extra={"source": source.name},
                )
            except NotFoundError as exc:
                result.error = str(exc)
                logger.warning(
                    "source %s failed: %s", source.name, exc, extra={"source": source.name}
                )
            except TimeoutError:
                result.error = f"Abruf abgebrochen, er dauerte länger als {deadline:g} Sekunden"
                logger.warning("source %s: poll took longer than %g s", source.name, deadline)
            except Exception:  # one source must not stop the others
                logger.exception("source %s: poll failed unexpectedly", source.name)
                result.error = "interner Fehler beim Abruf; Einzelheiten im Protokoll des Dienstes"
            if result.error is not None:
                # One line of bounded length, whatever a parser put into its message.
                result.error = _one_line(result.error, ERROR_CHARS)
                counted = metrics.current()
                counted.source_polls.labels(source.name, "error").inc()
                counted.source_errors.labels(source.name).inc()
                await self._record_error(source, result.error, now)
                return result
        if result.new or result.changed or result.cancelled:
            logger.info(
                "source %s: %d new (%d held), %d changed, %d cancelled",
                source.name,
                result.new,
                result.held,
                result.changed,
                result.cancelled,
                extra={"source": source.name},
            )
        return result

    async def _record_error(self, source: Source, error: str, now: datetime) -> None:
        try:
            async with self.db.transaction() as session:
                state = await self._state(session, source)
                state.last_poll_at = now
                state.last_error = error
        except Exception:  # the database itself failing: the log has to do
            logger.exception("source %s: could not record its error", source.name)

    async def _parse(
        self, source: Source, body: bytes, now: datetime
    ) -> list[FeedEntry] | ParsedCalendar:
        limits = self.settings.sources
        worker_limits = ParseLimits(
            seconds=limits.parse_seconds,
            memory_mb=limits.parse_memory_mb,
            max_per_series=limits.max_per_series,
            max_per_calendar=limits.max_per_calendar,
        )
        if isinstance(source, FeedSource):
            return await parse_isolated(
                source.name, "feed", body, worker_limits, url=self._url(source)
            )
        return await parse_isolated(
            source.name,
            "calendar",
            body,
            worker_limits,
            window_start=now - PAST_WINDOW,
            window_end=now + timedelta(days=source.lookahead_days),
            tz=self.settings.scheduler.tz,
        )

    async def _poll(self, source: Source, result: PollResult, now: datetime) -> None:
        async with self.db.transaction() as session:
            state = await session.get(SourceState, source.name)
            etag = state.etag if state else None
            last_modified = state.last_modified if state else None
        fetched = await fetch(
            self.client,
            source.name,
            self._url(source),
            etag=etag,
            last_modified=last_modified,
            timeout=source.timeout,
            max_bytes=source.max_bytes,
        )
        if fetched.not_modified:
            result.not_modified = True
            async with self.db.transaction() as session:
                state = await self._state(session, source)
                state.last_poll_at = state.last_success_at = now
                state.last_error = None
            metrics.current().source_polls.labels(source.name, "not_modified").inc()
            return
        parsed = await self._parse(source, fetched.body, now)
        async with self.db.transaction() as session:
            state = await self._state(session, source)
            first = not state.initialized
            announce = not first or source.backfill
            if isinstance(source, FeedSource):
                feed = parsed if isinstance(parsed, list) else []
                await self._apply_feed(session, source, feed, result, announce=announce, now=now)
            elif isinstance(parsed, ParsedCalendar):
                await self._apply_calendar(
                    session, source, parsed, result, announce=announce, now=now
                )
            state.initialized = True
            state.etag, state.last_modified = fetched.etag, fetched.last_modified
            state.last_poll_at = state.last_success_at = now
            state.last_error = None
        metrics.current().source_polls.labels(source.name, "ok").inc()

    async def _hold(
        self, session: AsyncSession, source: Source, new_announced: int, result: PollResult
    ) -> bool:
        """Whether this poll's new items are held rather than announced: more of them than
        the source's max_new_per_poll, or held items of the source still wait for the office
        (until it decides, nothing new of a conspicuous source goes out)."""
        if new_announced == 0:
            return False
        limit = self.settings.sources.new_per_poll(source)
        waiting = (await held_counts(session, source.name)).get(source.name, 0)
        hold = new_announced > limit or waiting > 0
        if hold:
            result.held = new_announced
            logger.warning(
                "source %s: %d new items (limit %d, %d already held): held for the office",
                source.name,
                new_announced,
                limit,
                waiting,
            )
        return hold

    async def _state(self, session: AsyncSession, source: Source) -> SourceState:
        state = await session.get(SourceState, source.name)
        if state is None:
            state = SourceState(name=source.name, kind=source_kind(source), initialized=False)
            session.add(state)
        return state

    def _topics(self, source: Source, categories: Sequence[str]) -> list[str]:
        wanted = {source.categories[c] for c in categories if c in source.categories}
        wanted |= set(source.topics)
        return [k for k in self.settings.topic_keys if k in wanted]

    async def _scope(self, session: AsyncSession, source: Source) -> list[str]:
        units = await resolve_units(session, source.scope)
        return [u.key for u in units]

    async def _existing(
        self, session: AsyncSession, source: Source, keys: Sequence[str]
    ) -> dict[str, Item]:
        return await existing_items(session, source.name, keys)

    def _new_item(
        self,
        source: Source,
        kind: ItemKind,
        key: str,
        content_hash: str,
        categories: Sequence[str],
        scope: list[str],
        now: datetime,
        status: ItemStatus,
        **fields: Any,
    ) -> Item:
        return Item(
            kind=kind,
            topics=self._topics(source, categories),
            scope=scope,
            roles=[],
            important=False,
            send_at=now,
            status=status,
            created_at=now,
            created_by=f"source:{source.name}",
            source=source.name,
            external_key=key,
            content_hash=content_hash,
            **fields,
        )

    async def _apply_feed(
        self,
        session: AsyncSession,
        source: FeedSource,
        entries: Sequence[FeedEntry],
        result: PollResult,
        *,
        announce: bool,
        now: datetime,
    ) -> None:
        scope = await self._scope(session, source)
        existing = await self._existing(session, source, [e.key for e in entries])
        fresh = {e.key for e in entries if e.key not in existing}
        held = announce and await self._hold(session, source, len(fresh), result)
        status = ItemStatus.held if held else ItemStatus.scheduled
        seen: set[str] = set()
        for entry in entries:
            if entry.key in seen:
                continue  # a feed that lists an entry twice
            seen.add(entry.key)
            item = existing.get(entry.key)
            if item is None:
                session.add(
                    self._new_item(
                        source,
                        ItemKind.update,
                        entry.key,
                        entry.content_hash,
                        entry.categories,
                        scope,
                        now,
                        status if announce else ItemStatus.recorded,
                        subject=entry.title or "(ohne Titel)",
                        body=entry.summary,
                        link=entry.link,
                        published_at=plausible_date(entry.published, now),
                    )
                )
                result.new += 1
                await _breathe(session, result.new)
            elif item.content_hash != entry.content_hash:
                # A corrected entry is kept up to date but not sent again.
                item.subject = entry.title or item.subject
                item.body, item.link, item.content_hash = (
                    entry.summary,
                    entry.link,
                    entry.content_hash,
                )
                result.changed += 1

    async def _apply_calendar(
        self,
        session: AsyncSession,
        source: CalendarSource,
        parsed: ParsedCalendar,
        result: PollResult,
        *,
        announce: bool,
        now: datetime,
    ) -> None:
        """Bring the source's events up to date with the calendar.

        A single event is one item, announced once. A recurring series is one item (announced
        once, with the series' .ics) plus one item per occurrence, which is never announced by
        itself: a change or cancellation of one occurrence is told as such (to those told about
        the series), a change of the series itself or its cancellation as one notice."""
        scope = await self._scope(session, source)
        events = parsed.events
        series_by_uid = {s.uid: s for s in parsed.series}
        outside = {e.key: e for e in parsed.outside}
        existing = await self._existing(
            session, source, [e.key for e in events] + list(series_by_uid) + list(outside)
        )
        occurrences: dict[str, list[CalendarEvent]] = {}
        for event in events:
            if event.series is not None:
                occurrences.setdefault(event.series, []).append(event)
        # A series is new when neither it nor any of its occurrences is known: occurrences
        # announced one by one (before series were items) are not announced again as a series.
        new_series = {
            uid
            for uid, s in series_by_uid.items()
            if uid not in existing
            and not s.cancelled
            and any(_upcoming(e, now) for e in occurrences.get(uid, []))
            and not any(e.key in existing for e in occurrences.get(uid, []))
        }
        fresh = {
            e.key
            for e in events
            if e.series is None and e.key not in existing and _upcoming(e, now)
        } | new_series
        held = announce and await self._hold(session, source, len(fresh), result)
        status = ItemStatus.held if held else ItemStatus.scheduled

        # The series first: their items decide who is told about their occurrences.
        series_items: dict[str, Item] = {}
        quiet: set[str] = set()  # series changed or cancelled as a whole: occurrences quietly
        for uid, series in series_by_uid.items():
            mine = occurrences.get(uid, [])
            if not mine:
                continue
            following = next((e for e in mine if _upcoming(e, now)), mine[0])
            recurrence = self._recurrence(series)
            item = existing.get(uid)
            if item is None:
                item = self._new_item(
                    source,
                    ItemKind.event,
                    uid,
                    series.content_hash,
                    series.categories,
                    scope,
                    now,
                    status if announce and uid in new_series else ItemStatus.recorded,
                    subject=series.title or "(ohne Titel)",
                    body=series.description,
                    link=series.link,
                    location=series.location or None,
                    starts_at=following.start,
                    ends_at=following.end,
                    all_day=series.all_day,
                    event_cancelled=series.cancelled,
                    recurrence=recurrence,
                )
                session.add(item)
                await session.flush()
                series_items[uid] = item
                result.new += 1
                continue
            series_items[uid] = item
            before = dict(item.recurrence or {})
            if before != recurrence:  # the overrides and exceptions, kept for the .ics
                item.recurrence = recurrence
            item.starts_at, item.ends_at = following.start, following.end
            if series.cancelled and not item.event_cancelled:
                quiet.add(uid)
                await self._cancel_event(session, item, result, now, told=item)
            elif not series.cancelled and item.event_cancelled:
                await self._restore_event(session, item, result, now, told=item)
            elif not series.cancelled and item.content_hash != series.content_hash:
                quiet.add(uid)
                fields: dict[str, list[Any]] = {}
                if before.get("words") != recurrence["words"]:
                    fields["series"] = [before.get("words"), recurrence["words"]]
                if item.subject != series.title:
                    fields["title"] = [item.subject, series.title]
                if (item.location or "") != series.location:
                    fields["location"] = [item.location or "", series.location]
                if item.body != series.description:
                    fields["description"] = [None, None]
                if item.link != series.link:
                    fields["link"] = [item.link, series.link]
                item.subject = series.title or item.subject
                item.body, item.link = series.description, series.link
                item.location = series.location or None
                await self._changed(session, item, fields, result, now, told=item)
            item.content_hash = series.content_hash

        handled: set[str] = set()
        for event in events:
            if event.key in handled:
                continue
            handled.add(event.key)
            item = existing.get(event.key)
            parent = series_items.get(event.series) if event.series else None
            if item is None:
                upcoming = _upcoming(event, now)
                new_status = status if announce and upcoming else ItemStatus.recorded
                session.add(
                    self._new_item(
                        source,
                        ItemKind.event,
                        event.key,
                        event.content_hash,
                        event.categories,
                        scope,
                        now,
                        ItemStatus.recorded if parent is not None else new_status,
                        subject=event.title or "(ohne Titel)",
                        body=event.description,
                        link=event.link,
                        location=event.location or None,
                        starts_at=event.start,
                        ends_at=event.end,
                        all_day=event.all_day,
                        event_cancelled=event.cancelled,
                        series_key=event.series,
                    )
                )
                if parent is None:
                    result.new += 1
                await _breathe(session, len(handled))
                continue
            # An occurrence announced by itself (before series were items) is its own.
            own = event.series is None or item.status is ItemStatus.routed
            told = item if own else parent
            if event.series is not None and event.series in quiet:
                _update(item, event)
                item.event_cancelled = event.cancelled or item.event_cancelled
                item.content_hash = event.content_hash
                continue
            await self._apply_event(session, item, event, result, now, told=told)

        # Known events beyond the window (moved there, or changed there): a change or a
        # cancellation as within it; leaving the window is no cancellation.
        for event in parsed.outside:
            item = existing.get(event.key)
            if item is None or event.key in handled:
                continue
            handled.add(event.key)
            parent = series_items.get(event.series) if event.series else None
            own = event.series is None or item.status is ItemStatus.routed
            if not own and (parent is None or event.series in quiet):
                _update(item, event)
                item.content_hash = event.content_hash
                continue
            await self._apply_event(session, item, event, result, now, told=item if own else parent)

        # Events that vanished from the window and are not beyond it: removed, a cancellation,
        # unless the calendar came back empty (more likely a broken export than every event
        # called off). A series that is gone altogether is one cancellation.
        seen = {e.key for e in events} | set(outside)
        window_end = now + timedelta(days=source.lookahead_days)
        vanished = [
            i
            for i in await queries.calendar_events_ahead(session, source.name, now, window_end)
            if i.external_key not in seen
        ]
        if vanished and not events:
            logger.warning(
                "source %s: calendar is empty; not treating its events as removed", source.name
            )
            return
        gone_series: dict[str, Item | None] = {}
        for item in vanished:
            if item.series_key is not None and item.series_key not in series_by_uid:
                if item.series_key not in gone_series:
                    found = await existing_items(session, source.name, [item.series_key])
                    gone_series[item.series_key] = found.get(item.series_key)
                item.event_cancelled = True
                continue
            parent = series_items.get(item.series_key) if item.series_key else None
            told = parent if item.series_key is not None else item
            if item.series_key is not None and item.series_key in quiet:
                item.event_cancelled = True
                continue
            await self._cancel_event(session, item, result, now, told=told)
        for parent in gone_series.values():
            if parent is not None and not parent.event_cancelled:
                await self._cancel_event(session, parent, result, now, told=parent)

    def _recurrence(self, series: CalendarSeries) -> dict[str, Any]:
        """What a series item keeps of its series (see Item.recurrence)."""
        words = series_words(
            series.rule,
            series.start,
            series.end,
            series.all_day,
            series.last,
            [datetime.fromisoformat(d) for d in series.exdates],
            self.settings.scheduler.tz,
        )
        return {
            "words": words,
            "rule": series.rule,
            "exdates": list(series.exdates),
            "last": series.last.isoformat() if series.last else None,
            "start": series.start.isoformat(),
            "end": series.end.isoformat(),
            "ics": series.ics,
        }

    async def _apply_event(
        self,
        session: AsyncSession,
        item: Item,
        event: CalendarEvent,
        result: PollResult,
        now: datetime,
        *,
        told: Item | None,
    ) -> None:
        """A known event (or occurrence) as the calendar now has it: cancelled, back after a
        cancellation, or changed."""
        if event.cancelled and not item.event_cancelled:
            _update(item, event)
            item.content_hash = event.content_hash
            await self._cancel_event(session, item, result, now, told=told)
        elif not event.cancelled and item.event_cancelled:
            _update(item, event)
            item.content_hash = event.content_hash
            await self._restore_event(session, item, result, now, told=told)
        elif not event.cancelled and item.content_hash != event.content_hash:
            fields = _differences(item, event)
            _update(item, event)
            item.content_hash = event.content_hash
            await self._changed(session, item, fields, result, now, told=told)

    async def _changed(
        self,
        session: AsyncSession,
        item: Item,
        fields: dict[str, list[Any]],
        result: PollResult,
        now: datetime,
        *,
        told: Item | None,
    ) -> None:
        """Record a change (what changed, old → new) and tell those who were told."""
        item.change_count += 1
        item.change_log = [*(item.change_log or []), {"n": item.change_count, "fields": fields}]
        result.changed += 1
        if (
            told is not None
            and told.status is ItemStatus.routed
            and item.starts_at is not None
            and (item.starts_at > now or item.recurrence is not None)
        ):
            await queries.notify_told(
                session, item.id, f"changed:{item.change_count}", now, told_item_id=told.id
            )

    async def _cancel_event(
        self,
        session: AsyncSession,
        item: Item,
        result: PollResult,
        now: datetime,
        *,
        told: Item | None,
    ) -> None:
        item.event_cancelled = True
        item.change_count += 1  # the cancellation's SEQUENCE
        result.cancelled += 1
        if item.status in (ItemStatus.scheduled, ItemStatus.held):
            item.status = ItemStatus.cancelled  # nobody was told yet
        elif told is not None and told.status is ItemStatus.routed:
            if told is item:
                await queries.drop_from_briefings(session, item.id)
            await queries.notify_told(
                session, item.id, f"cancelled:{item.change_count}", now, told_item_id=told.id
            )

    async def _restore_event(
        self,
        session: AsyncSession,
        item: Item,
        result: PollResult,
        now: datetime,
        *,
        told: Item | None,
    ) -> None:
        """A cancelled or removed event is back: "findet doch statt" to those who got the
        cancellation (a new SEQUENCE), or, if nobody was told yet, announced as planned."""
        item.event_cancelled = False
        item.change_count += 1
        result.changed += 1
        ahead = item.starts_at is not None and (item.starts_at > now or item.recurrence is not None)
        if item.status is ItemStatus.cancelled:
            item.status = ItemStatus.scheduled if ahead else ItemStatus.recorded
            item.send_at = now
        elif ahead:
            await queries.notify_cancelled(session, item.id, f"restored:{item.change_count}", now)


def plausible_date(published: datetime | None, now: datetime) -> datetime | None:
    """A feed entry's date, or ``now`` (when it was first seen) for a date that cannot be
    meant: more than :data:`PLAUSIBLE_PAST` before now, or more than :data:`PLAUSIBLE_FUTURE`
    after it (a default like 1970 or "1. Januar 2100" in a feed generator)."""
    if published is None:
        return None
    if published < now - PLAUSIBLE_PAST or published > now + PLAUSIBLE_FUTURE:
        logger.info("feed date %s is implausible; using the time first seen", published)
        return now
    return published


def _upcoming(event: CalendarEvent, now: datetime) -> bool:
    return event.start > now and not event.cancelled


def _update(item: Item, event: CalendarEvent) -> None:
    item.subject = event.title or item.subject
    item.body, item.link, item.location = event.description, event.link, event.location or None
    item.starts_at, item.ends_at, item.all_day = event.start, event.end, event.all_day


def _differences(item: Item, event: CalendarEvent) -> dict[str, list[Any]]:
    """What a change notice tells: each changed field as [old, new] (times in ISO 8601)."""
    fields: dict[str, list[Any]] = {}
    if item.subject != event.title:
        fields["title"] = [item.subject, event.title]
    if item.starts_at != event.start or item.all_day != event.all_day:
        old = item.starts_at.isoformat() if item.starts_at else None
        fields["start"] = [old, event.start.isoformat()]
    if item.ends_at != event.end:
        fields["end"] = [item.ends_at.isoformat() if item.ends_at else None, event.end.isoformat()]
    if item.all_day != event.all_day:
        fields["all_day"] = [item.all_day, event.all_day]
    if (item.location or "") != event.location:
        fields["location"] = [item.location or "", event.location]
    if item.body != event.description:
        fields["description"] = [None, None]
    if item.link != event.link:
        fields["link"] = [item.link, event.link]
    return fields


def _one_line(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


async def _breathe(session: AsyncSession, added: int) -> None:
    """Every FLUSH_EVERY new items, write them: the event loop gets a turn between the
    batches, so a calendar of thousands of events does not hold up web requests."""
    if added % FLUSH_EVERY == 0:
        await session.flush()
        await asyncio.sleep(0)


async def existing_items(
    session: AsyncSession, source_name: str, keys: Sequence[str]
) -> dict[str, Item]:
    """The items of source ``source_name`` with these external keys, by key. Asked in chunks
    of :data:`queries.ID_CHUNK`: SQLite allows 32,766 variables in one statement."""
    found: dict[str, Item] = {}
    unique = sorted(set(keys))
    for start in range(0, len(unique), queries.ID_CHUNK):
        chunk = unique[start : start + queries.ID_CHUNK]
        rows = await session.scalars(
            select(Item).where(Item.source == source_name, Item.external_key.in_(chunk))
        )
        found.update((i.external_key or "", i) for i in rows)
    return found
