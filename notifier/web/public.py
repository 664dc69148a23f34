"""Public pages: sign-up (``/anmelden``), confirmation (``/bestaetigen/<token>``), preferences
(``/einstellungen/<token>``), unsubscribe (``/abmelden/<token>``, RFC 8058 one-click), the
privacy notice (``/datenschutz``) and the accessibility statement (``/barrierefreiheit``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData

from .. import metrics, selfservice
from ..addresses import check_email
from ..data_export import personal_data
from ..db.models import Organisation, OrgKind, Subscriber, SubscriberStatus
from ..errors import FieldError
from ..labels import RHYTHM_LABELS, ROLE_CHOICES, SUBSCRIBER_LABELS
from ..links import CONFIRM, PERSONAL, LinkError, LinkTarget
from ..signup_limits import allow_signup_mail
from .forms import field, fields, submitted_subscriber, subscriber_values
from .request import checked_form, context_of, page

router = APIRouter(include_in_schema=False)
logger = logging.getLogger(__name__)

# A field that people do not see (hidden by CSS and from screen readers) and programs fill in.
HONEYPOT = "homepage"


@dataclass(frozen=True)
class Unit:
    """One choice of the organisation list: a label that is unique within the tree."""

    id: int
    key: str
    label: str


async def organisation_choices(session: AsyncSession) -> list[Unit]:
    """Every unit, Kreis first, then each Verbandsgemeinde followed by its Ortsgemeinden; an
    Ortsgemeinde's label names its Verbandsgemeinde (names of villages repeat)."""
    orgs = (await session.scalars(select(Organisation).order_by(Organisation.path))).all()
    by_id = {o.id: o for o in orgs}
    units: list[Unit] = []
    for org in orgs:
        label = org.name
        parent = by_id.get(org.parent_id) if org.parent_id is not None else None
        if org.kind is OrgKind.ortsgemeinde and parent is not None:
            label = f"{org.name} ({parent.name})"
        units.append(Unit(org.id, org.key, label))
    return units


def _ip(request: Request) -> str:
    return request.client.host if request.client else "unbekannt"


def _choices(
    form: FormData, units: list[Unit], orgs: dict[int, Organisation], topic_keys: list[str]
) -> selfservice.Choices:
    wanted = field(form, "organisation").strip()
    unit = next((u for u in units if wanted in (u.label, u.key)), None)
    return selfservice.check_choices(
        name=field(form, "name"),
        organisation=orgs.get(unit.id) if unit is not None else None,
        role=field(form, "role"),
        rhythm=field(form, "rhythm"),
        topics=fields(form, "topics"),
        all_topics=field(form, "all_topics") == "1",
        topic_keys=topic_keys,
    )


async def _form_context(request: Request, session: AsyncSession) -> dict[str, Any]:
    settings = context_of(request).settings
    return {
        "units": await organisation_choices(session),
        "topics": settings.topics,
        "roles": {r.value: ROLE_CHOICES[r] for r in selfservice.SELF_ROLES},
        "rhythms": {r.value: label for r, label in RHYTHM_LABELS.items()},
    }


def _values_of(sub: Subscriber, units: list[Unit]) -> dict[str, Any]:
    label = next((u.label for u in units if u.id == sub.organisation_id), "")
    return subscriber_values(sub, label)


def _values_from(form: FormData) -> dict[str, Any]:
    return {**submitted_subscriber(form), "consent": field(form, "consent") == "1"}


# -- statements ------------------------------------------------------------------------------


@router.get("/datenschutz")
async def privacy_notice(request: Request) -> Response:
    body = context_of(request).legal.privacy
    title = "Datenschutzerklärung"
    return page(request, "public/legal.html", {"title": title, "body": body})


@router.get("/barrierefreiheit")
async def accessibility_statement(request: Request) -> Response:
    body = context_of(request).legal.accessibility
    return page(
        request, "public/legal.html", {"title": "Erklärung zur Barrierefreiheit", "body": body}
    )


# -- sign-up ---------------------------------------------------------------------------------


@router.get("/anmelden")
async def signup_form(request: Request) -> Response:
    ctx = context_of(request)
    async with ctx.db.reading() as session:
        context = await _form_context(request, session)
    values = {"rhythm": "immediate", "all_topics": True, "topics": [], "role": ""}
    return page(
        request,
        "public/signup.html",
        {**context, "values": values, "errors": {}, "consent_text": ctx.settings.web.consent_text},
    )


