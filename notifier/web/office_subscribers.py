"""Subscribers in the office console: search and filter, edit, approve, pause, deactivate, CSV
import by upload (the CLI's validation and row-by-row report) and export."""

from __future__ import annotations

import asyncio
import math
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request, Response
from fastapi.responses import RedirectResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from .. import audit, console, subscriber_admin
from ..addresses import display_email
from ..data_export import BASIS_LABELS, SOURCE_LABELS
from ..db import personal, reports
from ..db.models import Role, Subscriber, SubscriberStatus
from ..errors import InputError, StateError
from ..labels import RHYTHM_LABELS, ROLE_CHOICES, ROLE_LABELS, SUBSCRIBER_LABELS
from ..orgtree import Choice, choose_one, problem_text
from ..subscribers import export_subscribers, import_file
from .forms import field, fields, submitted_subscriber, subscriber_values
from .officekit import (
    CurrentUser,
    OfficeUser,
    office_page,
    org_picker,
    router,
    units,
)
from .params import PageNo, RowId
from .request import checked_form, context_of

PAGE_SIZE = 50
FIELD_LABELS = {
    "email": "E-Mail-Adresse",
    "name": "Name",
    "organisation": "Organisation",
    "role": "Funktion",
    "topics": "Themen",
    "rhythm": "Rhythmus",
    "file": "Datei",
}


@router.get("/abonnenten")
async def subscriber_list(
    request: Request,
    user: CurrentUser,
    q: str = "",
    organisation: str = "",
    organisation_key: str = "",
    role: str = "",
    topic: str = "",
    status: str = "",
    seite: PageNo = 1,
) -> Response:
    ctx = context_of(request)
    page_no = max(seite, 1)
    async with ctx.db.reading() as session:
        tree, by_key = await units(request, session)
        picked = choose_one(tree, organisation[:200], [organisation_key])
        unit = picked.units[0] if picked.units else None
        problem = problem_text(picked.problems) if picked.problems else ""
        chosen = reports.SubscriberFilter(
            text=q.strip()[:200].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_"),
            organisation_path=by_key[unit.key].path if unit is not None else None,
            role=Role.__members__.get(role),
            topic=topic if topic in ctx.settings.topic_keys else None,
            status=SubscriberStatus.__members__.get(status),
        )
        total, rows = await reports.search_subscribers(
            session, chosen, limit=PAGE_SIZE, offset=(page_no - 1) * PAGE_SIZE
        )
        held, _ = await reports.search_subscribers(
            session, reports.SubscriberFilter(status=SubscriberStatus.held), limit=0, offset=0
        )
    query = {
        "q": q,
        "organisation": organisation,
        "organisation_key": organisation_key,
        "role": role,
        "topic": topic,
        "status": status,
    }
    pages = max(1, math.ceil(total / PAGE_SIZE))
    return office_page(
        request,
        user,
        "office/subscribers.html",
        {
            "title": "Abonnenten",
            "rows": rows,
            "total": total,
            "held": held,
            "filters": query,
            "problem": problem,
            "page_no": page_no,
            "pages": pages,
            "query": urlencode({k: v for k, v in query.items() if v}),
            "picker": org_picker(
                request,
                tree,
                field="organisation",
                choice="organisation_key",
                text=organisation,
                picked=picked,
            ),
            "topics": ctx.settings.topics,
            "topic_titles": {t.key: t.title for t in ctx.settings.topics},
            "roles": {r.value: label for r, label in ROLE_LABELS.items()},
            "role_labels": ROLE_CHOICES,
            "statuses": {s.value: label for s, label in SUBSCRIBER_LABELS.items()},
            "status_labels": SUBSCRIBER_LABELS,
        },
        section="subscribers",
    )


