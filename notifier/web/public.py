"""Public pages: sign-up (``/anmelden``), confirmation (``/bestaetigen/<token>``), preferences
(``/einstellungen/<token>``), unsubscribe (``/abmelden/<token>``, RFC 8058 one-click), the
privacy notice (``/datenschutz``) and the accessibility statement (``/barrierefreiheit``)."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData

from .. import metrics, selfservice
from ..addresses import check_email, display_email
from ..console import FieldErrors
from ..db import selfservice as personal_links
from ..db.models import Organisation, Subscriber, SubscriberStatus
from ..db.selfservice import GONE, PersonalRow
from ..errors import FieldError
from ..labels import RHYTHM_LABELS, ROLE_CHOICES, SUBSCRIBER_LABELS
from ..links import CONFIRM, PERSONAL, RESUBSCRIBE, LinkError, LinkTarget, resubscribe_days
from ..orgtree import Choice, OrgTree, choose_one, problem_text, tree_cache
from ..signup_limits import allow_signup_mail
from .forms import field, fields, submitted_subscriber
from .request import WebContext, checked_form, context_of, page
from .unsubscribes import unsubscribes_of

router = APIRouter(include_in_schema=False)
logger = logging.getLogger(__name__)

# A field that people do not see (hidden by CSS and from screen readers) and programs fill in.
HONEYPOT = "homepage"


# The order of the fields on the page, and so of the error summary.
FIELDS = ("email", "name", "organisation", "role", "topics", "rhythm", "consent")


def _ip(request: Request) -> str:
    return request.client.host if request.client else "unbekannt"


async def _tree(request: Request, session: AsyncSession) -> OrgTree:
    """The organisation tree (kept per process, see :mod:`notifier.orgtree`)."""
    return await tree_cache(context_of(request).extra).get(session)


def _all_topics(form: FormData) -> bool | None:
    """The radio "alle / nur diese" (``None``: not sent)."""
    return {"1": True, "0": False}.get(field(form, "all_topics"))


async def _check_form(
    session: AsyncSession, form: FormData, tree: OrgTree, topic_keys: list[str]
) -> tuple[selfservice.Choices | None, dict[str, str], Choice]:
    """The choices of a sign-up or preferences form, or every field's problem at once."""
    picked = choose_one(tree, field(form, "organisation"), fields(form, "organisation_key"))
    organisation = await session.get(Organisation, picked.units[0].id) if picked.units else None
    errors: dict[str, str] = {}
    choices = None
    try:
        choices = selfservice.check_choices(
            name=field(form, "name"),
            organisation=organisation,
            role=field(form, "role"),
            rhythm=field(form, "rhythm"),
            topics=fields(form, "topics"),
            all_topics=_all_topics(form),
            topic_keys=topic_keys,
        )
    except FieldErrors as exc:
        errors.update(exc.errors)
    if picked.problems:
        errors["organisation"] = problem_text(picked.problems)
    return choices, errors, picked


def _ordered(errors: dict[str, str]) -> dict[str, str]:
    return {f: errors[f] for f in FIELDS if f in errors} | errors


def _form_context(
    request: Request,
    tree: OrgTree,
    *,
    chosen: tuple[str, ...] = (),
    form: FormData | None = None,
    picked: Choice | None = None,
) -> dict[str, Any]:
    """What the form needs; after a submission, the picker shows what was typed and chosen
    (the candidates of an ambiguous name instead of the name)."""
    ctx = context_of(request)
    text = field(form, "organisation") if form is not None else ""
    resolution = None
    if picked is not None:
        chosen = tuple(u.key for u in picked.units)
        if picked.problems:
            resolution = picked.problems[0]
            if resolution.candidates:
                text = ""
    return {
        "picker": tree.picker(
            ctx.templates.env,
            field="organisation",
            choice="organisation_key",
            chosen=chosen,
            text=text,
            resolution=resolution,
        ),
        "topics": ctx.settings.topics,
        "roles": {r.value: ROLE_CHOICES[r] for r in selfservice.SELF_ROLES},
        "rhythms": {r.value: label for r, label in RHYTHM_LABELS.items()},
    }


