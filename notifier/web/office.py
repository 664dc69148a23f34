"""The project office's console under ``/buero`` (login required): login and logout, the
dashboard, the mail catcher's messages and the frames that show e-mails as they arrive. The
announcement and subscriber pages live in :mod:`.office_announcements` and
:mod:`.office_subscribers`; all share one router whose routes require a login."""

from __future__ import annotations

import asyncio
import math
from email.message import EmailMessage
from typing import Any

from fastapi import Request, Response
from fastapi.responses import RedirectResponse
from starlette.exceptions import HTTPException

from .. import audit
from ..accounts import MAX_PASSWORD, check_login
from ..catcher import CaughtMail
from ..db import queries, reports
from ..db.models import OutboxState, SubscriberStatus, User
from ..errors import NotFoundError
from ..labels import ITEM_LABELS, STATE_LABELS, smtp_state
from ..rendering import german_datetime
from ..sources.held import discard_held, held_counts, item_counts, release_held, source_kind
from .charts import render
from .forms import field
from .office_charts import outbox_chart
from .office_directory import ldap_login, login_page, start_session
from .officekit import (
    CurrentUser,
    mail_frame,
    next_page,
    office_page,
    preview_html,
    router,
)
from .request import checked_form, context_of

__all__ = ["router"]

# A failed login waits this long before the answer: guessing gets slow even before throttling.
FAILED_LOGIN_DELAY = 0.5

DAYS_SHOWN = 7
# The chart of messages per day covers more days than the table.
DAYS_CHARTED = 30


# -- login -----------------------------------------------------------------------------------


@router.get("/anmelden")
async def login_form(request: Request, weiter: str = "", abgemeldet: str = "") -> Response:
    if isinstance(request.session.get("user_id"), int):
        return RedirectResponse(next_page(weiter), 303)
    return login_page(
        request,
        next_target=next_page(weiter),
        message="Sie sind abgemeldet." if abgemeldet else "",
    )


@router.post("/anmelden")
async def login(request: Request) -> Response:
    ctx = context_of(request)
    form = await checked_form(request)
    name = field(form, "name").strip()[:100]
    target = next_page(field(form, "next"))
    now = ctx.clock()
    client = request.client.host if request.client else "unbekannt"
    password = field(form, "password")[:MAX_PASSWORD]
    through_directory = await ldap_login(request, name, password, target, client=client)
    if through_directory is not None:
        return through_directory
    async with ctx.db.transaction() as session:
        result = await check_login(
            session,
            name,
            password,
            client=client,
            settings=ctx.settings.web,
            now=now,
        )
        user = result.user
        user_id, user_name = (user.id, user.name) if user is not None else (0, "")
        if user is not None:
            await audit.record(
                session, f"office:{user_name}", "login", "user", user_id, {"ip": client}
            )
    if user is not None:
        start_session(request, user_id, user_name, now)
        return RedirectResponse(target, 303)
    await asyncio.sleep(FAILED_LOGIN_DELAY)
    if result.wait_until is not None:
        until = result.wait_until.astimezone(ctx.settings.scheduler.tz).strftime("%H:%M:%S")
        error = (
            "Zu viele fehlgeschlagene Anmeldungen von Ihrem Anschluss: Bitte warten Sie bis "
            f"{until} Uhr, bevor Sie es noch einmal versuchen."
        )
        status = 429
    else:
        error = "Name oder Passwort ist nicht richtig."
        status = 401
    response = login_page(request, name=name, error=error, next_target=target, status=status)
    if result.wait_until is not None:
        wait = max(1, math.ceil((result.wait_until - now).total_seconds()))
        response.headers["Retry-After"] = str(wait)
    return response


@router.post("/abmelden")
async def logout(request: Request) -> Response:
    """Ends every session of the user, on every device (and any copy of the cookie)."""
    await checked_form(request)
    ctx = context_of(request)
    user_id = request.session.get("user_id")
    if isinstance(user_id, int):
        async with ctx.db.transaction() as session:
            user = await session.get(User, user_id)
            if user is not None:
                user.sessions_from = ctx.clock()
                await audit.record(session, f"office:{user.name}", "logout", "user", user.id, {})
    request.session.clear()
    return RedirectResponse("/buero/anmelden?abgemeldet=1", 303)


# -- dashboard -------------------------------------------------------------------------------


