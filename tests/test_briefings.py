"""Daily and weekly briefings against a real SQLite file, the real CLI and a real SMTP server.

Time is a fake clock passed in explicitly. ``notifier announce`` with ``send_at = "now"`` stores
the real current time as send time, so every fake instant used with announcements lies in the
future of the real clock: the week under test is computed from today, and so are the next
daylight-saving changes. Only :func:`latest_slot` (no database) is checked on fixed 2026 dates.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from notifier import metrics
from notifier.briefings import latest_slot, run_due_briefings
from notifier.db import Database, queries
from notifier.db.models import (
    BriefingQueue,
    Digest,
    DigestItem,
    Item,
    ItemKind,
    ItemStatus,
    Rhythm,
    Subscriber,
)
from notifier.delivery import Sender, SmtpTransport
from notifier.rendering import Renderer
from notifier.routing import release_due

from .conftest import Project

BERLIN = ZoneInfo("Europe/Berlin")

IMMEDIATE = "ida.sofort@kreis.example"
DAILY = "tanja.taeglich@kreis.example"
WEEKLY = "willi.woche@kreis.example"
PEOPLE = f"""email,name,role,organisation,topics,rhythm
{IMMEDIATE},Ida Sofort,staff,07232,,immediate
{DAILY},Tanja Täglich,staff,07232,,daily
{WEEKLY},Willi Woche,staff,07232,,weekly
"""

DAILY_KEY = "briefing:daily"
WEEKLY_KEY = "briefing:weekly"


def _monday_after(day: date, min_days: int) -> date:
    first = day + timedelta(days=min_days)
    return first + timedelta(days=(7 - first.weekday()) % 7)


# A Monday well ahead of the real clock, so that announcements made "now" are due by then.
WEEK = _monday_after(datetime.now(BERLIN).date(), 8)
SUNDAY_BEFORE = WEEK - timedelta(days=1)


def day(offset: int) -> date:
    """The day ``offset`` days after the Monday under test."""
    return WEEK + timedelta(days=offset)


def local(on: date, at: str = "07:00:05") -> datetime:
    """Wall-clock time in Berlin on a day, as a UTC instant."""
    return datetime.combine(on, time.fromisoformat(at), tzinfo=BERLIN).astimezone(UTC)


def next_dst_change(month: int) -> date:
    """The next last Sunday of ``month`` (when Europe changes its clocks) at least 8 days ahead."""
    today = datetime.now(BERLIN).date()
    year = today.year
    while True:
        last = date(year + month // 12, month % 12 + 1, 1) - timedelta(days=1)
        sunday = last - timedelta(days=(last.weekday() + 1) % 7)
        if sunday >= today + timedelta(days=8):
            return sunday
        year += 1


class Clock:
    def __init__(self) -> None:
        self.now = local(SUNDAY_BEFORE, "12:00")

    def __call__(self) -> datetime:
        return self.now


class Desk:
    """The project office's desk for one test: the CLI to announce and cancel, and the parts of
    the service (routing, briefings, sender) driven by an explicit clock."""

    def __init__(self, project: Project, db: Database, sender: Sender, clock: Clock) -> None:
        self.project = project
        self.db = db
        self.sender = sender
        self.clock = clock
        self.settings = project.settings
        self._files = 0

    async def announce(
        self, subject: str, *, topics: tuple[str, ...] = (), important: bool = False
    ) -> int:
        """``notifier announce`` with send_at "now"; returns the announcement's number."""
        self._files += 1
        quoted = ", ".join(f'"{t}"' for t in topics)
        text = (
            f'+++\nsubject = "{subject}"\ntopics = [{quoted}]\nsend_at = "now"\n'
            f"important = {'true' if important else 'false'}\n+++\n"
            f"Text zu {subject}.\n"
        )
        file = self.project.write(f"mitteilung-{self._files}.md", text)
        # The CLI runs its own event loop (asyncio.run), so it gets a thread of its own.
        result = await asyncio.to_thread(self.project.cli, "announce", file)
        match = re.search(r"Geplant als Mitteilung Nr\. (\d+)\.", result.output)
        assert match, result.output
        return int(match.group(1))

    async def cancel(self, item_id: int, ok: bool = True) -> tuple[int, str]:
        result = await asyncio.to_thread(
            self.project.cli, "announcements", "cancel", str(item_id), ok=ok
        )
        return result.exit_code, result.output

    async def event(self, subject: str, starts: datetime, at: datetime) -> int:
        """An event item as a calendar source would store it, scheduled for ``at``."""
        async with self.db.transaction() as session:
            item = Item(
                kind=ItemKind.event,
                subject=subject,
                body="",
                topics=[],
                scope=[],
                roles=[],
                send_at=at,
                status=ItemStatus.scheduled,
                created_at=at,
                created_by="source:termine",
                source="termine",
                external_key=f"termin-{subject}",
                starts_at=starts,
                ends_at=starts + timedelta(hours=2),
                location="Kreishaus Bitburg",
            )
            session.add(item)
            await session.flush()
            return item.id

    async def release(self, at: datetime) -> list[tuple[int, int]]:
        return await release_due(self.db, at)

    async def briefings(self, at: datetime) -> dict[Rhythm, int]:
        return await run_due_briefings(self.db, self.settings, at)

    async def deliver(self, at: datetime) -> list[EmailMessage]:
        """Run the sender at ``at`` until nothing is due; the messages the server received."""
        self.clock.now = at
        before = len(self.project.smtp.messages())
        handled = await self.sender.run_once()
        while handled:  # run_once handles one batch; go on until the outbox is drained
            handled = await self.sender.run_once()
        received = self.project.smtp.messages()[before:]
        for r in received:
            assert len(r.rcpt_tos) == 1, r.rcpt_tos
        return [r.message for r in received]

    async def slot(self, key: str) -> datetime | None:
        async with self.db.transaction() as session:
            return await queries.slot_state(session, key)

    async def set_slot(self, key: str, at: datetime) -> None:
        async with self.db.transaction() as session:
            assert await queries.set_slot_state(session, key, None, at)

    async def queued(self) -> list[tuple[str, int]]:
        """(address, item id) pairs waiting in the briefing queue."""
        async with self.db.transaction() as session:
            rows = await session.execute(
                select(Subscriber.email, BriefingQueue.item_id)
                .join(Subscriber, Subscriber.id == BriefingQueue.subscriber_id)
                .order_by(Subscriber.email, BriefingQueue.item_id)
            )
            return [(email, item_id) for email, item_id in rows.all()]

    async def digests(self) -> dict[str, list[list[int]]]:
        """Per address, the item ids of each briefing built, oldest briefing first."""
        async with self.db.transaction() as session:
            rows = await session.execute(
                select(Subscriber.email, Digest.id, DigestItem.item_id)
                .join(Digest, Digest.subscriber_id == Subscriber.id)
                .join(DigestItem, DigestItem.digest_id == Digest.id)
                .order_by(Digest.id, DigestItem.item_id)
            )
            out: dict[str, dict[int, list[int]]] = {}
            for email, digest_id, item_id in rows.all():
                out.setdefault(email, {}).setdefault(digest_id, []).append(item_id)
        return {email: list(d.values()) for email, d in out.items()}


