"""Erasure on request (DSGVO art. 17) on the web: "Alle meine Daten löschen" behind the
personal link (``/loeschen/<token>``, one confirmation, CSRF) and "Löschen" on the office's
subscriber page (``/buero/abonnenten/<id>/loeschen``). The API's ``DELETE`` is in
:mod:`.api_subscribers`. Registers its routes on the public and the office router (imported
by :mod:`.office` with the other office pages)."""

from __future__ import annotations

from fastapi import Request, Response
from starlette.exceptions import HTTPException

from .. import erasure, selfservice
from ..addresses import display_email
from ..db import reports
from ..links import PERSONAL, LinkError
from .officekit import CurrentUser, office_page
from .officekit import router as office_router
from .params import RowId
from .public import _link_problem, _target
from .public import router as public_router
from .request import checked_form, context_of, page

# The actor of an erasure the person asked for on the web (no personal data in the audit).
SELF = "web"


@public_router.get("/loeschen/{token}")
async def erase_form(request: Request, token: str) -> Response:
    ctx = context_of(request)
    try:
        target = _target(request, PERSONAL, token)
        async with ctx.db.reading() as session:
            sub = await selfservice.subscriber_for(session, target)
    except LinkError as exc:
        return _link_problem(request, exc)
    return page(request, "public/erase.html", {"token": token, "email": sub.email, "done": False})


@public_router.post("/loeschen/{token}")
async def erase(request: Request, token: str) -> Response:
    ctx = context_of(request)
    await checked_form(request)
    try:
        target = _target(request, PERSONAL, token)
        async with ctx.db.transaction() as session:
            sub = await selfservice.subscriber_for(session, target)
            await erasure.erase_subscriber(session, sub, actor=SELF, now=ctx.clock())
    except LinkError as exc:
        return _link_problem(request, exc)
    return page(request, "public/erase.html", {"token": "", "email": "", "done": True})


@office_router.get("/abonnenten/{subscriber_id}/loeschen")
async def office_erase_form(request: Request, subscriber_id: RowId, user: CurrentUser) -> Response:
    ctx = context_of(request)
    async with ctx.db.reading() as session:
        sub = await reports.subscriber(session, subscriber_id)
    if sub is None:
        raise HTTPException(404, f"Keinen Abonnenten Nr. {subscriber_id}.")
    return office_page(
        request,
        user,
        "office/erase.html",
        {"title": f"Löschen: {display_email(sub.email)}", "subscriber": sub, "done": False},
        section="subscribers",
    )


@office_router.post("/abonnenten/{subscriber_id}/loeschen")
async def office_erase(request: Request, subscriber_id: RowId, user: CurrentUser) -> Response:
    ctx = context_of(request)
    await checked_form(request)
    async with ctx.db.transaction() as session:
        sub = await reports.subscriber(session, subscriber_id)
        if sub is None:
            raise HTTPException(404, f"Keinen Abonnenten Nr. {subscriber_id}.")
        done = await erasure.erase_subscriber(session, sub, actor=user.actor, now=ctx.clock())
    return office_page(
        request,
        user,
        "office/erase.html",
        {
            "title": "Abonnent gelöscht",
            "done": True,
            "subscriber_id": done.subscriber_id,
            "cancelled": done.rows.get(erasure.CANCELLED_STEP, 0),
        },
        section="subscribers",
    )
