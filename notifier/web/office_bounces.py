"""Bounces in the office console: the latest, by domain, per address, and un-suppressing a
person with a reason (audited; the old failures stop counting)."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlencode

from fastapi import Request, Response
from fastapi.responses import RedirectResponse

from ..addresses import display_email
from ..db import bounces as store
from ..db.models import Subscriber, SubscriberStatus
from ..labels import BOUNCE_LABELS
from .forms import field
from .officekit import CurrentUser, OfficeUser, office_page, router
from .params import RowId
from .request import checked_form, context_of

DOMAIN_DAYS = 30
LATEST = 100
MAX_REASON = 500


async def _page(
    request: Request,
    user: OfficeUser,
    address: str = "",
    *,
    errors: dict[int, str] | None = None,
    reasons: dict[int, str] | None = None,
    notice: str = "",
    status: int = 200,
) -> Response:
    ctx = context_of(request)
    address = address.strip().lower()[:320]
    now = ctx.clock()
    async with ctx.db.reading() as session:
        rows = await store.latest(session, limit=LATEST, address=address or None)
        domains = await store.by_domain(session, now - timedelta(days=DOMAIN_DAYS))
        suppressed = await store.suppressed_subscribers(session)
    tz = ctx.settings.scheduler.tz
    return office_page(
        request,
        user,
        "office/bounces.html",
        {
            "rows": [
                {
                    "row": r,
                    "at": r.received_at.astimezone(tz).strftime("%d.%m.%Y %H:%M"),
                    "kind": BOUNCE_LABELS[r.kind.value],
                    "address": display_email(r.address) if r.address else "–",
                }
                for r in rows
            ],
            "address": address,
            "domains": [(d, BOUNCE_LABELS[k], n) for d, k, n in domains],
            "domain_days": DOMAIN_DAYS,
            "suppressed": suppressed,
            "errors": errors or {},
            "reasons": reasons or {},
            "notice": notice,
        },
        section="bounces",
        status=status,
    )


@router.get("/bounces")
async def bounces_page(
    request: Request, user: CurrentUser, adresse: str = "", entsperrt: str = ""
) -> Response:
    notice = f"{entsperrt} ist wieder aktiv." if entsperrt else ""
    return await _page(request, user, adresse, notice=notice)


@router.post("/bounces/entsperren/{subscriber_id}")
async def unsuppress(request: Request, subscriber_id: RowId, user: CurrentUser) -> Response:
    ctx = context_of(request)
    form = await checked_form(request)
    reason = " ".join(field(form, "reason").split())
    problem = ""
    if not reason:
        problem = "Bitte geben Sie einen Grund an (z. B. „Postfach wieder erreichbar“)."
    elif len(reason) > MAX_REASON:
        problem = f"Der Grund ist zu lang (höchstens {MAX_REASON} Zeichen)."
    if problem:
        return await _page(
            request,
            user,
            errors={subscriber_id: problem},
            reasons={subscriber_id: reason},
            status=422,
        )
    async with ctx.db.transaction() as session:
        sub = await session.get(Subscriber, subscriber_id)
        email = ""
        if sub is None or sub.status is not SubscriberStatus.suppressed:
            problem = "Diese Adresse ist nicht (mehr) gesperrt."
        else:
            await store.unsuppress(session, sub, actor=user.actor, reason=reason, now=ctx.clock())
            email = sub.email
    if problem:
        return await _page(request, user, notice=problem, status=409)
    return RedirectResponse("/buero/bounces?" + urlencode({"entsperrt": display_email(email)}), 303)