def to(message: EmailMessage) -> str:
    return str(message["To"].addresses[0].addr_spec)


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def html_of(message: EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def by_recipient(messages: list[EmailMessage]) -> dict[str, list[EmailMessage]]:
    out: dict[str, list[EmailMessage]] = {}
    for m in messages:
        out.setdefault(to(m), []).append(m)
    return out


def listed(message: EmailMessage) -> list[str]:
    """The entries ("* subject …") of a briefing's text part, in order."""
    return [
        line[2:].split(" (", 1)[0]
        for line in text_of(message).splitlines()
        if line.startswith("* ")
    ]


@pytest.fixture
def seeded(project: Project) -> Project:
    """The organisation tree and one subscriber per rhythm, all topics, at the Kreis."""
    project.seed(project.write("people.csv", PEOPLE))
    return project


@pytest.fixture
async def desk(seeded: Project) -> AsyncIterator[Desk]:
    settings = seeded.settings
    clock = Clock()
    async with Database(settings.database_url) as db:
        sender = Sender(
            db, settings, Renderer(settings), lambda: SmtpTransport(settings.smtp), clock
        )
        try:
            yield Desk(seeded, db, sender, clock)
        finally:
            await sender.close()


# -- routing by rhythm --------------------------------------------------------------------------


async def test_immediate_subscriber_gets_each_item_at_once_others_wait(desk: Desk) -> None:
    assert await desk.briefings(local(SUNDAY_BEFORE, "12:00")) == {}
    first = await desk.announce("Mobilstation Bitburg eröffnet", topics=("mobilitaet",))
    second = await desk.announce("Vereinsplattform geht online", topics=("eifelleben",))

    # One outbox row (immediate) and two briefing-queue rows (daily, weekly) per item.
    assert await desk.release(local(SUNDAY_BEFORE, "18:00")) == [(first, 3), (second, 3)]
    # Several connections send in parallel: arrival order is not fixed.
    sent = sorted(await desk.deliver(local(SUNDAY_BEFORE, "18:00")), key=lambda m: m["Subject"])

    assert [to(m) for m in sent] == [IMMEDIATE, IMMEDIATE]
    assert [m["Subject"] for m in sent] == [
        "Mobilstation Bitburg eröffnet",
        "Vereinsplattform geht online",
    ]
    assert "Text zu Mobilstation Bitburg eröffnet." in text_of(sent[0])
    assert "Text zu Vereinsplattform geht online." in text_of(sent[1])
    assert await desk.queued() == [
        (DAILY, first),
        (DAILY, second),
        (WEEKLY, first),
        (WEEKLY, second),
    ]

    # Later the same evening: no briefing slot has come, nothing more goes out.
    assert await desk.briefings(local(SUNDAY_BEFORE, "23:59")) == {}
    assert await desk.deliver(local(SUNDAY_BEFORE, "23:59")) == []
    assert len(await desk.queued()) == 4


async def test_first_check_on_a_fresh_database_only_records_the_slot(desk: Desk) -> None:
    item = await desk.announce("Breitband: Ausbau Südeifel abgeschlossen")
    await desk.release(local(WEEK, "06:00"))

    assert await desk.slot(DAILY_KEY) is None
    first_check = local(WEEK, "07:00:05")  # just after Monday's daily and weekly slot
    assert await desk.briefings(first_check) == {}
    assert await desk.slot(DAILY_KEY) == first_check
    assert await desk.slot(WEEKLY_KEY) == first_check
    assert [to(m) for m in await desk.deliver(first_check)] == [IMMEDIATE]
    assert await desk.digests() == {}

    # The items are not lost: they go out with the next slot.
    assert await desk.briefings(local(day(1))) == {Rhythm.daily: 1}
    sent = await desk.deliver(local(day(1)))
    assert [to(m) for m in sent] == [DAILY]
    assert sent[0]["Subject"] == "Ihr Tagesüberblick: 1 Neuigkeit"
    assert listed(sent[0]) == ["Breitband: Ausbau Südeifel abgeschlossen"]
    assert await desk.queued() == [(WEEKLY, item)]


async def test_a_week_of_briefings(desk: Desk) -> None:
    assert await desk.briefings(local(SUNDAY_BEFORE, "12:00")) == {}
    a = await desk.announce("Alpha: Mobilstation Bitburg", topics=("mobilitaet",))
    b = await desk.announce("Bravo: Vereinsplattform", topics=("eifelleben",))
    await desk.release(local(SUNDAY_BEFORE, "18:00"))
    assert len(await desk.deliver(local(SUNDAY_BEFORE, "18:00"))) == 2  # to IMMEDIATE

    briefings: dict[str, list[EmailMessage]] = {DAILY: [], WEEKLY: []}

    async def route(at: datetime, count: int) -> None:
        await desk.release(at)
        assert [to(m) for m in await desk.deliver(at)] == [IMMEDIATE] * count

    async def check(on: date, built: dict[Rhythm, int], subjects: dict[str, str]) -> None:
        at = local(on)
        assert await desk.briefings(at) == built, on
        sent = by_recipient(await desk.deliver(at))
        assert {k: [m["Subject"] for m in v] for k, v in sent.items()} == {
            k: [v] for k, v in subjects.items()
        }, on.strftime("%A")
        for address, messages in sent.items():
            briefings[address] += messages

    # Monday: both rhythms.
    await check(
        day(0),
        {Rhythm.daily: 1, Rhythm.weekly: 1},
        {
            DAILY: "Ihr Tagesüberblick: 2 Neuigkeiten",
            WEEKLY: "Ihr Wochenüberblick: 2 Neuigkeiten",
        },
    )
    c = await desk.announce("Charlie: Digitale Kümmerer")
    await route(local(day(0), "12:00"), 1)
    # Tuesday: daily only.
    await check(day(1), {Rhythm.daily: 1}, {DAILY: "Ihr Tagesüberblick: 1 Neuigkeit"})
    d = await desk.announce("Delta: Telemedizin in Prüm", topics=("versorgung",))
    e = await desk.announce("Echo: Strategie beschlossen", topics=("strategie",))
    x = await desk.event("Xray: Digitalwerkstatt", local(day(14), "18:00"), local(day(1), "11:00"))
    await route(local(day(1), "12:00"), 3)
    # Wednesday.
    await check(day(2), {Rhythm.daily: 1}, {DAILY: "Ihr Tagesüberblick: 2 Neuigkeiten, 1 Termin"})
    # Thursday: nothing new, so no (empty) briefing.
    await check(day(3), {Rhythm.daily: 0}, {})
    f = await desk.announce("Foxtrot: Rufbus fährt öfter", topics=("mobilitaet",))
    await route(local(day(3), "20:00"), 1)
    # Friday.
    await check(day(4), {Rhythm.daily: 1}, {DAILY: "Ihr Tagesüberblick: 1 Neuigkeit"})
    g = await desk.announce("Golf: Ehrenamtsbörse", topics=("eifelleben",))
    await route(local(day(4), "12:00"), 1)
    # Saturday and Sunday: no slot at all.
    await check(day(5), {}, {})
    await check(day(6), {}, {})
    # The next Monday: Golf for the daily one, the whole week for the weekly one.
    await check(
        day(7),
        {Rhythm.daily: 1, Rhythm.weekly: 1},
        {
            DAILY: "Ihr Tagesüberblick: 1 Neuigkeit",
            WEEKLY: "Ihr Wochenüberblick: 5 Neuigkeiten, 1 Termin",
        },
    )

    names = {
        a: "Alpha: Mobilstation Bitburg",
        b: "Bravo: Vereinsplattform",
        c: "Charlie: Digitale Kümmerer",
        d: "Delta: Telemedizin in Prüm",
        e: "Echo: Strategie beschlossen",
        f: "Foxtrot: Rufbus fährt öfter",
        g: "Golf: Ehrenamtsbörse",
        x: "Xray: Digitalwerkstatt",
    }
    expected = {
        DAILY: [[a, b], [c], sorted([d, e, x]), [f], [g]],
        WEEKLY: [[a, b], sorted([c, d, e, f, g, x])],
    }
    assert await desk.digests() == expected
    for address, digests in expected.items():
        shown = [sorted(listed(m)) for m in briefings[address]]
        assert shown == [sorted(names[i] for i in ids) for ids in digests], address
        everything = [name for entries in shown for name in entries]
        assert sorted(everything) == sorted(names.values()), "each item in exactly one briefing"
        assert all(m["To"].addresses[0].addr_spec == address for m in briefings[address])
    assert await desk.queued() == []
    # The immediate subscriber got every item on its own and never a briefing.
    assert IMMEDIATE not in await desk.digests()
    # Only a first briefing says so; the later ones speak of the last one (issue 15, item 8).
    for address, label in ((DAILY, "Tagesüberblick"), (WEEKLY, "Wochenüberblick")):
        first, *later = [text_of(m) for m in briefings[address]]
        assert f"Ihr erster {label}" in first and "seit Ihrem letzten" not in first
        assert all("seit Ihrem letzten Überblick" in t and "erster" not in t for t in later)
    # A briefing with events carries them as termine.ics; one without carries nothing.
    files = [[p.get_filename() for p in m.walk() if p.get_filename()] for m in briefings[DAILY]]
    assert files == [[], [], ["termine.ics"], [], []]


# -- daylight-saving time -----------------------------------------------------------------------


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("friday", "monday"),
    [
        # Clocks go back on Sunday 2026-10-25: 07:00 is 05:00 UTC before, 06:00 UTC after.
        (_utc(2026, 10, 23, 5), _utc(2026, 10, 26, 6)),
        # Clocks go forward on Sunday 2026-03-29: 07:00 is 06:00 UTC before, 05:00 UTC after.
        (_utc(2026, 3, 27, 6), _utc(2026, 3, 30, 5)),
    ],
    ids=["autumn", "spring"],
)
def test_latest_slot_keeps_seven_oclock_berlin_across_dst(
    project: Project, friday: datetime, monday: datetime
) -> None:
    settings = project.settings
    daily = settings.briefings.trigger("daily", settings.scheduler.tz)
    weekly = settings.briefings.trigger("weekly", settings.scheduler.tz)
    second = timedelta(seconds=1)
    thursday = friday - timedelta(days=1)

    assert latest_slot(daily, thursday, friday - second) is None
    assert latest_slot(daily, thursday, friday) == friday
    assert friday.astimezone(BERLIN).strftime("%a %H:%M") == "Fri 07:00"
    # Saturday and Sunday have no slot; Monday's is at 07:00 local, i.e. the other UTC hour.
    assert latest_slot(daily, friday, monday - second) is None
    assert latest_slot(daily, friday, monday) == monday
    assert monday.astimezone(BERLIN).strftime("%a %H:%M") == "Mon 07:00"
    assert latest_slot(weekly, monday - timedelta(days=7), monday) == monday
    # Of several slots passed, the latest one.
    assert latest_slot(daily, thursday - timedelta(days=3), monday + timedelta(hours=5)) == monday


