"""Announcements in the office console: list, compose in Markdown with a preview of the real
e-mail and the audience by level and role, a test to oneself, schedule, edit until sent,
cancel, and the delivery state of every recipient."""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime
from typing import Any

from fastapi import Request, Response
from fastapi.responses import RedirectResponse
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from .. import announcements as ann
from .. import audit, console
from ..db import bounces as bounce_store
from ..db import queries, reports
from ..db.models import Item, ItemStatus, OutboxState
from ..errors import AnnouncementRefused, DeliveryError, NotFoundError, StateError
from ..labels import BOUNCE_LABELS, ITEM_LABELS, ROLE_LABELS, STATE_LABELS
from ..logs import log_form, without_address
from ..organisations import LEVEL_LABELS, organisation_index
from ..orgtree import Choice, choose_many, problem_text
from .charts import render
from .forms import field, fields
from .office_charts import bounce_chart, delivery_chart
from .officekit import (
    CurrentUser,
    OfficeUser,
    keep_preview,
    mail_frame,
    office_page,
    org_picker,
    renderer,
    router,
    smtp_endpoint,
    units,
)
from .params import PageNo, RowId
from .request import checked_form, context_of

logger = logging.getLogger(__name__)

FIELD_LABELS = {
    "subject": "Betreff",
    "body": "Text",
    "topics": "Themen",
    "scope": "Empfängerkreis",
    "roles": "Funktionen",
    "send_at": "Versandzeitpunkt",
    "important": "Wichtig",
}
PAGE_SIZE = 200
_TIME_FORMATS = ("%d.%m.%Y %H:%M", "%d.%m.%Y, %H:%M", "%d.%m.%Y %H.%M")


def _parse_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    for fmt in _TIME_FORMATS:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    raise ValueError(text)


def _input(form: FormData) -> tuple[console.AnnouncementInput, dict[str, str], dict[str, Any]]:
    """The form's announcement, the errors found reading it, and the values to show again."""
    errors: dict[str, str] = {}
    raw_time = field(form, "send_at").strip()
    send_at = None
    if raw_time:
        try:
            send_at = _parse_time(raw_time)
        except ValueError:
            errors["send_at"] = (
                "Bitte Datum und Uhrzeit angeben, z. B. 2026-12-07T09:00 oder 07.12.2026 09:00."
            )
    data = console.AnnouncementInput(
        subject=field(form, "subject"),
        body=field(form, "body"),
        topics=fields(form, "topics"),
        scope=fields(form, "scope"),
        roles=fields(form, "roles"),
        send_at=send_at,
        important=field(form, "important") == "1",
    )
    values = {
        "subject": data.subject,
        "body": data.body,
        "topics": list(data.topics),
        "scope": list(data.scope),
        "roles": list(data.roles),
        "send_at": raw_time,
        "important": data.important,
    }
    return data, errors, values


def _values_of(item: Item, tz: Any) -> dict[str, Any]:
    return {
        "subject": item.subject,
        "body": item.body,
        "topics": list(item.topics),
        "scope": list(item.scope),
        "roles": list(item.roles),
        "send_at": item.send_at.astimezone(tz).strftime("%Y-%m-%dT%H:%M"),
        "important": item.important,
    }


def _audience_rows(audience: ann.Audience) -> dict[str, Any]:
    return {
        "total": audience.total,
        "levels": [
            (LEVEL_LABELS[k], audience.by_level[k]) for k in LEVEL_LABELS if k in audience.by_level
        ],
        "roles": [
            (ROLE_LABELS[r], audience.by_role[r]) for r in ROLE_LABELS if r in audience.by_role
        ],
    }


