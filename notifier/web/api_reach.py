"""``GET /api/v1/reach``: the figures of the office's reach page as JSON."""

from __future__ import annotations

from datetime import date

from fastapi import Request
from pydantic import BaseModel, Field

from .. import reach
from ..db.models import Role
from .api import Actor, router
from .request import context_of


class UnitOut(BaseModel):
    key: str
    name: str
    kind: str = Field(description="kreis, verbandsgemeinde, stadt or ortsgemeinde")
    parent: str | None = Field(description="The key of the enclosing unit.")
    mayor: bool = Field(description="An active subscriber with the role mayor is at this unit.")
    roles: dict[str, int] = Field(description="Active subscribers at this unit by role.")
    subscribers: int = Field(description="Active subscribers at this unit (not below it).")
    topics: list[str] = Field(description="Topic keys the active subscribers here receive.")


class GroupOut(BaseModel):
    key: str
    name: str
    ortsgemeinden: int
    reached: int = Field(description="Ortsgemeinden with an active mayor.")


class MissingOut(BaseModel):
    key: str
    name: str
    verbandsgemeinde: str | None


class DayOut(BaseModel):
    day: date
    subscribers: int
    units_reached: int
    mayors_reached: int
    ortsgemeinden: int


class ReachOut(BaseModel):
    subscribers: int = Field(description="Active subscribers in the whole tree.")
    units: int
    units_reached: int = Field(description="Units with at least one active subscriber.")
    ortsgemeinden: int
    mayors_reached: int = Field(description="Ortsgemeinden with an active mayor.")
    verbandsgemeinden: list[GroupOut]
    not_reached: list[MissingOut] = Field(description="Ortsgemeinden without an active mayor.")
    tree: list[UnitOut] = Field(description="Every unit, in tree order.")
    history: list[DayOut] = Field(
        description="The stored figures of the last 90 days (Europe/Berlin), oldest first."
    )


@router.get("/reach", response_model=ReachOut)
async def reach_figures(request: Request, actor: Actor) -> ReachOut:
    """Whom the service reaches: per unit the mayor, the subscribers by role and the topics;
    per Verbandsgemeinde the Ortsgemeinden whose mayor is subscribed; reach over time."""
    ctx = context_of(request)
    async with ctx.db.reading() as session:
        report = await reach.read(session, ctx.settings.topic_keys)
    days = await reach.history(ctx.db, ctx.clock(), ctx.settings.scheduler.tz)
    return ReachOut(
        subscribers=report.subscribers,
        units=len(report.units),
        units_reached=report.units_reached,
        ortsgemeinden=len(report.ortsgemeinden),
        mayors_reached=report.mayors_reached,
        verbandsgemeinden=[
            GroupOut(key=g.unit.key, name=g.unit.name, ortsgemeinden=g.total, reached=g.reached)
            for g in report.groups
        ],
        not_reached=[
            MissingOut(key=og.key, name=og.name, verbandsgemeinde=vg.name if vg else None)
            for og, vg in report.not_reached()
        ],
        tree=[
            UnitOut(
                key=u.key,
                name=u.name,
                kind=u.kind.value,
                parent=u.parent_key,
                mayor=u.mayor,
                roles={r.value: u.count(r) for r in Role},
                subscribers=u.subscribers,
                topics=list(u.topics),
            )
            for u in report.units
        ],
        history=[
            DayOut(
                day=d.day,
                subscribers=d.subscribers,
                units_reached=d.units_reached,
                mayors_reached=d.mayors_reached,
                ortsgemeinden=d.ortsgemeinden,
            )
            for d in days
        ],
    )