@pytest.mark.parametrize(("month", "hours_before", "hours_after"), [(10, 5, 6), (3, 6, 5)])
async def test_daily_briefing_fires_at_seven_local_around_the_next_dst_change(
    desk: Desk, month: int, hours_before: int, hours_after: int
) -> None:
    change = next_dst_change(month)
    friday, monday = change - timedelta(days=2), change + timedelta(days=1)
    assert local(friday, "07:00") == datetime.combine(friday, time(hours_before), tzinfo=UTC)
    assert local(monday, "07:00") == datetime.combine(monday, time(hours_after), tzinfo=UTC)

    assert await desk.briefings(local(friday, "06:00")) == {}
    await desk.announce("Vor der Zeitumstellung")
    await desk.release(local(friday, "06:30"))
    assert len(await desk.deliver(local(friday, "06:30"))) == 1  # to IMMEDIATE

    assert await desk.briefings(local(friday, "06:59:59")) == {}
    assert await desk.deliver(local(friday, "06:59:59")) == []
    assert await desk.briefings(local(friday, "07:00")) == {Rhythm.daily: 1}
    assert await desk.slot(DAILY_KEY) == local(friday, "07:00")
    sent = await desk.deliver(local(friday, "07:00"))
    assert [(to(m), m["Subject"]) for m in sent] == [(DAILY, "Ihr Tagesüberblick: 1 Neuigkeit")]
    assert parsedate_to_datetime(sent[0]["Date"]) == local(friday, "07:00")

    await desk.announce("Nach der Zeitumstellung")
    await desk.release(local(change, "12:00"))
    await desk.deliver(local(change, "12:00"))

    # 06:59:59 local on Monday is already past 07:00 at the old offset in autumn: no slot yet.
    assert await desk.briefings(local(monday, "06:59:59")) == {}
    assert await desk.deliver(local(monday, "06:59:59")) == []
    assert await desk.briefings(local(monday, "07:00")) == {Rhythm.daily: 1, Rhythm.weekly: 1}
    assert await desk.slot(DAILY_KEY) == local(monday, "07:00")
    sent = await desk.deliver(local(monday, "07:00"))
    assert sorted((to(m), m["Subject"]) for m in sent) == [
        (DAILY, "Ihr Tagesüberblick: 1 Neuigkeit"),
        (WEEKLY, "Ihr Wochenüberblick: 2 Neuigkeiten"),
    ]
    daily = next(m for m in sent if to(m) == DAILY)
    assert listed(daily) == ["Nach der Zeitumstellung"]


