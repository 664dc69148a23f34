"""Named queries of the reach (``notifier.reach``): the tree, the active subscribers per unit and
role, the topics they cover, and the daily snapshots."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from .models import (
    Organisation,
    OrgKind,
    ReachSnapshot,
    Role,
    Subscriber,
    SubscriberStatus,
    Subscription,
)


@dataclass(frozen=True)
class UnitRow:
    key: str
    name: str
    kind: OrgKind
    parent_key: str | None
    path: str


async def units(session: AsyncSession) -> list[UnitRow]:
    """Every unit of the tree, in tree order (by materialised path)."""
    parent = aliased(Organisation)
    rows = await session.execute(
        select(
            Organisation.key, Organisation.name, Organisation.kind, parent.key, Organisation.path
        )
        .outerjoin(parent, parent.id == Organisation.parent_id)
        .order_by(Organisation.path)
    )
    return [UnitRow(*row) for row in rows.all()]


async def active_by_role(session: AsyncSession) -> list[tuple[str, Role, int]]:
    """(unit key, role, number of active subscribers) for every pair that has any."""
    rows = await session.execute(
        select(Organisation.key, Subscriber.role, func.count())
        .join(Organisation, Organisation.id == Subscriber.organisation_id)
        .where(Subscriber.status == SubscriberStatus.active)
        .group_by(Organisation.key, Subscriber.role)
    )
    return [(key, role, int(n)) for key, role, n in rows.all()]


async def topics_covered(session: AsyncSession) -> tuple[set[str], list[tuple[str, str]]]:
    """The units where an active subscriber takes every topic, and (unit key, topic key) for
    the topics active subscribers chose one by one."""
    everything = await session.scalars(
        select(Organisation.key)
        .join(Subscriber, Subscriber.organisation_id == Organisation.id)
        .where(Subscriber.status == SubscriberStatus.active, Subscriber.all_topics.is_(True))
        .distinct()
    )
    chosen = await session.execute(
        select(Organisation.key, Subscription.topic_key)
        .join(Subscriber, Subscriber.organisation_id == Organisation.id)
        .join(Subscription, Subscription.subscriber_id == Subscriber.id)
        .where(Subscriber.status == SubscriberStatus.active, Subscriber.all_topics.is_(False))
        .distinct()
    )
    return set(everything), [(k, t) for k, t in chosen.all()]


async def save_snapshot(session: AsyncSession, values: dict[str, Any]) -> None:
    """Store the figures of ``values["day"]``, replacing that day's earlier ones."""
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(ReachSnapshot).values(**values)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[ReachSnapshot.day],
            set_={k: stmt.excluded[k] for k in values if k != "day"},
        )
    )


async def snapshots(session: AsyncSession, since: date) -> Sequence[ReachSnapshot]:
    """The stored days from ``since`` on, oldest first."""
    return (
        await session.scalars(
            select(ReachSnapshot).where(ReachSnapshot.day >= since).order_by(ReachSnapshot.day)
        )
    ).all()