async def _form_page(
    request: Request,
    user: OfficeUser,
    *,
    item_id: int | None,
    values: dict[str, Any],
    errors: dict[str, str] | None = None,
    preview: dict[str, Any] | None = None,
    notice: str = "",
    problem: str = "",
    status: int = 200,
    picked: Choice | None = None,
    scope_text: str = "",
) -> Response:
    ctx = context_of(request)
    async with ctx.db.reading() as session:
        tree, _ = await units(request, session)
    return office_page(
        request,
        user,
        "office/announcement_form.html",
        {
            "title": "Mitteilung bearbeiten" if item_id else "Neue Mitteilung",
            "item_id": item_id,
            "values": values,
            "errors": errors or {},
            "labels": FIELD_LABELS,
            "picker": org_picker(
                request,
                tree,
                field="scope_suche",
                choice="scope",
                chosen=tuple(values["scope"]),
                text=scope_text,
                picked=picked,
                multiple=True,
            ),
            "topics": ctx.settings.topics,
            "roles": ROLE_LABELS,
            "preview": preview,
            "notice": notice,
            "problem": problem,
            "has_email": bool(user.email),
        },
        section="announcements",
        status=status,
    )


@router.get("/mitteilungen")
async def announcement_list(request: Request, user: CurrentUser) -> Response:
    ctx = context_of(request)
    async with ctx.db.reading() as session:
        rows = await ann.list_announcements(session)
        chart = await bounce_chart(session, [item for item, _ in rows])
    listed = [
        {
            "item": item,
            "status": ITEM_LABELS[item.status],
            "counts": [(STATE_LABELS[s], n) for s, n in counts.items() if n],
        }
        for item, counts in rows
    ]
    return office_page(
        request,
        user,
        "office/announcements.html",
        {"title": "Mitteilungen", "rows": listed, "chart": render(chart) if chart else ""},
        section="announcements",
    )


@router.get("/mitteilungen/neu")
async def compose_form(request: Request, user: CurrentUser) -> Response:
    values = {
        "subject": "",
        "body": "",
        "topics": [],
        "scope": [],
        "roles": [],
        "send_at": "",
        "important": False,
    }
    return await _form_page(request, user, item_id=None, values=values)


@router.post("/mitteilungen/neu")
async def compose(request: Request, user: CurrentUser) -> Response:
    return await _submit(request, user, None)


@router.get("/mitteilungen/{item_id}/bearbeiten")
async def edit_form(request: Request, item_id: RowId, user: CurrentUser) -> Response:
    ctx = context_of(request)
    async with ctx.db.reading() as session:
        item = await _announcement(session, item_id)
    if item.status is not ItemStatus.scheduled:
        raise HTTPException(
            409,
            "Diese Mitteilung ist schon versandt oder abgesagt und kann nicht mehr "
            "geändert werden.",
        )
    return await _form_page(
        request, user, item_id=item_id, values=_values_of(item, ctx.settings.scheduler.tz)
    )


@router.post("/mitteilungen/{item_id}/bearbeiten")
async def edit(request: Request, item_id: RowId, user: CurrentUser) -> Response:
    return await _submit(request, user, item_id)


async def _announcement(session: Any, item_id: int) -> Item:
    try:
        return await console.announcement(session, item_id)
    except NotFoundError as exc:
        raise HTTPException(404, f"Keine Mitteilung Nr. {item_id}.") from exc