# -- missed slots -------------------------------------------------------------------------------


async def test_restart_within_grace_sends_one_briefing_for_the_missed_slots(desk: Desk) -> None:
    monday_slot = local(WEEK, "07:00")
    await desk.set_slot(DAILY_KEY, monday_slot)
    await desk.set_slot(WEEKLY_KEY, monday_slot)
    await desk.announce("Montagsmeldung")
    await desk.release(local(WEEK, "10:00"))
    await desk.announce("Dienstagsmeldung")
    await desk.release(local(day(1), "10:00"))
    await desk.deliver(local(day(1), "10:00"))

    # Down from Monday 10:00 until Wednesday 09:00: Tuesday's and Wednesday's slots were missed.
    restart = local(day(2), "09:00")
    assert await desk.briefings(restart) == {Rhythm.daily: 1}
    assert await desk.slot(DAILY_KEY) == local(day(2), "07:00")
    assert await desk.slot(WEEKLY_KEY) == monday_slot
    sent = await desk.deliver(restart)
    assert [(to(m), m["Subject"]) for m in sent] == [(DAILY, "Ihr Tagesüberblick: 2 Neuigkeiten")]
    assert listed(sent[0]) == ["Dienstagsmeldung", "Montagsmeldung"]

    for again in (restart, local(day(2), "09:00:01"), local(day(2), "18:30")):
        assert await desk.briefings(again) == {}
        assert await desk.deliver(again) == []
    assert [len(d) for d in (await desk.digests())[DAILY]] == [2]


