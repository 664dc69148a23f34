"""Items → recipients → outbox rows.

Routing an item is one transaction: the item turns from scheduled to routed and its outbox rows
appear together, or neither happens. An item is therefore routed once, even when the service was
down at its send time and catches up at start.
"""

from __future__ import annotations

import logging
from datetime import datetime

from .db import Database, queries

logger = logging.getLogger(__name__)


async def next_release(db: Database, now: datetime) -> datetime | None:
    """When the next scheduled item becomes due (None: none is scheduled)."""
    async with db.reading() as session:
        return await queries.next_send_at(session, now)


async def release_due(db: Database, now: datetime) -> list[tuple[int, int]]:
    """Route every scheduled item whose time has come; returns (item id, recipients) pairs."""
    async with db.reading() as session:  # checked every poll: takes no write lock
        due = await queries.due_items(session, now)
    routed: list[tuple[int, int]] = []
    for item_id in due:
        async with db.transaction() as session:
            count = await queries.route_item(session, item_id, now)
        if count is not None:
            logger.info("item %d routed to %d recipients", item_id, count)
            routed.append((item_id, count))
    return routed
