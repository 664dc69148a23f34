"""The export of everything stored about one person (DSGVO art. 15, 20), wherever it is asked
for: the personal link (``/einstellungen/<token>/daten`` as a page, ``…/daten.json`` as a
file), the office console (``/buero/abonnenten/<id>/daten.json``, for a request by letter) and
the API (``GET /api/v1/subscribers/<id>/export``). Every download is audited."""

from __future__ import annotations

from fastapi import Request, Response
from starlette.exceptions import HTTPException

from .. import audit, selfservice
from ..data_export import PersonalData, file_name, personal_data
from ..links import PERSONAL, LinkError
from . import api, public
from .officekit import CurrentUser
from .officekit import router as office_router
from .params import RowId
from .request import context_of, page


def _download(data: PersonalData, request: Request) -> Response:
    name = file_name(data, context_of(request).settings.scheduler.tz)
    return Response(
        data.json_bytes(),
        media_type="application/json; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store",
        },
    )


async def _own_data(request: Request, token: str, *, download: bool) -> PersonalData:
    """The data of the person the link names; the export is audited as theirs ("web")."""
    ctx = context_of(request)
    target = ctx.links.read(PERSONAL, token)
    async with ctx.db.transaction() as session:
        sub = await selfservice.subscriber_for(session, target)
        data = await personal_data(session, sub.id, ctx.settings, now=ctx.clock())
        if data is None:  # pragma: no cover - the row was just read
            raise LinkError("Der Link ist nicht mehr gültig.")
        await audit.record(
            session,
            "web",
            "subscriber.exported",
            "subscriber",
            sub.id,
            {"format": "json" if download else "html"},
        )
    return data


@public.router.get("/einstellungen/{token}/daten")
async def own_data_page(request: Request, token: str) -> Response:
    try:
        data = await _own_data(request, token, download=False)
    except LinkError as exc:
        return public._link_problem(request, exc)
    return page(request, "public/personal_data.html", {"personal": data, "token": token})


@public.router.get("/einstellungen/{token}/daten.json")
async def own_data_file(request: Request, token: str) -> Response:
    try:
        data = await _own_data(request, token, download=True)
    except LinkError as exc:
        return public._link_problem(request, exc)
    return _download(data, request)


async def _exported(request: Request, subscriber_id: int, actor: str) -> PersonalData:
    ctx = context_of(request)
    async with ctx.db.transaction() as session:
        data = await personal_data(session, subscriber_id, ctx.settings, now=ctx.clock())
        if data is None:
            raise HTTPException(404, f"Kein Abonnent Nr. {subscriber_id}.")
        await audit.record(
            session, actor, "subscriber.exported", "subscriber", subscriber_id, {"format": "json"}
        )
    return data


@office_router.get("/abonnenten/{subscriber_id}/daten.json")
async def office_export(request: Request, subscriber_id: RowId, user: CurrentUser) -> Response:
    """The person's data as a file, for a request by letter (audited with the user's name)."""
    return _download(await _exported(request, subscriber_id, user.actor), request)


@api.router.get(
    "/subscribers/{subscriber_id}/export",
    responses={200: {"description": "The export document (see README, „Auskunft“)."}},
)
async def api_export(request: Request, subscriber_id: RowId, actor: api.Actor) -> Response:
    """Everything stored about the subscriber, as the preferences page's download gives it."""
    data = await _exported(request, subscriber_id, actor)
    return Response(
        data.json_bytes(),
        media_type="application/json; charset=utf-8",
        headers={"Cache-Control": "no-store"},
    )