async def test_restart_beyond_grace_keeps_the_items_for_the_next_briefing(desk: Desk) -> None:
    await desk.set_slot(DAILY_KEY, local(WEEK, "07:00"))
    await desk.set_slot(WEEKLY_KEY, local(WEEK, "07:00"))
    item = await desk.announce("Meldung während der Pause")
    await desk.release(local(WEEK, "10:00"))
    await desk.deliver(local(WEEK, "10:00"))

    # Wednesday 20:00 is 13 hours after Wednesday's 07:00 slot: grace (12 h) has passed.
    late = local(day(2), "20:00")
    assert await desk.briefings(late) == {}
    assert await desk.deliver(late) == []
    assert await desk.slot(DAILY_KEY) == local(day(2), "07:00")
    assert await desk.queued() == [(DAILY, item), (WEEKLY, item)]
    assert await desk.briefings(local(day(2), "23:00")) == {}

    assert await desk.briefings(local(day(3))) == {Rhythm.daily: 1}
    sent = await desk.deliver(local(day(3)))
    assert [(to(m), m["Subject"]) for m in sent] == [(DAILY, "Ihr Tagesüberblick: 1 Neuigkeit")]
    assert listed(sent[0]) == ["Meldung während der Pause"]
    assert await desk.queued() == [(WEEKLY, item)]