@router.get("/abonnenten/export.csv")
async def export(request: Request, user: CurrentUser, excel: bool = False) -> Response:
    """The active subscribers in the import format; ``?excel=1``: the form for German Excel."""
    ctx = context_of(request)
    now = ctx.clock()
    async with ctx.db.transaction() as session:
        text = await export_subscribers(session, excel=excel)
        await audit.record(
            session, user.actor, "subscribers.exported", "subscribers", None, {"excel": excel}
        )
    day = now.astimezone(ctx.settings.scheduler.tz).strftime("%Y-%m-%d")
    name = f"abonnenten-{day}-excel.csv" if excel else f"abonnenten-{day}.csv"
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store",
        },
    )


# -- import ----------------------------------------------------------------------------------


def _import_page(
    request: Request, user: OfficeUser, context: dict[str, Any], status: int = 200
) -> Response:
    return office_page(
        request,
        user,
        "office/import.html",
        {
            "title": "Abonnenten importieren",
            "problems": [],
            "omitted": 0,
            "report": None,
            "error": "",
            "filename": "",
            "dry_run": False,
            **context,
        },
        section="subscribers",
        status=status,
    )


@router.get("/abonnenten/import")
async def import_form(request: Request, user: CurrentUser) -> Response:
    return _import_page(request, user, {})


def _write_temp(data: bytes) -> Path:
    with tempfile.NamedTemporaryFile("wb", suffix=".csv", delete=False) as out:
        out.write(data)
        return Path(out.name)


@router.post("/abonnenten/import")
async def import_upload(request: Request, user: CurrentUser) -> Response:
    ctx = context_of(request)
    form = await checked_form(request)
    upload = form.get("file")
    dry_run = field(form, "dry_run") == "1"
    if not isinstance(upload, UploadFile) or not upload.filename:
        return _import_page(
            request, user, {"error": "Bitte eine CSV-Datei wählen.", "dry_run": dry_run}, 422
        )
    filename = Path(upload.filename).name
    # The body limit (``[web] max_upload_bytes``) has held the whole request to its size.
    data = await upload.read()
    path = await asyncio.to_thread(_write_temp, data)
    try:
        # Checked without a lock, then written in one transaction in a worker thread: the
        # senders and the pages wait only while the rows are written (issue 12).
        report = await import_file(
            ctx.db,
            path,
            set(ctx.settings.topic_keys),
            actor=user.actor,
            file_name=filename,
            dry_run=dry_run,
        )
    except InputError as exc:
        summary = "" if exc.problems else str(exc).replace(str(path), filename)
        return _import_page(
            request,
            user,
            {
                "problems": exc.problems,
                "omitted": exc.omitted,
                "error": summary or f"{exc.total} Fehler in {filename}: nichts wurde gespeichert.",
                "filename": filename,
                "dry_run": dry_run,
            },
            422,
        )
    finally:
        await asyncio.to_thread(path.unlink, missing_ok=True)
    return _import_page(request, user, {"report": report, "filename": filename, "dry_run": dry_run})


# -- one subscriber --------------------------------------------------------------------------


async def _subscriber(session: Any, subscriber_id: int) -> Subscriber:
    sub = await reports.subscriber(session, subscriber_id)
    if sub is None:
        raise HTTPException(404, f"Keinen Abonnenten Nr. {subscriber_id}.")
    return sub


async def _edit_page(
    request: Request,
    user: OfficeUser,
    subscriber_id: int,
    *,
    values: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
    notice: str = "",
    problem: str = "",
    status: int = 200,
    picked: Choice | None = None,
    text: str = "",
) -> Response:
    ctx = context_of(request)
    async with ctx.db.reading() as session:
        sub = await _subscriber(session, subscriber_id)
        tree, _ = await units(request, session)
        consents = await personal.consents(session, sub.id)
    label = tree.label_of(sub.organisation_id)
    current = tree.by_id.get(sub.organisation_id)
    return office_page(
        request,
        user,
        "office/subscriber.html",
        {
            "title": f"Abonnent {display_email(sub.email)}",
            "subscriber": sub,
            "status_label": SUBSCRIBER_LABELS[sub.status],
            "values": values or subscriber_values(sub, label),
            "errors": errors or {},
            "labels": FIELD_LABELS,
            "picker": org_picker(
                request,
                tree,
                field="organisation",
                choice="organisation_key",
                chosen=(current.key,) if current is not None else (),
                text=text,
                picked=picked,
            ),
            "topics": ctx.settings.topics,
            "roles": {r.value: label for r, label in ROLE_CHOICES.items()},
            "rhythms": {r.value: label for r, label in RHYTHM_LABELS.items()},
            "notice": notice,
            "problem": problem,
            "consents": consents,
            "basis_label": BASIS_LABELS[sub.basis],
            "source_label": SOURCE_LABELS[sub.source],
        },
        section="subscribers",
        status=status,
    )