async def _submit(request: Request, user: OfficeUser, item_id: int | None) -> Response:
    """One form, three buttons: preview (with the audience), test to oneself, schedule/save."""
    ctx = context_of(request)
    form = await checked_form(request)
    action = field(form, "action")
    data, errors, values = _input(form)
    now = ctx.clock()
    problem = ""
    saved = 0
    preview: tuple[Item, ann.Audience, Any] | None = None
    draft: ann.Draft | None = None
    # One transaction, and no page rendered inside it (a page reads the tree in its own).
    async with ctx.db.transaction() as session:
        if item_id is not None:
            await _announcement(session, item_id)
        tree, by_key = await units(request, session)
        picked = choose_many(tree, field(form, "scope_suche"), fields(form, "scope"))
        # Keys the tree lacks stay in: the check below refuses them by name.
        data = dataclasses.replace(data, scope=[u.key for u in picked.units] + picked.unknown)
        values["scope"] = list(data.scope)
        if picked.problems:
            errors["scope"] = problem_text(picked.problems)
        try:
            draft = console.check_announcement(
                data, settings=ctx.settings, units=by_key, now=now, source="buero"
            )
        except console.FieldErrors as exc:
            errors = {**exc.errors, **errors}
        if errors:
            draft = None
        elif draft is not None and action == "planen":
            mail, links = renderer(ctx), ctx.links
            try:
                if item_id is None:
                    item = await ann.schedule(
                        session, draft, actor=user.actor, now=now, renderer=mail, links=links
                    )
                else:
                    item = await console.edit_announcement(
                        session,
                        item_id,
                        draft,
                        actor=user.actor,
                        now=now,
                        renderer=mail,
                        links=links,
                    )
                saved = item.id
            except StateError as exc:
                problem = str(exc)
            except AnnouncementRefused as exc:
                errors["body"] = str(exc)
        if draft is not None and action != "planen":
            item = console.draft_item(draft, actor=user.actor, now=now)
            audience = await ann.audience(session, item)
            recipient = await ann.sample_recipient(session, item, renderer(ctx), ctx.links)
            preview = (item, audience, recipient)
    if errors or problem:
        return await _form_page(
            request,
            user,
            item_id=item_id,
            values=values,
            errors=errors,
            problem=problem,
            status=422 if errors else 409,
            picked=picked,
            scope_text=field(form, "scope_suche"),
        )
    if preview is None:
        ctx.wake()
        done = "geplant" if item_id is None else "gespeichert"
        return RedirectResponse(f"/buero/mitteilungen/{saved}?{done}=1", 303)
    item, audience, recipient = preview
    rendered = console.render(renderer(ctx), item, recipient)
    notice = ""
    if action == "test":
        notice, problem = await _send_test(request, user, item, item_id)
    shown = {
        "subject": rendered.subject,
        "text": rendered.text,
        "frame": f"/buero/vorschau/{keep_preview(request, user, rendered.html)}",
        "recipient": rendered.recipient,
        "audience": _audience_rows(audience),
    }
    return await _form_page(
        request,
        user,
        item_id=item_id,
        values=values,
        preview=shown,
        notice=notice,
        problem=problem,
    )


async def _send_test(
    request: Request, user: OfficeUser, item: Item, item_id: int | None
) -> tuple[str, str]:
    """Send the draft to the user's own address; returns (notice, problem)."""
    ctx = context_of(request)
    if not user.email:
        return "", (
            "Für Ihre Anmeldung ist keine E-Mail-Adresse hinterlegt "
            "(notifier users add NAME --email ADRESSE)."
        )
    try:
        reply = await console.send_test(
            ctx.settings,
            renderer(ctx),
            smtp_endpoint(ctx),
            item,
            name=user.name,
            email=user.email,
            now=ctx.clock(),
        )
    except DeliveryError as exc:
        logger.warning(
            "test message to %s failed: %s %s",
            log_form(user.email),
            exc.code or "-",
            without_address(exc.reply, user.email),
        )
        return "", f"Die Test-E-Mail wurde nicht angenommen: {exc.code or ''} {exc.reply}".strip()
    except ValueError as exc:
        return "", f"Die Test-E-Mail kann nicht erstellt werden: {exc}"
    async with ctx.db.transaction() as session:
        await audit.record(
            session,
            user.actor,
            "announcement.test_sent",
            "item",
            item_id,
            {"to": user.email, "subject": item.subject},
        )
    logger.info("test message sent to %s: %s", log_form(user.email), reply)
    return f"Die Test-E-Mail ist an {user.email} verschickt.", ""