@pytest.mark.parametrize(("back_at", "sent"), [("19:00:00", True), ("19:00:01", False)])
async def test_grace_period_ends_exactly_twelve_hours_after_the_slot(
    desk: Desk, back_at: str, sent: bool
) -> None:
    await desk.set_slot(DAILY_KEY, local(WEEK, "07:00"))
    await desk.set_slot(WEEKLY_KEY, local(WEEK, "07:00"))
    await desk.announce("Meldung kurz vor Ablauf")
    await desk.release(local(WEEK, "10:00"))
    await desk.deliver(local(WEEK, "10:00"))

    at = local(day(1), back_at)  # Tuesday's slot was at 07:00; grace_hours = 12
    assert await desk.briefings(at) == ({Rhythm.daily: 1} if sent else {})
    got = [(to(m), m["Subject"]) for m in await desk.deliver(at)]
    assert got == ([(DAILY, "Ihr Tagesüberblick: 1 Neuigkeit")] if sent else [])


# -- important and cancelled announcements ------------------------------------------------------


async def test_important_announcement_bypasses_the_rhythm(desk: Desk) -> None:
    assert await desk.briefings(local(SUNDAY_BEFORE, "12:00")) == {}
    normal = await desk.announce("Newsletter-Archiv online")
    urgent = await desk.announce("Wichtig: Sitzung verlegt", important=True)
    assert await desk.release(local(SUNDAY_BEFORE, "18:00")) == [(normal, 3), (urgent, 3)]

    sent = await desk.deliver(local(SUNDAY_BEFORE, "18:00"))
    got = {k: sorted(m["Subject"] for m in v) for k, v in by_recipient(sent).items()}
    assert got == {
        IMMEDIATE: ["Newsletter-Archiv online", "Wichtig: Sitzung verlegt"],
        DAILY: ["Wichtig: Sitzung verlegt"],
        WEEKLY: ["Wichtig: Sitzung verlegt"],
    }
    assert "Text zu Wichtig: Sitzung verlegt." in text_of(by_recipient(sent)[DAILY][0])
    assert await desk.queued() == [(DAILY, normal), (WEEKLY, normal)]

    assert await desk.briefings(local(WEEK)) == {Rhythm.daily: 1, Rhythm.weekly: 1}
    briefs = await desk.deliver(local(WEEK))
    assert sorted((to(m), m["Subject"]) for m in briefs) == [
        (DAILY, "Ihr Tagesüberblick: 1 Neuigkeit"),
        (WEEKLY, "Ihr Wochenüberblick: 1 Neuigkeit"),
    ]
    for m in briefs:
        assert listed(m) == ["Newsletter-Archiv online"]
        assert "Sitzung verlegt" not in text_of(m)

    # An important item alone leaves nothing for the next briefing.
    await desk.announce("Wichtig: Server-Wartung", important=True)
    await desk.release(local(WEEK, "12:00"))
    sent = await desk.deliver(local(WEEK, "12:00"))
    assert sorted(to(m) for m in sent) == sorted([DAILY, IMMEDIATE, WEEKLY])
    assert await desk.briefings(local(day(1))) == {Rhythm.daily: 0}
    assert await desk.deliver(local(day(1))) == []


