"""Topics (Handlungsfelder) come from ``config.toml``; the table mirrors them for routing."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from . import config
from .db import queries
from .db.models import Topic


async def sync_topics(session: AsyncSession, topics: Sequence[config.Topic]) -> None:
    """Make the topics table match the configuration.

    A topic removed from the file is deactivated, not deleted, so old subscriptions and items
    that name it stay readable. Processes starting at the same time do it one after the other.
    """
    await queries.serialize(session, queries.SETUP_LOCK)
    stored = {t.key: t for t in (await session.scalars(select(Topic))).all()}
    wanted = {t.key for t in topics}
    for t in topics:
        row = stored.get(t.key)
        if row is None:
            session.add(Topic(key=t.key, title=t.title, description=t.description, active=True))
        else:
            row.title, row.description, row.active = t.title, t.description, True
    for key, row in stored.items():
        if key not in wanted:
            row.active = False
    await session.flush()
