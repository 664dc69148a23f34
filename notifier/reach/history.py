"""Reach over time: the scheduler's leader stores the figures of each day (at its start and
every hour, so a day keeps its last figures); the office's chart reads them back."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import date, datetime, timedelta, tzinfo

from ..db import Database
from ..db import reach as store
from ..db.models import ReachSnapshot
from .figures import ReachReport, read

logger = logging.getLogger(__name__)

# How often the leader refreshes today's figures.
SNAPSHOT_SECONDS = 3600.0
# How many days the chart shows.
DAYS_SHOWN = 90


async def take_snapshot(
    db: Database, topic_keys: Sequence[str], now: datetime, tz: tzinfo
) -> ReachReport:
    """Store today's figures (the day in ``tz``), replacing today's earlier ones."""
    async with db.transaction() as session:
        report = await read(session, topic_keys)
        await store.save_snapshot(
            session,
            {
                "day": now.astimezone(tz).date(),
                "taken_at": now,
                "subscribers": report.subscribers,
                "units_reached": report.units_reached,
                "mayors_reached": report.mayors_reached,
                "ortsgemeinden": len(report.ortsgemeinden),
                "by_vg": report.by_vg(),
            },
        )
    logger.debug(
        "reach snapshot: %d subscribers, %d Ortsgemeinden with their mayor",
        report.subscribers,
        report.mayors_reached,
    )
    return report


async def history(
    db: Database, now: datetime, tz: tzinfo, days: int = DAYS_SHOWN
) -> Sequence[ReachSnapshot]:
    """The stored days of the last ``days`` days, oldest first."""
    since: date = now.astimezone(tz).date() - timedelta(days=days - 1)
    async with db.reading() as session:
        return await store.snapshots(session, since)