async def test_cancelled_announcement_is_left_out_of_the_briefing(desk: Desk) -> None:
    assert await desk.briefings(local(SUNDAY_BEFORE, "12:00")) == {}
    kept = await desk.announce("Bleibt: Fördermittel bewilligt")
    dropped = await desk.announce("Fällt weg: Infoabend")
    await desk.release(local(SUNDAY_BEFORE, "18:00"))

    code, output = await desk.cancel(dropped)
    assert code == 0 and f"Mitteilung Nr. {dropped} abgesagt" in output
    sent = await desk.deliver(local(SUNDAY_BEFORE, "18:00"))
    assert [(to(m), m["Subject"]) for m in sent] == [(IMMEDIATE, "Bleibt: Fördermittel bewilligt")]

    assert await desk.briefings(local(WEEK)) == {Rhythm.daily: 1, Rhythm.weekly: 1}
    briefs = await desk.deliver(local(WEEK))
    assert sorted(to(m) for m in briefs) == [DAILY, WEEKLY]
    for m in briefs:
        assert m["Subject"].endswith(": 1 Neuigkeit")
        assert listed(m) == ["Bleibt: Fördermittel bewilligt"]
        assert "Infoabend" not in text_of(m) and "Infoabend" not in html_of(m)
    assert await desk.digests() == {DAILY: [[kept]], WEEKLY: [[kept]]}
    assert await desk.queued() == []


async def test_announcement_waiting_only_in_briefings_can_still_be_cancelled(desk: Desk) -> None:
    """The immediate recipients have it already; the daily and weekly ones have not. Cancelling
    must still be possible and keep it out of their briefings."""
    assert await desk.briefings(local(SUNDAY_BEFORE, "12:00")) == {}
    await desk.announce("Bleibt: Fördermittel bewilligt")
    dropped = await desk.announce("Fällt weg: Infoabend")
    await desk.release(local(SUNDAY_BEFORE, "18:00"))
    assert len(await desk.deliver(local(SUNDAY_BEFORE, "18:00"))) == 2  # to IMMEDIATE
    assert (DAILY, dropped) in await desk.queued()

    code, output = await desk.cancel(dropped, ok=False)
    assert code == 0, f"cancel refused although two briefings still hold it: {output}"

    assert await desk.briefings(local(WEEK)) == {Rhythm.daily: 1, Rhythm.weekly: 1}
    for m in await desk.deliver(local(WEEK)):
        assert listed(m) == ["Bleibt: Fördermittel bewilligt"]


