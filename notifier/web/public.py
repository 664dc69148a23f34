"""Public pages: sign-up (``/anmelden``), confirmation (``/bestaetigen/<token>``), preferences
(``/einstellungen/<token>``), unsubscribe (``/abmelden/<token>``, RFC 8058 one-click), the
privacy notice (``/datenschutz``) and the accessibility statement (``/barrierefreiheit``)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy import Connection, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData

from .. import metrics, selfservice
from ..addresses import check_email, display_email
from ..db import selfservice as personal_links
from ..db.models import Organisation, OrgKind, SubscriberStatus
from ..db.selfservice import GONE, PersonalRow
from ..errors import FieldError
from ..labels import RHYTHM_LABELS, ROLE_CHOICES, SUBSCRIBER_LABELS
from ..links import CONFIRM, PERSONAL, LinkError, LinkTarget
from ..signup_limits import allow_signup_mail
from .forms import field, fields, submitted_subscriber
from .request import WebContext, checked_form, context_of, page

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


# How long a process keeps the organisation list of the forms before reading it again: it
# changes only with `organisations load`, and reading it (239 units) cost a preferences page
# more than everything else together.
UNITS_TTL = 60.0


async def cached_organisation_choices(ctx: WebContext) -> list[Unit]:
    """:func:`organisation_choices`, read at most once per :data:`UNITS_TTL` per process."""
    cached = ctx.extra.get("organisation_choices")
    now = time.monotonic()
    if cached is not None and cached[0] > now:
        units: list[Unit] = cached[1]
        return units
    async with ctx.db.reading() as session:
        units = await organisation_choices(session)
    ctx.extra["organisation_choices"] = (now + UNITS_TTL, units)
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


def _form_context(request: Request, units: list[Unit]) -> dict[str, Any]:
    settings = context_of(request).settings
    return {
        "units": units,
        "topics": settings.topics,
        "roles": {r.value: ROLE_CHOICES[r] for r in selfservice.SELF_ROLES},
        "rhythms": {r.value: label for r, label in RHYTHM_LABELS.items()},
    }


def _values_of(sub: PersonalRow, units: list[Unit]) -> dict[str, Any]:
    """A subscriber as the preferences form shows them."""
    return {
        "email": display_email(sub.email),
        "name": sub.name,
        "organisation": next((u.label for u in units if u.id == sub.organisation_id), ""),
        "role": sub.role.value,
        "rhythm": sub.rhythm.value,
        "all_topics": sub.all_topics,
        "topics": list(sub.topics),
    }


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
        context = _form_context(request, await organisation_choices(session))
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
        context = _form_context(request, await organisation_choices(session))
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


def _checked(sub: PersonalRow | None, target: LinkTarget) -> PersonalRow:
    """The subscriber a checked link names; raises :class:`LinkError` if the link was revoked
    (another ``token_version``) or the subscriber is gone."""
    if sub is None or sub.token_version != target.version:
        raise LinkError("Der Link ist nicht mehr gültig.")
    return sub


async def _personal_row(ctx: WebContext, target: LinkTarget) -> PersonalRow:
    # One read in a worker thread, plain rows: the page under a click storm (issue 12).
    row = await ctx.db.read(lambda c: personal_links.subscriber(c, target.subscriber_id))
    return _checked(row, target)


@router.get("/einstellungen/{token}")
async def preferences_form(request: Request, token: str) -> Response:
    ctx = context_of(request)
    try:
        target = _target(request, PERSONAL, token)
        sub = await _personal_row(ctx, target)
    except LinkError as exc:
        return _link_problem(request, exc)
    context = _form_context(request, await cached_organisation_choices(ctx))
    return _preferences_page(request, sub, token, context, _values_of(sub, context["units"]))


def _preferences_page(
    request: Request,
    sub: PersonalRow,
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
            "controller": context_of(request).settings.mail.sender_name,
            "values": values,
            "errors": errors or {},
            "saved": saved,
        },
        status=status,
    )


_SAVED = {
    "pause": "Der Empfang ist pausiert. Sie erhalten keine E-Mails, bis Sie ihn fortsetzen.",
    "resume": "Der Empfang ist fortgesetzt.",
    "save": "Ihre Einstellungen sind gespeichert.",
}


@router.post("/einstellungen/{token}")
async def preferences(request: Request, token: str) -> Response:
    ctx = context_of(request)
    form = await checked_form(request)
    action = field(form, "action")
    if action not in ("pause", "resume"):
        action = "save"
    now = ctx.clock()
    try:
        target = _target(request, PERSONAL, token)
        units = await cached_organisation_choices(ctx)
        choices: selfservice.Choices | None = None
        problem: FieldError | None = None
        if action == "save":
            # Checked before the write transaction, which then holds the lock only for its
            # own statements.
            async with ctx.db.reading() as session:
                orgs = {o.id: o for o in (await session.scalars(select(Organisation))).all()}
            try:
                choices = _choices(form, units, orgs, ctx.settings.topic_keys)
            except FieldError as exc:
                problem = exc

        def change(connection: Connection) -> tuple[PersonalRow, str]:
            sub = _checked(personal_links.subscriber(connection, target.subscriber_id), target)
            if sub.status in GONE:
                return sub, "gone"
            if action == "pause":
                personal_links.pause(connection, sub, now=now)
            elif action == "resume":
                personal_links.resume(connection, sub, now=now)
            elif choices is not None:
                personal_links.update_preferences(
                    connection,
                    sub,
                    name=choices.name,
                    organisation_id=choices.organisation.id,
                    role=choices.role,
                    rhythm=choices.rhythm,
                    topics=choices.topics,
                    now=now,
                )
            else:
                return sub, "invalid"
            changed = personal_links.subscriber(connection, sub.id)
            assert changed is not None
            return changed, "saved"

        # The whole transaction in a worker thread (Database.write): the write lock is not
        # held while the event loop serves other requests.
        sub, outcome = await ctx.db.write(change)
    except LinkError as exc:
        return _link_problem(request, exc)
    context = _form_context(request, units)
    if outcome == "gone":
        return _preferences_page(request, sub, token, context, _values_of(sub, units), status=409)
    if outcome == "invalid" and problem is not None:
        return _preferences_page(
            request,
            sub,
            token,
            context,
            _values_from(form),
            errors={problem.field: problem.problem},
            status=422,
        )
    return _preferences_page(
        request, sub, token, context, _values_of(sub, units), saved=_SAVED[action]
    )


@router.get("/abmelden/{token}")
async def unsubscribe_form(request: Request, token: str) -> Response:
    ctx = context_of(request)
    try:
        target = _target(request, PERSONAL, token, expires=False)
        sub = await _personal_row(ctx, target)
    except LinkError as exc:
        return _link_problem(request, exc)
    return page(
        request,
        "public/unsubscribe.html",
        {"token": token, "done": sub.status in GONE, "email": sub.email},
    )


@router.post("/abmelden/{token}")
async def unsubscribe(request: Request, token: str) -> Response:
    """One click: a mail program's POST (body ``List-Unsubscribe=One-Click``, RFC 8058) or the
    button of the page above. The signed link authorises it; no session or CSRF token is
    needed (a mailbox provider has neither)."""
    ctx = context_of(request)
    form = await request.form()
    one_click = field(form, "List-Unsubscribe") == "One-Click"
    how = "one-click" if one_click else "page"
    ip = _ip(request)
    now = ctx.clock()
    try:
        target = _target(request, PERSONAL, token, expires=False)

        def change(connection: Connection) -> tuple[PersonalRow, bool]:
            row = personal_links.subscriber(connection, target.subscriber_id, topics=False)
            sub = _checked(row, target)
            return sub, personal_links.unsubscribe(connection, sub, how=how, ip=ip, now=now)

        # The whole transaction in a worker thread (Database.write): during a big send the
        # senders' commits do not wait for a busy event loop (issue 12's click storm).
        sub, changed = await ctx.db.write(change)
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