@router.post("/anmelden")
async def signup(request: Request) -> Response:
    ctx = context_of(request)
    form = await checked_form(request, once=True)
    if field(form, HONEYPOT):
        # Only a program fills in the field that people do not see: it is told what anyone
        # is told, and nothing is stored or sent.
        logger.info("sign-up refused: the hidden field was filled in")
        metrics.current().signups_refused.labels("honeypot").inc()
        return _signup_done(request)
    errors: dict[str, str] = {}
    now = ctx.clock()
    queued = False
    async with ctx.db.transaction() as session:
        context = await _form_context(request, session)
        orgs = {o.id: o for o in (await session.scalars(select(Organisation))).all()}
        choices = None
        try:
            check_email("email", field(form, "email"))
        except FieldError as exc:
            errors[exc.field] = exc.problem
        try:
            choices = _choices(form, context["units"], orgs, ctx.settings.topic_keys)
        except FieldError as exc:
            errors[exc.field] = exc.problem
        if field(form, "consent") != "1":
            errors["consent"] = "Bitte stimmen Sie der Einwilligung zu."
        allowed = (
            not errors
            and choices is not None
            and await allow_signup_mail(
                session,
                ctx.settings.web,
                client=_ip(request),
                address=check_email("email", field(form, "email")),
                key=ctx.links.key,
                now=now,
            )
        )
        if allowed and choices is not None:
            queued = await selfservice.sign_up(
                session,
                field(form, "email"),
                choices,
                ip=_ip(request),
                settings=ctx.settings,
                now=now,
            )
    if errors or choices is None:
        return page(
            request,
            "public/signup.html",
            {
                **context,
                "values": _values_from(form),
                "errors": errors,
                "consent_text": ctx.settings.web.consent_text,
            },
            status=422,
        )
    if allowed:
        metrics.current().signups.inc()
    else:
        metrics.current().signups_refused.labels("limit").inc()
    if queued:
        ctx.wake()
    return _signup_done(request)


def _signup_done(request: Request) -> Response:
    hours = context_of(request).settings.web.confirm_hours
    return page(request, "public/signup_done.html", {"hours": hours})


# -- personal links --------------------------------------------------------------------------


def _link_problem(request: Request, exc: LinkError) -> Response:
    return page(
        request,
        "public/link_invalid.html",
        {"expired": exc.expired, "message": str(exc)},
        status=410 if exc.expired else 404,
    )


def _target(request: Request, purpose: str, token: str, *, expires: bool = True) -> LinkTarget:
    return context_of(request).links.read(purpose, token, expires=expires)


@router.get("/bestaetigen/{token}")
async def confirm_form(request: Request, token: str) -> Response:
    ctx = context_of(request)
    try:
        target = _target(request, CONFIRM, token)
        async with ctx.db.reading() as session:
            sub = await selfservice.subscriber_for(session, target, allow=selfservice.CONFIRMABLE)
    except LinkError as exc:
        return _link_problem(request, exc)
    return page(request, "public/confirm.html", {"token": token, "subscriber": sub})


@router.post("/bestaetigen/{token}")
async def confirm(request: Request, token: str) -> Response:
    ctx = context_of(request)
    await checked_form(request)
    try:
        target = _target(request, CONFIRM, token)
        now = ctx.clock()
        async with ctx.db.transaction() as session:
            sub = await selfservice.confirm(
                session, target, ip=_ip(request), settings=ctx.settings, now=now
            )
    except LinkError as exc:
        return _link_problem(request, exc)
    if sub.updated_at == now:  # confirmed now, not again
        metrics.current().confirmations.inc()
    preferences, _ = ctx.links.personal_urls(sub.id, sub.token_version)
    return page(
        request,
        "public/confirmed.html",
        {"held": sub.status is SubscriberStatus.held, "preferences_url": preferences},
    )


@router.get("/einstellungen/{token}")
async def preferences_form(request: Request, token: str) -> Response:
    ctx = context_of(request)
    try:
        target = _target(request, PERSONAL, token)
        async with ctx.db.reading() as session:
            sub = await selfservice.subscriber_for(session, target)
            context = await _form_context(request, session)
            context["personal"] = await personal_data(
                session, sub.id, ctx.settings, now=ctx.clock()
            )
    except LinkError as exc:
        return _link_problem(request, exc)
    return _preferences_page(request, sub, token, context, _values_of(sub, context["units"]))


