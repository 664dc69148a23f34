"""The subscriber endpoints of the JSON API: search, read, add, change and erase subscribers."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.exceptions import HTTPException

from .. import console, erasure, subscriber_admin
from ..db import reports
from ..db.models import Role, Subscriber, SubscriberSource, SubscriberStatus
from ..errors import StateError
from ..organisations import organisation_index
from .api import Actor, invalid, router
from .params import Offset, RowId
from .request import context_of

# -- subscribers -----------------------------------------------------------------------------


class SubscriberOut(BaseModel):
    id: int
    email: str
    name: str
    organisation: str = Field(description="The unit's key.")
    organisation_name: str
    role: str
    rhythm: str
    topics: list[str] = Field(description="Followed topic keys; empty: all topics.")
    status: SubscriberStatus
    created_at: datetime
    updated_at: datetime


def _subscriber_out(sub: Subscriber) -> SubscriberOut:
    return SubscriberOut(
        id=sub.id,
        email=sub.email,
        name=sub.name,
        organisation=sub.organisation.key,
        organisation_name=sub.organisation.name,
        role=sub.role.value,
        rhythm=sub.rhythm.value,
        topics=[] if sub.all_topics else sorted(s.topic_key for s in sub.subscriptions),
        status=sub.status,
        created_at=sub.created_at,
        updated_at=sub.updated_at,
    )


class SubscriberPage(BaseModel):
    total: int
    subscribers: list[SubscriberOut]


@router.get("/subscribers", response_model=SubscriberPage)
async def list_subscribers(
    request: Request,
    actor: Actor,
    q: Annotated[str, Query(max_length=200, description="Part of address or name.")] = "",
    organisation: Annotated[str, Query(description="Unit key or name, with its subtree.")] = "",
    role: Role | None = None,
    topic: str | None = None,
    status: SubscriberStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> SubscriberPage:
    ctx = context_of(request)
    if topic is not None and topic not in ctx.settings.topic_keys:
        raise invalid({"topic": f"Unbekanntes Thema {topic}"}, "query")
    async with ctx.db.reading() as session:
        path = None
        if organisation:
            by_key, by_name = await organisation_index(session)
            org = by_key.get(organisation) or by_name.get(organisation)
            if org is None:
                raise invalid({"organisation": "Unbekannte Einheit"}, "query")
            path = org.path
        text = q.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        chosen = reports.SubscriberFilter(text, path, role, topic, status)
        total, rows = await reports.search_subscribers(session, chosen, limit=limit, offset=offset)
        return SubscriberPage(total=total, subscribers=[_subscriber_out(s) for s in rows])


async def _subscriber(session: AsyncSession, subscriber_id: int) -> Subscriber:
    sub = await reports.subscriber(session, subscriber_id)
    if sub is None:
        raise HTTPException(404, f"Kein Abonnent Nr. {subscriber_id}.")
    return sub


@router.get("/subscribers/{subscriber_id}", response_model=SubscriberOut)
async def get_subscriber(request: Request, subscriber_id: RowId, actor: Actor) -> SubscriberOut:
    ctx = context_of(request)
    async with ctx.db.reading() as session:
        return _subscriber_out(await _subscriber(session, subscriber_id))


class SubscriberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(max_length=320)
    name: str = Field(max_length=200)
    organisation: str = Field(description="Unit key or exact name.")
    role: Role
    rhythm: Literal["immediate", "daily", "weekly"] = "immediate"
    topics: list[str] = Field(default_factory=list, description="Empty: all topics.")


class SubscriberPatch(BaseModel):
    """Only the fields given change."""

    model_config = ConfigDict(extra="forbid")

    email: str | None = Field(None, max_length=320)
    name: str | None = Field(None, max_length=200)
    organisation: str | None = Field(None, description="Unit key or exact name.")
    role: Role | None = None
    rhythm: Literal["immediate", "daily", "weekly"] | None = None
    topics: list[str] | None = Field(None, description="Empty: all topics.")
    status: Literal["active", "paused", "unsubscribed"] | None = Field(
        None,
        description="active: approve a held or resume a paused subscriber; paused; "
        "unsubscribed: deactivate (messages not yet sent are cancelled).",
    )


async def _checked(
    request: Request, session: AsyncSession, data: dict[str, Any]
) -> subscriber_admin.CheckedSubscriber:
    by_key, by_name = await organisation_index(session)
    org = by_key.get(data["organisation"]) or by_name.get(data["organisation"])
    try:
        return subscriber_admin.check_subscriber(
            subscriber_admin.SubscriberInput(
                email=data["email"],
                name=data["name"],
                organisation=org.key if org is not None else "",
                role=data["role"],
                rhythm=data["rhythm"],
                topics=data["topics"],
            ),
            settings=context_of(request).settings,
            units=by_key,
        )
    except console.FieldErrors as exc:
        raise invalid(exc.errors) from exc


@router.post("/subscribers", status_code=201, response_model=SubscriberOut)
async def create_subscriber(request: Request, data: SubscriberIn, actor: Actor) -> SubscriberOut:
    """Add a subscriber managed by the office (active at once, like a CSV import row)."""
    ctx = context_of(request)
    async with ctx.db.transaction() as session:
        checked = await _checked(request, session, {**data.model_dump(), "role": data.role.value})
        try:
            sub = await subscriber_admin.add_subscriber(
                session, checked, actor=actor, source=SubscriberSource.api, now=ctx.clock()
            )
        except console.FieldErrors as exc:
            raise invalid(exc.errors) from exc
        return _subscriber_out(await _subscriber(session, sub.id))


@router.patch("/subscribers/{subscriber_id}", response_model=SubscriberOut)
async def change_subscriber(
    request: Request, subscriber_id: RowId, data: SubscriberPatch, actor: Actor
) -> SubscriberOut:
    ctx = context_of(request)
    now = ctx.clock()
    async with ctx.db.transaction() as session:
        sub = await _subscriber(session, subscriber_id)
        current = _subscriber_out(sub)
        given = data.model_dump(exclude_unset=True, exclude={"status"})
        if "role" in given and given["role"] is not None:
            given["role"] = given["role"].value
        merged = {**current.model_dump(), **{k: v for k, v in given.items() if v is not None}}
        checked = await _checked(request, session, merged)
        try:
            await subscriber_admin.change_subscriber(session, sub, checked, actor=actor, now=now)
        except console.FieldErrors as exc:
            raise invalid(exc.errors) from exc
        if data.status is not None:
            try:
                await subscriber_admin.set_status(
                    session, sub, SubscriberStatus(data.status), actor=actor, now=now
                )
            except StateError as exc:
                raise HTTPException(409, str(exc)) from exc
        await session.flush()
        session.expire(sub)
        return _subscriber_out(await _subscriber(session, subscriber_id))


@router.delete("/subscribers/{subscriber_id}", status_code=204)
async def erase_subscriber(request: Request, subscriber_id: RowId, actor: Actor) -> Response:
    """Erase the subscriber everywhere (DSGVO art. 17), in one transaction: messages not yet
    sent are cancelled, outbox rows keep no recipient, the audit log names only the id and the
    token. A later CSV import skips the address. 404 if there is no such subscriber."""
    ctx = context_of(request)
    async with ctx.db.transaction() as session:
        sub = await _subscriber(session, subscriber_id)
        await erasure.erase_subscriber(session, sub, actor=actor, now=ctx.clock())
    return Response(status_code=204)