@router.get("/abonnenten/{subscriber_id}")
async def subscriber_form(
    request: Request, subscriber_id: RowId, user: CurrentUser, gespeichert: str = ""
) -> Response:
    notice = {"1": "Die Änderungen sind gespeichert.", "status": "Der Status ist geändert."}
    return await _edit_page(request, user, subscriber_id, notice=notice.get(gespeichert, ""))


@router.post("/abonnenten/{subscriber_id}")
async def subscriber_save(request: Request, subscriber_id: RowId, user: CurrentUser) -> Response:
    ctx = context_of(request)
    form = await checked_form(request)
    values = submitted_subscriber(form)
    errors: dict[str, str] = {}
    async with ctx.db.transaction() as session:
        sub = await _subscriber(session, subscriber_id)
        tree, by_key = await units(request, session)
        picked = choose_one(tree, values["organisation"], fields(form, "organisation_key"))
        unit = picked.units[0] if picked.units else None
        if picked.problems:
            errors["organisation"] = problem_text(picked.problems)
        topics = [] if values["all_topics"] else values["topics"]
        if values["all_topics"] and values["topics"]:
            errors["topics"] = (
                "„Alle Themen“ und einzelne Themen zugleich: bitte „Nur diese Themen“ wählen "
                "oder die Häkchen entfernen."
            )
        elif not values["all_topics"] and not topics:
            errors["topics"] = "Bitte mindestens ein Thema oder „alle Themen“ wählen."
        try:
            checked = subscriber_admin.check_subscriber(
                subscriber_admin.SubscriberInput(
                    email=values["email"],
                    name=values["name"],
                    organisation=unit.key if unit is not None else "",
                    role=values["role"],
                    rhythm=values["rhythm"],
                    topics=topics,
                ),
                settings=ctx.settings,
                units=by_key,
            )
            if not errors:
                await subscriber_admin.change_subscriber(
                    session, sub, checked, actor=user.actor, now=ctx.clock()
                )
        except console.FieldErrors as exc:
            errors = {**exc.errors, **errors}
    if errors:
        return await _edit_page(
            request,
            user,
            subscriber_id,
            values=values,
            errors=errors,
            status=422,
            picked=picked,
            text=values["organisation"],
        )
    return RedirectResponse(f"/buero/abonnenten/{subscriber_id}?gespeichert=1", 303)


@router.post("/abonnenten/{subscriber_id}/status")
async def subscriber_status(request: Request, subscriber_id: RowId, user: CurrentUser) -> Response:
    ctx = context_of(request)
    form = await checked_form(request)
    wanted = SubscriberStatus.__members__.get(field(form, "status"))
    back = field(form, "back")
    if wanted not in (
        SubscriberStatus.active,
        SubscriberStatus.paused,
        SubscriberStatus.unsubscribed,
    ):
        raise HTTPException(400, "Unbekannter Status.")
    try:
        async with ctx.db.transaction() as session:
            sub = await _subscriber(session, subscriber_id)
            await subscriber_admin.set_status(
                session, sub, wanted, actor=user.actor, now=ctx.clock()
            )
    except StateError as exc:
        return await _edit_page(request, user, subscriber_id, problem=str(exc), status=409)
    if back == "liste":
        return RedirectResponse("/buero/abonnenten?status=held", 303)
    return RedirectResponse(f"/buero/abonnenten/{subscriber_id}?gespeichert=status", 303)
