"""The charts of the console's pages, built from the named queries: messages per day by state
(dashboard), an announcement's delivery over time (its page), and the bounces and unsubscribes
that followed the latest announcements (the list of announcements)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from ..db import charts as store
from ..db.models import Item
from ..db.reports import DayFigures
from .charts import Chart, Series

# How many points an announcement's delivery chart has at most.
DELIVERY_POINTS = 24
# How many announcements the bounce chart compares.
ANNOUNCEMENTS_COMPARED = 10


def outbox_chart(days: Sequence[DayFigures], tz: ZoneInfo) -> Chart:
    """``days``: today first, as :func:`~notifier.db.reports.daily_figures` gives them."""
    ordered = list(reversed(days))
    labels = [d.start.astimezone(tz).strftime("%d.%m.") for d in ordered]
    sent = [d.sent for d in ordered]
    deferred = [d.deferred for d in ordered]
    failed = [d.failed for d in ordered]
    return Chart(
        ident="versand-tage",
        title=f"Nachrichten je Tag der letzten {len(days)} Tage nach Zustand",
        description=(
            f"Gestapeltes Säulendiagramm: je Tag die versandten, zurückgestellten und "
            f"fehlgeschlagenen Nachrichten. Insgesamt {sum(sent)} versandt, {sum(deferred)} "
            f"zurückgestellt, {sum(failed)} fehlgeschlagen."
        ),
        labels=labels,
        series=[
            Series("versandt", sent),
            Series("zurückgestellt", deferred),
            Series("fehlgeschlagen", failed),
        ],
        kind="stacked",
    )


def _step(span: timedelta) -> timedelta:
    """A round step that divides ``span`` into at most DELIVERY_POINTS parts."""
    for minutes in (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440):
        step = timedelta(minutes=minutes)
        if span <= step * (DELIVERY_POINTS - 1):
            return step
    return span / (DELIVERY_POINTS - 1)


async def delivery_chart(
    session: AsyncSession, item: Item, tz: ZoneInfo, now: datetime
) -> Chart | None:
    """Messages of the item sent and failed so far, over time; None before it was routed."""
    span = await store.delivery_span(session, item.id)
    if span is None:
        return None
    start, end = span
    end = min(max(end, start), now)
    step = _step(end - start)
    # Points in time from the first message queued (nothing sent yet) to the first one past the
    # last message's end; at least two, so the chart is a line.
    ends = [start + step * i for i in range(DELIVERY_POINTS)]
    ends = [e for e in ends if e - step <= end]
    if len(ends) < 2:
        ends.append(start + step)
    figures = await store.delivered_by(session, item.id, ends)
    same_day = start.astimezone(tz).date() == ends[-1].astimezone(tz).date()
    fmt = "%H:%M" if same_day else "%d.%m. %H:%M"
    labels = [e.astimezone(tz).strftime(fmt) for e in ends]
    sent = [s for s, _ in figures]
    failed = [f for _, f in figures]
    return Chart(
        ident="zustellung",
        title="Zustellung im Verlauf",
        description=(
            f"Liniendiagramm: wie viele Nachrichten dieser Mitteilung bis zum jeweiligen Zeitpunkt "
            f"versandt und endgültig fehlgeschlagen waren, in Schritten von "
            f"{int(step.total_seconds() // 60)} Minuten; zuletzt {sent[-1]} versandt und "
            f"{failed[-1]} fehlgeschlagen."
        ),
        labels=labels,
        series=[Series("versandt (bis dahin)", sent), Series("fehlgeschlagen (bis dahin)", failed)],
        kind="line",
        label_header="bis",
    )


async def bounce_chart(session: AsyncSession, items: Sequence[Item]) -> Chart | None:
    """Bounces and unsubscribes after each of the latest sent announcements (oldest first)."""
    sent = sorted((i for i in items if i.routed_at is not None), key=lambda i: (i.send_at, i.id))[
        -ANNOUNCEMENTS_COMPARED:
    ]
    if not sent:
        return None
    ids = [i.id for i in sent]
    bounces = await store.bounces_by_item(session, ids)
    since = min(i.routed_at or i.send_at for i in sent)
    unsubscribes = await store.unsubscribes_by_item(session, ids, since)
    return Chart(
        ident="bounces-abmeldungen",
        title="Bounces und Abmeldungen je Mitteilung",
        description=(
            f"Säulendiagramm der letzten {len(sent)} versandten Mitteilungen: je Mitteilung die "
            "zurückgekommenen Nachrichten (Bounces) und die "
            "Abmeldungen danach. Eine Abmeldung zählt für die letzte Mitteilung, die die Person "
            f"vorher erhalten hat. Insgesamt {sum(bounces.values())} Bounces und "
            f"{sum(unsubscribes.values())} Abmeldungen."
        ),
        labels=[f"Nr. {i.id}" for i in sent],
        series=[
            Series("Bounces", [bounces.get(i.id, 0) for i in sent]),
            Series("Abmeldungen", [unsubscribes.get(i.id, 0) for i in sent]),
        ],
        kind="bars",
        label_header="Mitteilung",
    )
