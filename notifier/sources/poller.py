"""Polling sources: fetch, parse, and turn what is new into items, in one transaction.

A failing source (HTTP error, timeout, malformed data, a body over the cap) is recorded with its
name and tried again at the next interval; it changes nothing that was already seen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .. import metrics
from ..config import CalendarSource, FeedSource, Settings
from ..db import Database, queries
from ..db.models import Item, ItemKind, ItemStatus, SourceState
from ..errors import NotFoundError, SourceError
from ..organisations import resolve_units
from .calendar import CalendarEvent, parse_calendar
from .feed import FeedEntry, parse_feed
from .http import fetch

logger = logging.getLogger(__name__)

Source = FeedSource | CalendarSource
# Events that started up to this long ago are still read (to notice a late cancellation).
PAST_WINDOW = timedelta(days=1)


@dataclass
class PollResult:
    source: str
    new: int = 0
    changed: int = 0
    cancelled: int = 0
    not_modified: bool = False
    error: str | None = None


def http_client() -> httpx.AsyncClient:
    """The client sources are fetched with; each fetch sets its own overall deadline."""
    return httpx.AsyncClient(timeout=httpx.Timeout(60.0), trust_env=False)


def source_kind(source: Source) -> str:
    return "feed" if isinstance(source, FeedSource) else "calendar"


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

    def _url(self, source: Source) -> str:
        if "://" in source.url:
            return source.url
        return str(self.settings.path(source.url))

    async def poll(self, source: Source) -> PollResult:
        """Poll one source now. Never raises for the source's own failures: they are logged
        and stored as its last error."""
        now = self.clock()
        result = PollResult(source.name)
        async with self.db.transaction() as session:
            state = await session.get(SourceState, source.name)
            etag = state.etag if state else None
            last_modified = state.last_modified if state else None
        try:
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
                return result
            if isinstance(source, FeedSource):
                entries: Sequence[FeedEntry | CalendarEvent] = parse_feed(source.name, fetched.body)
            else:
                entries = parse_calendar(
                    source.name,
                    fetched.body,
                    window_start=now - PAST_WINDOW,
                    window_end=now + timedelta(days=source.lookahead_days),
                    tz=self.settings.scheduler.tz,
                )
            async with self.db.transaction() as session:
                state = await self._state(session, source)
                first = not state.initialized
                if isinstance(source, FeedSource):
                    feed = [e for e in entries if isinstance(e, FeedEntry)]
                    announce = not first or source.backfill
                    await self._apply_feed(
                        session, source, feed, result, announce=announce, now=now
                    )
                else:
                    events = [e for e in entries if isinstance(e, CalendarEvent)]
                    await self._apply_calendar(
                        session, source, events, result, announce=not first, now=now
                    )
                state.initialized = True
                state.etag, state.last_modified = fetched.etag, fetched.last_modified
                state.last_poll_at = state.last_success_at = now
                state.last_error = None
        except (SourceError, NotFoundError) as exc:
            result.error = str(exc)
            logger.warning("source %s failed: %s", source.name, exc, extra={"source": source.name})
            counted = metrics.current()
            counted.source_polls.labels(source.name, "error").inc()
            counted.source_errors.labels(source.name).inc()
            async with self.db.transaction() as session:
                state = await self._state(session, source)
                state.last_poll_at = now
                state.last_error = str(exc)
            return result
        metrics.current().source_polls.labels(source.name, "ok").inc()
        if result.new or result.changed or result.cancelled:
            logger.info(
                "source %s: %d new, %d changed, %d cancelled",
                source.name,
                result.new,
                result.changed,
                result.cancelled,
                extra={"source": source.name},
            )
        return result

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
        if not keys:
            return {}
        rows = await session.scalars(
            select(Item).where(Item.source == source.name, Item.external_key.in_(keys))
        )
        return {i.external_key or "": i for i in rows}

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
                        ItemStatus.scheduled if announce else ItemStatus.recorded,
                        subject=entry.title or "(ohne Titel)",
                        body=entry.summary,
                        link=entry.link,
                        published_at=entry.published,
                    )
                )
                result.new += 1
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
        events: Sequence[CalendarEvent],
        result: PollResult,
        *,
        announce: bool,
        now: datetime,
    ) -> None:
        scope = await self._scope(session, source)
        existing = await self._existing(session, source, [e.key for e in events])
        handled: set[str] = set()
        for event in events:
            if event.key in handled:
                continue
            handled.add(event.key)
            item = existing.get(event.key)
            if item is None:
                upcoming = event.start > now and not event.cancelled
                session.add(
                    self._new_item(
                        source,
                        ItemKind.event,
                        event.key,
                        event.content_hash,
                        event.categories,
                        scope,
                        now,
                        ItemStatus.scheduled if announce and upcoming else ItemStatus.recorded,
                        subject=event.title or "(ohne Titel)",
                        body=event.description,
                        link=event.link,
                        location=event.location or None,
                        starts_at=event.start,
                        ends_at=event.end,
                        all_day=event.all_day,
                        event_cancelled=event.cancelled,
                    )
                )
                result.new += 1
                continue
            if event.cancelled and not item.event_cancelled:
                await self._cancel_event(session, item, result, now)
            elif not event.cancelled and item.content_hash != event.content_hash:
                item.subject = event.title or item.subject
                item.body, item.link, item.location = (
                    event.description,
                    event.link,
                    event.location or None,
                )
                item.starts_at, item.ends_at, item.all_day = event.start, event.end, event.all_day
                item.content_hash = event.content_hash
                item.event_cancelled = False
                item.change_count += 1
                result.changed += 1
                if item.status is ItemStatus.routed and event.start > now:
                    await queries.notify_told(session, item.id, f"changed:{item.change_count}", now)
        # Events that vanished from the calendar count as cancelled, unless the calendar came
        # back empty (more likely a broken export than every event called off).
        seen = {e.key for e in events}
        window_end = now + timedelta(days=source.lookahead_days)
        vanished = (
            await session.scalars(
                select(Item).where(
                    Item.source == source.name,
                    Item.kind == ItemKind.event,
                    Item.event_cancelled.is_(False),
                    Item.status.in_([ItemStatus.routed, ItemStatus.scheduled]),
                    Item.starts_at > now,
                    Item.starts_at < window_end,
                )
            )
        ).all()
        vanished = [i for i in vanished if i.external_key not in seen]
        if vanished and not events:
            logger.warning(
                "source %s: calendar is empty; not treating its events as removed", source.name
            )
            return
        for item in vanished:
            await self._cancel_event(session, item, result, now)

    async def _cancel_event(
        self, session: AsyncSession, item: Item, result: PollResult, now: datetime
    ) -> None:
        item.event_cancelled = True
        result.cancelled += 1
        if item.status is ItemStatus.scheduled:
            item.status = ItemStatus.cancelled  # nobody was told yet
        elif item.status is ItemStatus.routed:
            await queries.drop_from_briefings(session, item.id)
            await queries.notify_told(session, item.id, "cancelled", now)


async def item_counts(session: AsyncSession) -> dict[str, int]:
    rows = await session.execute(
        select(Item.source, func.count()).where(Item.source.is_not(None)).group_by(Item.source)
    )
    return {name: count for name, count in rows.all() if name is not None}