def _current(tree: OrgTree, sub: PersonalRow) -> tuple[str, ...]:
    unit = tree.by_id.get(sub.organisation_id)
    return (unit.key,) if unit is not None else ()


def _values_of(sub: PersonalRow, tree: OrgTree) -> dict[str, Any]:
    """A subscriber as the preferences form shows them."""
    return {
        "email": display_email(sub.email),
        "name": sub.name,
        "organisation": tree.label_of(sub.organisation_id),
        "role": sub.role.value,
        "rhythm": sub.rhythm.value,
        "all_topics": sub.all_topics,
        "topics": list(sub.topics),
    }


def _values_from(form: FormData) -> dict[str, Any]:
    return {**submitted_subscriber(form), "consent": field(form, "consent") == "1"}


def _resubscribe(request: Request, sub: PersonalRow) -> dict[str, Any] | None:
    """The "wieder anmelden" button for an unsubscribed person whose choices are still kept."""
    ctx = context_of(request)
    if not selfservice.can_resubscribe(sub, ctx.settings, ctx.clock()):
        return None
    return {
        "url": "/wieder-anmelden/" + ctx.links.token(RESUBSCRIBE, sub.id, sub.token_version),
        "days": resubscribe_days(ctx.settings),
        "consent_text": ctx.settings.web.consent_text,
    }


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
    context = _form_context(request, await tree_cache(ctx.extra).read(ctx.db))
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
        tree = await _tree(request, session)
        try:
            check_email("email", field(form, "email"))
        except FieldError as exc:
            errors[exc.field] = exc.problem
        choices, problems, picked = await _check_form(session, form, tree, ctx.settings.topic_keys)
        errors.update(problems)
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
                **_form_context(request, tree, form=form, picked=picked),
                "values": _values_from(form),
                "errors": _ordered(errors),
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
    # One small read on the event loop, plain rows: the page under a click storm (issue 12).
    row = await ctx.db.read(
        lambda c: personal_links.subscriber(c, target.subscriber_id), inline=True
    )
    return _checked(row, target)


