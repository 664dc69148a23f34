"""The JSON API under ``/api/v1`` (bearer tokens from ``notifier tokens add``).

A CMS pushes updates (``POST /items``: routed like a feed entry), schedules announcements, reads
and changes subscribers and follows delivery. Every change is audited as ``api:<token name>``.
Bad input is answered 422 with the field in ``loc`` (FastAPI's format, also for the checks that
need the database, such as unknown topics or units); a missing, unknown or revoked token is 401.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.exceptions import HTTPException

from .. import announcements as ann
from .. import console
from ..accounts import check_token
from ..db import queries, reports
from ..db.models import Item, OutboxState, Role
from ..errors import AnnouncementRefused, FieldError, NotFoundError, StateError
from ..organisations import organisation_index
from .officekit import renderer
from .params import Offset, RowId
from .request import context_of

router = APIRouter(tags=["notifier"])
_bearer = HTTPBearer(
    auto_error=False,
    bearerFormat="ntf_…",
    description="Ein Token aus `notifier tokens add NAME`.",
)


async def api_actor(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """``api:<token name>`` for a valid token; 401 otherwise."""
    ctx = context_of(request)
    row = None
    if credentials is not None:
        async with ctx.db.transaction() as session:
            row = await check_token(session, credentials.credentials, now=ctx.clock())
            name = row.name if row is not None else ""
    if row is None:
        raise HTTPException(
            401,
            "Gültiger Bearer-Token erforderlich (notifier tokens add NAME).",
            headers={"WWW-Authenticate": 'Bearer realm="notifier"'},
        )
    return f"api:{name}"


Actor = Annotated[str, Depends(api_actor)]


def invalid(errors: dict[str, str], where: str = "body") -> RequestValidationError:
    return RequestValidationError(
        [{"loc": (where, f), "msg": p, "type": "value_error"} for f, p in errors.items()]
    )


async def _scope_keys(session: AsyncSession, refs: Sequence[str]) -> list[str]:
    """Organisation keys from keys or exact names; 422 naming ``scope`` for unknown ones."""
    by_key, by_name = await organisation_index(session)
    keys, unknown = [], []
    for ref in refs:
        org = by_key.get(ref) or by_name.get(ref)
        if org is None:
            unknown.append(ref)
        else:
            keys.append(org.key)
    if unknown:
        raise invalid({"scope": "Unbekannte Einheiten: " + ", ".join(unknown)})
    return keys


# -- items -----------------------------------------------------------------------------------


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(
        min_length=1,
        max_length=400,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="Your identifier of the entry; sending the same key again corrects the "
        "stored item without sending it again.",
    )
    subject: str = Field(min_length=1, max_length=300)
    body: str = Field("", max_length=100_000, description="Plain text summary.")
    link: str | None = Field(None, max_length=2000)
    topics: list[str] = Field(default_factory=list, description="Topic keys; empty: all.")
    scope: list[str] = Field(
        default_factory=list, description="Organisation keys or names; empty: the whole Kreis."
    )


class ItemOut(BaseModel):
    id: int
    key: str
    created: bool
    status: str
    subject: str
    link: str | None
    topics: list[str]
    scope: list[str]


@router.post("/items", status_code=201, response_model=ItemOut)
async def create_item(request: Request, data: ItemIn, actor: Actor, response: Response) -> ItemOut:
    """Push an update (as a news feed entry would bring it): routed within a poll interval
    to the subscribers of its topics and scope, immediately or in their next briefing."""
    ctx = context_of(request)
    errors: dict[str, str] = {}
    subject, link = "", None
    try:
        subject = console.check_line("subject", data.subject, max_length=300)
    except FieldError as exc:
        errors[exc.field] = exc.problem
    if data.link:
        try:
            link = console.check_link("link", data.link)
        except FieldError as exc:
            errors[exc.field] = exc.problem
    try:
        topics = console.check_topics("topics", data.topics, ctx.settings.topic_keys)
    except FieldError as exc:
        errors[exc.field] = exc.problem
    if errors:
        raise invalid(errors)
    async with ctx.db.transaction() as session:
        scope = await _scope_keys(session, data.scope)
        item, created = await console.push_update(
            session,
            source=actor[:100],
            key=data.key,
            subject=subject,
            body=data.body.strip(),
            link=link,
            topics=topics,
            scope=scope,
            actor=actor,
            now=ctx.clock(),
        )
    if not created:
        response.status_code = 200
    return ItemOut(
        id=item.id,
        key=data.key,
        created=created,
        status=item.status.value,
        subject=item.subject,
        link=item.link,
        topics=list(item.topics),
        scope=list(item.scope),
    )


# -- announcements ---------------------------------------------------------------------------


class AnnouncementIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: str = Field(min_length=1, max_length=300)
    body: str = Field(min_length=1, max_length=100_000, description="Markdown.")
    topics: list[str] = Field(default_factory=list, description="Topic keys; empty: all.")
    scope: list[str] = Field(
        default_factory=list, description="Organisation keys or names; empty: the whole Kreis."
    )
    roles: list[Role] = Field(default_factory=list, description="Empty: every role.")
    send_at: datetime | None = Field(
        None, description="When to send; without zone: Europe/Berlin; missing: now."
    )
    important: bool = Field(False, description="Immediately to everyone, also briefing readers.")


class AudienceOut(BaseModel):
    total: int
    by_level: dict[str, int]
    by_role: dict[str, int]


class AnnouncementOut(BaseModel):
    id: int
    subject: str
    status: str
    send_at: datetime
    important: bool
    topics: list[str]
    scope: list[str]
    roles: list[str]
    created_by: str
    messages: dict[str, int] = Field(description="Outbox rows by state.")
    waiting_for_briefing: int
    audience: AudienceOut | None = Field(description="Who would receive it now (if scheduled).")


async def _announcement_out(session: AsyncSession, item: Item) -> AnnouncementOut:
    counts = await queries.outbox_counts(session, item.id)
    audience = None
    if item.status.value == "scheduled":
        found = await ann.audience(session, item)
        audience = AudienceOut(
            total=found.total,
            by_level={k.value: n for k, n in found.by_level.items()},
            by_role={r.value: n for r, n in found.by_role.items()},
        )
    return AnnouncementOut(
        id=item.id,
        subject=item.subject,
        status=item.status.value,
        send_at=item.send_at,
        important=item.important,
        topics=list(item.topics),
        scope=list(item.scope),
        roles=list(item.roles),
        created_by=item.created_by,
        messages={s.value: n for s, n in counts.items()},
        waiting_for_briefing=await queries.briefing_queue_count(session, item.id),
        audience=audience,
    )


@router.post("/announcements", status_code=201, response_model=AnnouncementOut)
async def create_announcement(
    request: Request, data: AnnouncementIn, actor: Actor
) -> AnnouncementOut:
    """Schedule an announcement (as the office console does)."""
    ctx = context_of(request)
    now = ctx.clock()
    async with ctx.db.transaction() as session:
        scope = await _scope_keys(session, data.scope)
        by_key, _ = await organisation_index(session)
        try:
            draft = console.check_announcement(
                console.AnnouncementInput(
                    subject=data.subject,
                    body=data.body,
                    topics=data.topics,
                    scope=scope,
                    roles=[r.value for r in data.roles],
                    send_at=data.send_at,
                    important=data.important,
                ),
                settings=ctx.settings,
                units=by_key,
                now=now,
                source="api",
            )
        except console.FieldErrors as exc:
            raise invalid(exc.errors) from exc
        try:
            item = await ann.schedule(
                session, draft, actor=actor, now=now, renderer=renderer(ctx), links=ctx.links
            )
        except AnnouncementRefused as exc:
            raise invalid({"body": str(exc)}) from exc
        out = await _announcement_out(session, item)
    ctx.wake()
    return out


@router.get("/announcements", response_model=list[AnnouncementOut])
async def list_announcements(request: Request, actor: Actor) -> list[AnnouncementOut]:
    ctx = context_of(request)
    async with ctx.db.reading() as session:
        rows = await ann.list_announcements(session)
        return [await _announcement_out(session, item) for item, _ in rows]


async def _announcement(session: AsyncSession, item_id: int) -> Item:
    try:
        return await console.announcement(session, item_id)
    except NotFoundError as exc:
        raise HTTPException(404, f"Keine Mitteilung Nr. {item_id}.") from exc


@router.get("/announcements/{item_id}", response_model=AnnouncementOut)
async def get_announcement(request: Request, item_id: RowId, actor: Actor) -> AnnouncementOut:
    ctx = context_of(request)
    async with ctx.db.reading() as session:
        return await _announcement_out(session, await _announcement(session, item_id))


@router.post("/announcements/{item_id}/cancel", response_model=AnnouncementOut)
async def cancel_announcement(request: Request, item_id: RowId, actor: Actor) -> AnnouncementOut:
    """Cancel: messages not yet sent do not go out. 409 once sent completely or cancelled."""
    ctx = context_of(request)
    async with ctx.db.transaction() as session:
        await _announcement(session, item_id)
        try:
            await ann.cancel(session, item_id, actor=actor, now=ctx.clock())
        except StateError as exc:
            raise HTTPException(409, str(exc)) from exc
        item = await _announcement(session, item_id)
        await session.refresh(item)
        return await _announcement_out(session, item)


class DeliveryOut(BaseModel):
    email: str
    name: str
    state: OutboxState
    attempts: int
    updated_at: datetime
    sent_at: datetime | None
    code: int | None = Field(description="The SMTP server's last reply code.")
    reply: str | None = Field(description="The SMTP server's last reply.")


@router.get("/announcements/{item_id}/deliveries", response_model=list[DeliveryOut])
async def deliveries(
    request: Request,
    item_id: RowId,
    actor: Actor,
    state: OutboxState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
    offset: Offset = 0,
) -> list[DeliveryOut]:
    """The delivery state of every recipient (failures first)."""
    ctx = context_of(request)
    async with ctx.db.reading() as session:
        await _announcement(session, item_id)
        rows = await reports.deliveries(session, item_id, state=state, limit=limit, offset=offset)
    return [
        DeliveryOut(
            email=r.email,
            name=r.name,
            state=r.state,
            attempts=r.attempts,
            updated_at=r.updated_at,
            sent_at=r.sent_at,
            code=r.code,
            reply=r.reply,
        )
        for r in rows
    ]


class DayOut(BaseModel):
    start: datetime
    queued: int
    sent: int
    deferred: int
    failed: int


class OutboxOut(BaseModel):
    states: dict[str, int] = Field(description="All outbox rows by state now.")
    days: list[DayOut] = Field(description="The last 7 days (Europe/Berlin), today first.")


@router.get("/outbox", response_model=OutboxOut)
async def outbox(request: Request, actor: Actor) -> OutboxOut:
    ctx = context_of(request)
    bounds = reports.day_bounds(ctx.clock(), ctx.settings.scheduler.tz, 7)
    async with ctx.db.reading() as session:
        counts = await queries.outbox_counts(session)
        days = await reports.daily_figures(session, bounds)
    return OutboxOut(
        states={s.value: counts.get(s, 0) for s in OutboxState},
        days=[DayOut(**vars(d)) for d in days],
    )


# The subscriber and reach endpoints register on the same router.
from . import api_reach, api_subscribers  # noqa: E402

__all__ = ["api_reach", "api_subscribers", "router"]
