"""The office's reach page ``/buero/reichweite``: whom the service reaches in the tree, the
Ortsgemeinden whose mayor is not yet subscribed (as CSV for a letter campaign), and reach over
time as charts."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import Request, Response

from .. import audit, reach
from ..db.models import ReachSnapshot, Role
from ..organisations import LEVEL_LABELS
from ..rendering import german_date
from .charts import Chart, Series, render
from .officekit import CurrentUser, office_page, router
from .request import context_of

# The role columns of the tables, in order.
ROLE_COLUMNS = (
    (Role.deputy_mayor, "Beigeordnete"),
    (Role.staff, "Mitarbeitende"),
    (Role.council_member, "Ratsmitglieder"),
)


def history_charts(days: Sequence[ReachSnapshot]) -> list[Chart]:
    """Subscribers, and Ortsgemeinden with their mayor, per stored day."""
    labels = [day.day.strftime("%d.%m.") for day in days]
    span = (
        f"vom {days[0].day.strftime('%d.%m.%Y')} bis {days[-1].day.strftime('%d.%m.%Y')}"
        if days
        else "noch ohne gespeicherte Tage"
    )
    subscribers = [d.subscribers for d in days]
    mayors = [d.mayors_reached for d in days]
    total = days[-1].ortsgemeinden if days else 0
    return [
        Chart(
            ident="verlauf-abonnenten",
            title="Aktive Abonnenten im Verlauf",
            description=(
                f"Liniendiagramm der aktiven Abonnenten je Tag {span}"
                + (f"; zuletzt {subscribers[-1]}." if days else ".")
            ),
            labels=labels,
            series=[Series("aktive Abonnenten", subscribers)],
            kind="line",
        ),
        Chart(
            ident="verlauf-buergermeister",
            title="Ortsgemeinden mit Bürgermeister/in im Verlauf",
            description=(
                f"Liniendiagramm der Ortsgemeinden, deren Bürgermeister/in angemeldet ist, je Tag "
                f"{span}" + (f"; zuletzt {mayors[-1]} von {total}." if days else ".")
            ),
            labels=labels,
            series=[Series("Ortsgemeinden mit Bürgermeister/in", mayors)],
            kind="line",
        ),
    ]


@router.get("/reichweite")
async def reach_page(request: Request, user: CurrentUser) -> Response:
    ctx = context_of(request)
    now = ctx.clock()
    tz = ctx.settings.scheduler.tz
    async with ctx.db.reading() as session:
        report = await reach.read(session, ctx.settings.topic_keys)
    days = await reach.history(ctx.db, now, tz)
    titles = {t.key: t.title for t in ctx.settings.topics}
    return office_page(
        request,
        user,
        "office/reach.html",
        {
            "title": "Reichweite",
            "report": report,
            "today": german_date(now, tz),
            "charts": [render(c) for c in history_charts(days)],
            "levels": LEVEL_LABELS,
            "role_columns": ROLE_COLUMNS,
            "topic_titles": titles,
            "mayor": Role.mayor,
        },
        section="reach",
    )


@router.get("/reichweite/nicht-erreicht.csv")
async def not_reached(request: Request, user: CurrentUser, excel: bool = False) -> Response:
    """The Ortsgemeinden without a subscribed mayor; ``?excel=1``: the form for German Excel."""
    ctx = context_of(request)
    now = ctx.clock()
    async with ctx.db.transaction() as session:
        report = await reach.read(session, ctx.settings.topic_keys)
        text = reach.not_reached_csv(report, excel=excel)
        await audit.record(
            session, user.actor, "reach.exported", "organisations", None, {"excel": excel}
        )
    day = now.astimezone(ctx.settings.scheduler.tz).strftime("%Y-%m-%d")
    name = f"nicht-erreicht-{day}{'-excel' if excel else ''}.csv"
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store",
        },
    )