@router.get("/einstellungen/{token}")
async def preferences_form(request: Request, token: str) -> Response:
    ctx = context_of(request)
    try:
        target = _target(request, PERSONAL, token)
        sub = await _personal_row(ctx, target)
    except LinkError as exc:
        return _link_problem(request, exc)
    tree = await tree_cache(ctx.extra).read(ctx.db)
    context = _form_context(request, tree, chosen=_current(tree, sub))
    return _preferences_page(request, sub, token, context, _values_of(sub, tree))


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
            "errors": _ordered(errors or {}),
            "saved": saved,
            "resubscribe": _resubscribe(request, sub),
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
        tree = await tree_cache(ctx.extra).read(ctx.db)
        choices: selfservice.Choices | None = None
        errors: dict[str, str] = {}
        picked: Choice | None = None
        if action == "save":
            # Checked before the write transaction, which then holds the lock only for its
            # own statements.
            async with ctx.db.reading() as session:
                choices, errors, picked = await _check_form(
                    session, form, tree, ctx.settings.topic_keys
                )

        def change(connection: Connection) -> tuple[PersonalRow, str]:
            sub = _checked(personal_links.subscriber(connection, target.subscriber_id), target)
            if sub.status in GONE:
                return sub, "gone"
            if action == "pause":
                personal_links.pause(connection, sub, now=now)
            elif action == "resume":
                personal_links.resume(connection, sub, now=now)
            elif choices is not None and not errors:
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
    if outcome == "invalid":
        return _preferences_page(
            request,
            sub,
            token,
            _form_context(request, tree, form=form, picked=picked),
            _values_from(form),
            errors=errors,
            status=422,
        )
    context = _form_context(request, tree, chosen=_current(tree, sub))
    if outcome == "gone":
        return _preferences_page(request, sub, token, context, _values_of(sub, tree), status=409)
    return _preferences_page(
        request, sub, token, context, _values_of(sub, tree), saved=_SAVED[action]
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
        {
            "token": token,
            "done": sub.status in GONE,
            "email": sub.email,
            "resubscribe": _resubscribe(request, sub),
        },
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
        # Written together with the other clicks of the moment, answered after the commit
        # (a group commit: one write transaction per batch, not per click; issue 12's storm).
        row, changed = await unsubscribes_of(ctx.extra, ctx.db).unsubscribe(
            personal_links.Unsubscribe(target.subscriber_id, target.version, how, ip, now)
        )
        sub = _checked(row, target)
    except LinkError as exc:
        if one_click:
            return Response(str(exc), status_code=404, media_type="text/plain; charset=utf-8")
        return _link_problem(request, exc)
    if changed:
        metrics.current().unsubscribes.inc()
    if one_click:
        return Response("Abgemeldet.", media_type="text/plain; charset=utf-8")
    if changed:
        # The page offers "wieder anmelden": it needs the row as the unsubscribe left it.
        sub = replace(sub, status=SubscriberStatus.unsubscribed, updated_at=now)
    return page(
        request,
        "public/unsubscribe.html",
        {
            "token": token,
            "done": True,
            "email": sub.email,
            "resubscribe": _resubscribe(request, sub),
        },
    )


# -- "wieder anmelden" -----------------------------------------------------------------------


@router.get("/wieder-anmelden/{token}")
async def resubscribe_form(request: Request, token: str) -> Response:
    ctx = context_of(request)
    try:
        target = _target(request, RESUBSCRIBE, token)
        async with ctx.db.reading() as session:
            sub = await selfservice.resubscribable(
                session, target, settings=ctx.settings, now=ctx.clock()
            )
            tree = await _tree(request, session)
    except LinkError as exc:
        return _link_problem(request, exc)
    return _resubscribe_page(request, sub, tree, token)


@router.post("/wieder-anmelden/{token}")
async def resubscribe(request: Request, token: str) -> Response:
    """One click restores the old choices (the page's button, or the one on the page that
    confirmed the unsubscribe)."""
    ctx = context_of(request)
    await checked_form(request)
    try:
        target = _target(request, RESUBSCRIBE, token)
        async with ctx.db.transaction() as session:
            sub = await selfservice.resubscribe(
                session, target, ip=_ip(request), settings=ctx.settings, now=ctx.clock()
            )
            tree = await _tree(request, session)
    except LinkError as exc:
        return _link_problem(request, exc)
    preferences, _ = ctx.links.personal_urls(sub.id, sub.token_version)
    return _resubscribe_page(request, sub, tree, token, preferences_url=preferences)


def _resubscribe_page(
    request: Request, sub: Subscriber, tree: OrgTree, token: str, *, preferences_url: str = ""
) -> Response:
    settings = context_of(request).settings
    titles = {t.key: t.title for t in settings.topics}
    return page(
        request,
        "public/resubscribe.html",
        {
            "token": token,
            "subscriber": sub,
            "back": sub.status is not SubscriberStatus.unsubscribed,
            "held": sub.status is SubscriberStatus.held,
            "organisation": tree.label_of(sub.organisation_id),
            "role": ROLE_CHOICES.get(sub.role, sub.role.value),
            "rhythm": RHYTHM_LABELS.get(sub.rhythm, sub.rhythm.value),
            "topics": []
            if sub.all_topics
            else [titles.get(s.topic_key, s.topic_key) for s in sub.subscriptions],
            "consent_text": settings.web.consent_text,
            "preferences_url": preferences_url,
        },
    )