async def test_announcement_cancelled_after_its_briefing_was_built_is_not_delivered(
    desk: Desk,
) -> None:
    """Cancelled between building a briefing and sending it (SMTP slow or down): the briefing
    that goes out must not carry it."""
    assert await desk.briefings(local(SUNDAY_BEFORE, "12:00")) == {}
    await desk.announce("Bleibt: Fördermittel bewilligt")
    dropped = await desk.announce("Fällt weg: Infoabend")
    await desk.release(local(SUNDAY_BEFORE, "18:00"))
    assert await desk.briefings(local(WEEK)) == {Rhythm.daily: 1, Rhythm.weekly: 1}

    code, output = await desk.cancel(dropped)
    assert code == 0, output
    sent = await desk.deliver(local(WEEK))
    assert sorted(to(m) for m in sent) == sorted([DAILY, IMMEDIATE, WEEKLY])
    for m in sent:
        assert "Infoabend" not in text_of(m), (to(m), m["Subject"])


# -- content ------------------------------------------------------------------------------------


async def test_briefing_groups_items_by_topic_newest_first(desk: Desk) -> None:
    assert await desk.briefings(local(SUNDAY_BEFORE, "12:00")) == {}
    await desk.announce("Rufbus fährt öfter", topics=("mobilitaet",))
    await desk.announce("Ehrenamtsbörse startet", topics=("eifelleben",))
    await desk.announce("Mobilstation Prüm eröffnet", topics=("mobilitaet",))
    await desk.announce("Strategie und Verkehr", topics=("mobilitaet", "strategie"))
    await desk.announce("Für alle Themen")
    await desk.release(local(SUNDAY_BEFORE, "18:00"))

    assert await desk.briefings(local(WEEK)) == {Rhythm.daily: 1, Rhythm.weekly: 1}
    sent = by_recipient(await desk.deliver(local(WEEK)))
    brief = sent[DAILY][0]
    assert brief["Subject"] == "Ihr Tagesüberblick: 5 Neuigkeiten"
    text = text_of(brief)
    # Groups in the order of the topics in config.toml (an item under the first of its
    # topics), items without topics under "Allgemein" last; newest first within a group.
    expected = [
        "DIGITALE STRATEGIE",
        "* Strategie und Verkehr",
        "EIFELLEBEN",
        "* Ehrenamtsbörse startet",
        "MOBILITÄT",
        "* Mobilstation Prüm eröffnet",
        "* Rufbus fährt öfter",
        "ALLGEMEIN",
        "* Für alle Themen",
    ]
    positions = [text.find(line) for line in expected]
    assert -1 not in positions, text
    assert positions == sorted(positions), text
    assert "Guten Tag Tanja Täglich," in text
    assert "Text zu Rufbus fährt öfter." in text

    html = html_of(brief)
    headings = re.findall(r"<h2[^>]*>([^<]+)</h2>", html)
    assert headings == ["Digitale Strategie", "Eifelleben", "Mobilität", "Allgemein"]
    assert html.index("Mobilstation Prüm eröffnet") < html.index("Rufbus fährt öfter")
    assert sent[WEEKLY][0]["Subject"] == "Ihr Wochenüberblick: 5 Neuigkeiten"


async def test_two_checks_racing_for_a_slot_build_it_once(desk: Desk) -> None:
    """Two processes checking the same slot at once: one builds, the other does nothing."""
    counted = metrics.configure(None).registry  # this process's metrics, from zero
    assert await desk.briefings(local(SUNDAY_BEFORE, "12:00")) == {}
    await desk.announce("Einzige Meldung")
    await desk.release(local(SUNDAY_BEFORE, "18:00"))
    async with Database(desk.settings.database_url) as other:
        results = await asyncio.gather(
            desk.briefings(local(WEEK)), run_due_briefings(other, desk.settings, local(WEEK))
        )
    # Each rhythm's slot is built by exactly one of the two (which one may differ per rhythm).
    built = [(rhythm, count) for result in results for rhythm, count in result.items()]
    assert sorted(built) == [(Rhythm.daily, 1), (Rhythm.weekly, 1)]
    for rhythm in ("daily", "weekly"):  # counted once: by the check that built it
        labels = {"rhythm": rhythm}
        assert counted.get_sample_value("notifier_briefing_runs_total", labels) == 1
        assert counted.get_sample_value("notifier_briefings_built_total", labels) == 1
    async with desk.db.transaction() as session:
        assert await session.scalar(select(func.count()).select_from(Digest)) == 2
    sent = await desk.deliver(local(WEEK))
    assert sorted(to(m) for m in sent) == sorted([DAILY, IMMEDIATE, WEEKLY])