@router.get("/mitteilungen/{item_id}")
async def announcement(
    request: Request,
    item_id: RowId,
    user: CurrentUser,
    zustand: str = "",
    seite: PageNo = 1,
    geplant: str = "",
    gespeichert: str = "",
    abgesagt: str = "",
) -> Response:
    ctx = context_of(request)
    state = OutboxState.__members__.get(zustand)
    page_no = max(seite, 1)
    async with ctx.db.reading() as session:
        item = await _announcement(session, item_id)
        counts = await queries.outbox_counts(session, item_id)
        waiting = await queries.briefing_queue_count(session, item_id)
        bounced = await bounce_store.counts_for_item(session, item_id)
        rows = await reports.deliveries(
            session, item_id, state=state, limit=PAGE_SIZE + 1, offset=(page_no - 1) * PAGE_SIZE
        )
        by_key, _ = await organisation_index(session)
        scope = [by_key[k].name if k in by_key else k for k in item.scope]
        timeline = await delivery_chart(session, item, ctx.settings.scheduler.tz, ctx.clock())
        audience = None
        if item.status is ItemStatus.scheduled:
            audience = _audience_rows(await ann.audience(session, item))
    pending = sum(
        counts.get(s, 0) for s in (OutboxState.queued, OutboxState.deferred, OutboxState.sending)
    )
    cancellable = item.status is ItemStatus.scheduled or (
        item.status is ItemStatus.routed and (pending > 0 or waiting > 0)
    )
    notice = ""
    if geplant:
        notice = f"Die Mitteilung ist geplant (Nr. {item_id})."
    elif gespeichert:
        notice = "Die Änderungen sind gespeichert."
    elif abgesagt:
        notice = f"Die Mitteilung ist abgesagt; {abgesagt} Nachrichten werden nicht versandt."
    return office_page(
        request,
        user,
        "office/announcement.html",
        {
            "title": f"Mitteilung Nr. {item_id}",
            "item": item,
            "scope": scope,
            "status": ITEM_LABELS[item.status],
            "counts": [(s.value, STATE_LABELS[s], counts.get(s, 0)) for s in OutboxState],
            "total": sum(counts.values()),
            "waiting": waiting,
            "bounces": [(BOUNCE_LABELS[k], n) for k, n in sorted(bounced.items())],
            "rows": rows[:PAGE_SIZE],
            "more": len(rows) > PAGE_SIZE,
            "page_no": page_no,
            "state": state.value if state else "",
            "state_labels": STATE_LABELS,
            "audience": audience,
            "editable": item.status is ItemStatus.scheduled,
            "cancellable": cancellable,
            "topic_titles": renderer(ctx).topic_titles,
            "role_labels": {r.value: label for r, label in ROLE_LABELS.items()},
            "notice": notice,
            "delivery_chart": render(timeline) if timeline else "",
        },
        section="announcements",
    )


@router.get("/mitteilungen/{item_id}/email")
async def announcement_email(request: Request, item_id: RowId, user: CurrentUser) -> Response:
    ctx = context_of(request)
    async with ctx.db.reading() as session:
        item = await _announcement(session, item_id)
        recipient = await ann.sample_recipient(session, item, renderer(ctx), ctx.links)
    return mail_frame(console.render(renderer(ctx), item, recipient).html)


@router.post("/mitteilungen/{item_id}/absagen")
async def cancel(request: Request, item_id: RowId, user: CurrentUser) -> Response:
    ctx = context_of(request)
    await checked_form(request)
    try:
        async with ctx.db.transaction() as session:
            stopped = await ann.cancel(session, item_id, actor=user.actor, now=ctx.clock())
    except NotFoundError as exc:
        raise HTTPException(404, f"Keine Mitteilung Nr. {item_id}.") from exc
    except StateError as exc:
        raise HTTPException(409, str(exc)) from exc
    return RedirectResponse(f"/buero/mitteilungen/{item_id}?abgesagt={stopped}", 303)