@router.get("")
async def dashboard(
    request: Request, user: CurrentUser, freigegeben: int = -1, verworfen: int = -1
) -> Response:
    ctx = context_of(request)
    now = ctx.clock()
    tz = ctx.settings.scheduler.tz
    async with ctx.db.reading() as session:
        scheduled = await reports.scheduled_announcements(session)
        recent = await reports.recent_source_items(session)
        briefings = await reports.recent_briefings(session)
        charted = await reports.daily_figures(session, reports.day_bounds(now, tz, DAYS_CHARTED))
        totals = await queries.outbox_counts(session)
        failures = await queries.recent_failures(session, 5)
        senders = await queries.sender_statuses(session, now)
        states = await reports.source_states(session)
        counts = await item_counts(session)
        held_items = await held_counts(session)
        held, _ = await reports.search_subscribers(
            session, reports.SubscriberFilter(status=SubscriberStatus.held), limit=0, offset=0
        )
    sources = [
        {
            "name": s.name,
            "kind": "Feed" if source_kind(s) == "feed" else "Kalender",
            "count": counts.get(s.name, 0),
            "state": states.get(s.name),
            "held": held_items.get(s.name, 0),
            "limit": ctx.settings.sources.new_per_poll(s),
        }
        for s in ctx.settings.sources.all
    ]
    source_notice = ""
    if freigegeben >= 0:
        source_notice = f"{freigegeben} zurückgehaltene Einträge freigegeben."
    elif verworfen >= 0:
        source_notice = f"{verworfen} zurückgehaltene Einträge verworfen."
    return office_page(
        request,
        user,
        "office/dashboard.html",
        {
            "title": "Übersicht",
            "scheduled": scheduled,
            "recent": recent,
            "briefings": briefings,
            "days": charted[:DAYS_SHOWN],
            "outbox_chart": render(outbox_chart(charted, tz)),
            "totals": [(STATE_LABELS[s], totals.get(s, 0)) for s in OutboxState],
            "failures": failures,
            # What the senders know of the SMTP server, unreachable ones first.
            "smtp": [
                smtp_state(s.reachable, german_datetime(s.since, tz), s.reason, s.waiting)
                for s in sorted(senders, key=lambda s: s.reachable)
            ],
            "smtp_down": any(not s.reachable for s in senders),
            "sources": sources,
            "source_notice": source_notice,
            "held": held,
            "item_labels": ITEM_LABELS,
            "state_labels": STATE_LABELS,
        },
        section="start",
    )


@router.post("/quellen/{name}/{decision}")
async def decide_held(request: Request, name: str, decision: str, user: CurrentUser) -> Response:
    """Release or discard the items a conspicuous source holds (audited with the user)."""
    ctx = context_of(request)
    await checked_form(request)
    if decision not in ("freigeben", "verwerfen"):
        raise HTTPException(404, "Diese Seite gibt es nicht.")
    if not any(s.name == name for s in ctx.settings.sources.all):
        raise HTTPException(404, "Diese Quelle ist nicht konfiguriert.")
    async with ctx.db.transaction() as session:
        if decision == "freigeben":
            done = await release_held(session, name, actor=user.actor, now=ctx.clock())
            return RedirectResponse(f"/buero?freigegeben={done.released}#quellen", 303)
        done = await discard_held(session, name, actor=user.actor, now=ctx.clock())
    return RedirectResponse(f"/buero?verworfen={done.discarded}#quellen", 303)


@router.get("/vorschau/{key}")
async def preview_frame(request: Request, key: str, user: CurrentUser) -> Response:
    html = preview_html(request, user, key)
    if html is None:
        raise HTTPException(404, "Diese Vorschau gibt es nicht mehr. Bitte neu erstellen.")
    return mail_frame(html)


# -- mail catcher ----------------------------------------------------------------------------


def _store(request: Request) -> Any:
    mails = context_of(request).mails
    if mails is None:
        raise HTTPException(404, "Der eingebaute Mail-Catcher ist nicht eingeschaltet.")
    return mails


async def _caught(request: Request, number: int) -> tuple[CaughtMail, EmailMessage]:
    store = _store(request)
    try:
        mail: CaughtMail = await asyncio.to_thread(store.get, number)
    except NotFoundError as exc:
        raise HTTPException(404, f"Keine Nachricht Nr. {number}.") from exc
    return mail, await asyncio.to_thread(mail.message)


def _part(message: EmailMessage, kind: str) -> str:
    part = message.get_body(preferencelist=(kind,))
    return "" if part is None else str(part.get_content())


@router.get("/mails")
async def mails(request: Request, user: CurrentUser) -> Response:
    store = _store(request)
    caught: list[CaughtMail] = await asyncio.to_thread(store.list)
    return office_page(
        request,
        user,
        "office/mails.html",
        {"title": "Mail-Catcher", "mails": list(reversed(caught))},
        section="mails",
    )


@router.get("/mails/{number}")
async def mail(request: Request, number: int, user: CurrentUser) -> Response:
    caught, message = await _caught(request, number)
    headers = [
        (h, str(message[h]))
        for h in ("Date", "From", "To", "Subject", "List-Unsubscribe")
        if message[h] is not None
    ]
    return office_page(
        request,
        user,
        "office/mail.html",
        {
            "title": f"Nachricht Nr. {number}",
            "caught": caught,
            "headers": headers,
            "has_html": bool(_part(message, "html")),
            "text": _part(message, "plain"),
        },
        section="mails",
    )


@router.get("/mails/{number}/html")
async def mail_html(request: Request, number: int, user: CurrentUser) -> Response:
    _, message = await _caught(request, number)
    return mail_frame(_part(message, "html"))


# The other pages register their routes on the same router.
from . import (  # noqa: E402
    erasure,
    office_announcements,
    office_bounces,
    office_reach,
    office_subscribers,
)

__all__ += [
    "erasure",
    "office_announcements",
    "office_bounces",
    "office_reach",
    "office_subscribers",
]