def _preferences_page(
    request: Request,
    sub: Subscriber,
    token: str,
    context: dict[str, Any],
    values: dict[str, Any],
    *,
    errors: dict[str, str] | None = None,
    saved: str = "",
    status: int = 200,
) -> Response:
    return page(
        request,
        "public/preferences.html",
        {
            **context,
            "token": token,
            "subscriber": sub,
            "status_label": SUBSCRIBER_LABELS[sub.status],
            "values": values,
            "errors": errors or {},
            "saved": saved,
        },
        status=status,
    )


@router.post("/einstellungen/{token}")
async def preferences(request: Request, token: str) -> Response:
    ctx = context_of(request)
    form = await checked_form(request)
    action = field(form, "action")
    now = ctx.clock()
    try:
        target = _target(request, PERSONAL, token)
        async with ctx.db.transaction() as session:
            sub = await selfservice.subscriber_for(session, target)
            context = await _form_context(request, session)
            context["personal"] = await personal_data(session, sub.id, ctx.settings, now=now)
            if sub.status in (SubscriberStatus.unsubscribed, SubscriberStatus.suppressed):
                return _preferences_page(
                    request, sub, token, context, _values_of(sub, context["units"]), status=409
                )
            if action == "pause":
                await selfservice.pause(session, sub, now=now)
                saved = (
                    "Der Empfang ist pausiert. Sie erhalten keine E-Mails, bis Sie ihn fortsetzen."
                )
            elif action == "resume":
                await selfservice.resume(session, sub, now=now)
                saved = "Der Empfang ist fortgesetzt."
            else:
                orgs = {o.id: o for o in (await session.scalars(select(Organisation))).all()}
                try:
                    choices = _choices(form, context["units"], orgs, ctx.settings.topic_keys)
                except FieldError as exc:
                    return _preferences_page(
                        request,
                        sub,
                        token,
                        context,
                        _values_from(form),
                        errors={exc.field: exc.problem},
                        status=422,
                    )
                await selfservice.update_preferences(session, sub, choices, now=now)
                saved = "Ihre Einstellungen sind gespeichert."
            await session.flush()
            await session.refresh(sub, ["organisation", "subscriptions"])
            values = _values_of(sub, context["units"])
            context["personal"] = await personal_data(session, sub.id, ctx.settings, now=now)
    except LinkError as exc:
        return _link_problem(request, exc)
    return _preferences_page(request, sub, token, context, values, saved=saved)


@router.get("/abmelden/{token}")
async def unsubscribe_form(request: Request, token: str) -> Response:
    ctx = context_of(request)
    try:
        target = _target(request, PERSONAL, token, expires=False)
        async with ctx.db.reading() as session:
            sub = await selfservice.subscriber_for(session, target)
    except LinkError as exc:
        return _link_problem(request, exc)
    done = sub.status in (SubscriberStatus.unsubscribed, SubscriberStatus.suppressed)
    return page(
        request, "public/unsubscribe.html", {"token": token, "done": done, "email": sub.email}
    )


@router.post("/abmelden/{token}")
async def unsubscribe(request: Request, token: str) -> Response:
    """One click: a mail program's POST (body ``List-Unsubscribe=One-Click``, RFC 8058) or the
    button of the page above. The signed link authorises it; no session or CSRF token is
    needed (a mailbox provider has neither)."""
    ctx = context_of(request)
    form = await request.form()
    one_click = field(form, "List-Unsubscribe") == "One-Click"
    try:
        target = _target(request, PERSONAL, token, expires=False)
        async with ctx.db.transaction() as session:
            sub = await selfservice.subscriber_for(session, target)
            changed = await selfservice.unsubscribe(
                session,
                sub,
                how="one-click" if one_click else "page",
                ip=_ip(request),
                now=ctx.clock(),
            )
    except LinkError as exc:
        if one_click:
            return Response(str(exc), status_code=404, media_type="text/plain; charset=utf-8")
        return _link_problem(request, exc)
    if changed:
        metrics.current().unsubscribes.inc()
    if one_click:
        return Response("Abgemeldet.", media_type="text/plain; charset=utf-8")
    return page(
        request, "public/unsubscribe.html", {"token": token, "done": True, "email": sub.email}
    )
