"""Sources end to end: a real HTTP server serves a feed and a calendar whose content the test
changes between polls; time comes from an injected clock; assertions are on the e-mails a real
SMTP server received."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from zoneinfo import ZoneInfo

import httpx
import icalendar
import pytest

from notifier.briefings import send_due_reminders
from notifier.config import Settings
from notifier.db import Database
from notifier.delivery import Sender, SmtpTransport
from notifier.rendering import Renderer
from notifier.routing import release_due
from notifier.sources.poller import PollResult, SourcePoller

from .conftest import Project
from .httpserver import FeedServer, Route

BERLIN = ZoneInfo("Europe/Berlin")
PEOPLE = """email,name,role,organisation,topics,rhythm
alle@kreis.example,Anna Alle,staff,07232,,immediate
mobil@vg-pruem.example,Max Mobil,mayor,Verbandsgemeinde Prüm,mobilitaet,immediate
taeglich@bitburg.example,Tina Täglich,staff,Bitburg,,daily
"""


def rss(*items: tuple[str, str, str, str]) -> bytes:
    body = "".join(
        f"<item><title>{title}</title><link>https://example.org/{guid}</link>"
        f"<guid isPermaLink='false'>{guid}</guid><category>{category}</category>"
        f"<pubDate>Tue, 01 Dec 2026 08:00:00 +0100</pubDate>"
        f"<description><![CDATA[<p>{summary}</p>]]></description></item>"
        for guid, title, category, summary in items
    )
    return (
        "<?xml version='1.0' encoding='utf-8'?><rss version='2.0'><channel><title>News</title>"
        f"<link>https://example.org/</link><description>x</description>{body}</channel></rss>"
    ).encode()


def ics(*events: str) -> bytes:
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Test//DE\r\n"
        + "".join(events)
        + "END:VCALENDAR\r\n"
    ).encode()


def vevent(uid: str, start: str, end: str, summary: str, *extra: str) -> str:
    lines = [
        "BEGIN:VEVENT",
        f"UID:{uid}",
        "DTSTAMP:20261101T000000Z",
        f"DTSTART;TZID=Europe/Berlin:{start}",
        f"DTEND;TZID=Europe/Berlin:{end}",
        f"SUMMARY:{summary}",
        *extra,
        "END:VEVENT",
    ]
    return "\r\n".join(lines) + "\r\n"


@dataclass
class World:
    project: Project
    server: FeedServer
    settings: Settings
    db: Database
    poller: SourcePoller
    sender: Sender
    now: datetime

    def clock(self) -> datetime:
        return self.now

    def at(self, local: str) -> None:
        self.now = datetime.fromisoformat(local).replace(tzinfo=BERLIN).astimezone(UTC)

    async def poll(self, name: str) -> PollResult:
        source = next(s for s in self.settings.sources.all if s.name == name)
        return await self.poller.poll(source)

    async def deliver(self) -> list[EmailMessage]:
        """Route, remind and send everything due now; return the messages that arrived."""
        before = len(self.project.smtp.messages())
        await release_due(self.db, self.now)
        await send_due_reminders(self.db, self.settings, self.now)
        handled = 1
        while handled:  # drain the outbox
            handled = await self.sender.run_once()
        return [m.message for m in self.project.smtp.messages()[before:]]


@pytest.fixture
def configured(project: Project, server: FeedServer) -> Project:
    project.write_config(
        {
            "sources": {
                "feed": [
                    {
                        "name": "news",
                        "url": server.url("/feed.xml"),
                        "timeout": 2,
                        "max_bytes": 200_000,
                        "categories": {"Mobilität": "mobilitaet"},
                    }
                ],
                "calendar": [
                    {
                        "name": "termine",
                        "url": server.url("/cal.ics"),
                        "lookahead_days": 60,
                        "remind_days_before": [7, 1],
                        "timeout": 2,
                    }
                ],
            }
        }
    )
    project.seed(project.write("people.csv", PEOPLE))
    return project


@pytest.fixture
async def world(configured: Project, server: FeedServer) -> AsyncIterator[World]:
    settings = configured.settings
    async with Database(settings.database_url) as db, httpx.AsyncClient(trust_env=False) as client:
        holder: list[World] = []

        def clock() -> datetime:
            return holder[0].now

        world = World(
            configured,
            server,
            settings,
            db,
            SourcePoller(db, settings, client, clock),
            Sender(db, settings, Renderer(settings), lambda: SmtpTransport(settings.smtp), clock),
            datetime(2026, 12, 1, 8, tzinfo=UTC),
        )
        holder.append(world)
        yield world
        await world.sender.close()


def to(messages: list[EmailMessage]) -> list[str]:
    return sorted(str(m["To"].addresses[0].addr_spec) for m in messages)


async def test_feed_entries_become_update_mails(world: World) -> None:
    world.at("2026-12-01T09:00")
    world.server.routes["/feed.xml"] = Route(
        body=rss(("a", "Alte Nachricht", "Strategie", "schon da")), etag='"1"'
    )
    first = await world.poll("news")
    assert (first.new, first.error) == (1, None)
    assert await world.deliver() == [], "the first poll only records what is there"

    world.server.routes["/feed.xml"] = Route(
        body=rss(
            ("a", "Alte Nachricht (korrigiert)", "Strategie", "schon da"),
            (
                "b",
                "Neue Mobilitätsstation in Prüm",
                "Mobilität",
                "Mit <b>Leihrädern</b> &amp; Bus.",
            ),
        ),
        etag='"2"',
    )
    second = await world.poll("news")
    assert (second.new, second.changed) == (1, 1)
    mails = await world.deliver()
    # Topic mobilitaet: Anna (all topics) and Max (mobilitaet), both immediate; Tina is daily.
    assert to(mails) == ["alle@kreis.example", "mobil@vg-pruem.example"]
    mail = mails[0]
    assert mail["Subject"] == "Neue Mobilitätsstation in Prüm"
    text = mail.get_body(("plain",)).get_content()
    assert "Mit Leihrädern & Bus." in text and "https://example.org/b" in text
    html = mail.get_body(("html",)).get_content()
    assert 'href="https://example.org/b"' in html and "<b>Leihrädern" not in html

    # Unchanged: the server answers 304 to the conditional request.
    assert (await world.poll("news")).not_modified
    assert world.server.seen[-1].headers.get("if-none-match") == '"2"'
    # Failures are recorded and change nothing; afterwards nothing is sent again.
    for broken in (
        Route(status=500, body=b"kaputt"),
        Route(body=b"\x00\x01 kein XML"),
        Route(stream=10_000_000),
    ):
        world.server.routes["/feed.xml"] = broken
        result = await world.poll("news")
        assert result.error and "news" in result.error
    world.server.routes["/feed.xml"] = Route(
        body=rss(
            ("a", "Alte Nachricht (korrigiert)", "Strategie", "schon da"),
            (
                "b",
                "Neue Mobilitätsstation in Prüm",
                "Mobilität",
                "Mit <b>Leihrädern</b> &amp; Bus.",
            ),
        ),
        etag='"3"',
    )
    again = await world.poll("news")
    assert (again.new, again.changed, again.error) == (0, 0, None)
    assert await world.deliver() == []


async def test_calendar_events_reminders_changes_and_cancellations(world: World) -> None:
    routes = world.server.routes
    world.at("2026-12-01T09:00")
    routes["/cal.ics"] = Route(body=ics())
    assert (await world.poll("termine")).error is None  # first poll: an empty calendar

    beirat = vevent(
        "beirat@test",
        "20261220T170000",
        "20261220T190000",
        "Smart-City-Beirat",
        "LOCATION:Kreisverwaltung Bitburg",
    )
    sprechstunde = vevent(
        "sprech@test",
        "20261215T100000",
        "20261215T120000",
        "Sprechstunde Digitale Kümmerer",
        "RRULE:FREQ=WEEKLY;COUNT=2",
        "LOCATION:Rathaus Prüm",
    )
    routes["/cal.ics"] = Route(body=ics(beirat, sprechstunde))
    assert (await world.poll("termine")).new == 2  # the Beirat and the series (one item)
    mails = await world.deliver()
    # One mail per event: the Beirat and the series, each to Anna and Max.
    assert len(mails) == 4 and set(to(mails)) == {"alle@kreis.example"} | {"mobil@vg-pruem.example"}
    assert sorted({m["Subject"] for m in mails}) == [
        "Neue Terminreihe: Sprechstunde Digitale Kümmerer, dienstags 10–12 Uhr, "
        "15. bis 22. Dezember 2026",
        "Termin: Smart-City-Beirat am 20. Dezember 2026",
    ]
    beirat_mail = next(
        m
        for m in mails
        if "Beirat" in m["Subject"] and m["To"].addresses[0].addr_spec == "alle@kreis.example"
    )
    assert beirat_mail["Subject"] == "Termin: Smart-City-Beirat am 20. Dezember 2026"
    text = beirat_mail.get_body(("plain",)).get_content()
    assert "Sonntag, 20. Dezember 2026, 17:00 bis 19:00 Uhr" in text
    assert "Kreisverwaltung Bitburg" in text
    attachment = next(beirat_mail.iter_attachments())
    assert attachment.get_content_type() == "text/calendar"
    assert attachment.get_param("method") == "PUBLISH"
    cal = icalendar.Calendar.from_ical(attachment.get_content())
    event = next(iter(cal.walk("VEVENT")))
    assert event.decoded("DTSTART") == datetime(2026, 12, 20, 16, tzinfo=UTC)
    assert str(cal["METHOD"]) == "PUBLISH"

    # Seven days before the Beirat: one reminder to each it is meant for (Tina on a daily
    # briefing, not told yet, too), once.
    world.at("2026-12-13T17:01")
    reminders = await world.deliver()
    subjects = sorted({m["Subject"] for m in reminders})
    assert "Erinnerung: Smart-City-Beirat (in 7 Tagen, 20. Dezember 2026)" in subjects
    beirat_reminders = [m for m in reminders if "Beirat" in m["Subject"]]
    assert to(beirat_reminders) == [
        "alle@kreis.example",
        "mobil@vg-pruem.example",
        "taeglich@bitburg.example",
    ]
    assert (
        "Erinnerung: Sprechstunde Digitale Kümmerer (in 7 Tagen, 22. Dezember 2026)" not in subjects
    )
    world.at("2026-12-13T17:30")
    assert [m["Subject"] for m in await world.deliver()] == []

    # The first Sprechstunde moves to the afternoon: a change notice for that occurrence to
    # those told about the series, saying what changed.
    moved = sprechstunde + vevent(
        "sprech@test",
        "20261215T140000",
        "20261215T160000",
        "Sprechstunde Digitale Kümmerer",
        "RECURRENCE-ID;TZID=Europe/Berlin:20261215T100000",
        "LOCATION:Rathaus Prüm",
    )
    routes["/cal.ics"] = Route(body=ics(beirat, moved))
    assert (await world.poll("termine")).changed == 1
    changed = await world.deliver()
    assert to(changed) == ["alle@kreis.example", "mobil@vg-pruem.example"]
    assert {m["Subject"] for m in changed} == {
        "Verschoben: Sprechstunde Digitale Kümmerer am 15. Dezember 2026 auf 14:00 Uhr"
    }
    changed_text = changed[0].get_body(("plain",)).get_content()
    assert "14:00 bis 16:00 Uhr" in changed_text
    assert "Beginn: neu 14:00 Uhr (bisher 10:00 Uhr)" in changed_text
    assert "Ende: neu 16:00 Uhr (bisher 12:00 Uhr)" in changed_text
    occurrence = icalendar.Calendar.from_ical(
        next(changed[0].iter_attachments()).get_content()
    ).walk("VEVENT")[0]
    assert str(occurrence["UID"]) == "sprech@test"
    assert occurrence.decoded("RECURRENCE-ID") == datetime(2026, 12, 15, 9, tzinfo=UTC)

    # The Beirat is cancelled: a cancellation with METHOD:CANCEL.
    cancelled_beirat = beirat.replace("END:VEVENT", "STATUS:CANCELLED\r\nEND:VEVENT")
    routes["/cal.ics"] = Route(body=ics(cancelled_beirat, moved))
    assert (await world.poll("termine")).cancelled == 1
    cancelled = await world.deliver()
    assert {m["Subject"] for m in cancelled} == {"Abgesagt: Smart-City-Beirat am 20. Dezember 2026"}
    assert len(cancelled) == 2
    assert next(cancelled[0].iter_attachments()).get_param("method") == "CANCEL"

    # The second Sprechstunde vanishes from the calendar: cancelled as well.
    without_second = moved.replace(
        "RRULE:FREQ=WEEKLY;COUNT=2",
        "RRULE:FREQ=WEEKLY;COUNT=2\r\nEXDATE;TZID=Europe/Berlin:20261222T100000",
        1,
    )
    routes["/cal.ics"] = Route(body=ics(cancelled_beirat, without_second))
    assert (await world.poll("termine")).cancelled == 1
    vanished = await world.deliver()
    assert {m["Subject"] for m in vanished} == {
        "Abgesagt: Sprechstunde Digitale Kümmerer am 22. Dezember 2026"
    }

    # Tina (daily) was told nothing yet: no change or cancellation notices for her (only the
    # reminder), and the cancelled events are gone from her next briefing's queue.
    everything = [m.message for m in world.project.smtp.messages()]
    tina = [m["Subject"] for m in everything if to([m]) == ["taeglich@bitburg.example"]]
    assert tina == ["Erinnerung: Smart-City-Beirat (in 7 Tagen, 20. Dezember 2026)"]


async def test_late_discovered_event_gets_no_stale_reminder(world: World) -> None:
    world.at("2026-12-01T09:00")
    world.server.routes["/cal.ics"] = Route(body=ics())
    await world.poll("termine")
    world.at("2026-12-18T09:00")  # two days before: the 7-day reminder time has passed
    world.server.routes["/cal.ics"] = Route(
        body=ics(vevent("spaet@test", "20261220T170000", "20261220T190000", "Kurzfristig"))
    )
    await world.poll("termine")
    first = await world.deliver()
    assert {m["Subject"] for m in first} == {"Termin: Kurzfristig am 20. Dezember 2026"}
    world.at("2026-12-19T17:30")
    second = await world.deliver()
    assert {m["Subject"] for m in second} == {"Erinnerung: Kurzfristig (morgen, 20. Dezember 2026)"}


def test_sources_cli_lists_and_polls(configured: Project, server: FeedServer) -> None:
    server.routes["/feed.xml"] = Route(body=rss(("a", "Eins", "Strategie", "x")))
    server.routes["/cal.ics"] = Route(status=404)
    listing = configured.cli("sources").output
    assert "news (feed, alle 15 min): 0 Einträge, letzter Abruf nie" in listing
    polled = configured.cli("sources", "poll", ok=False)
    assert polled.exit_code == 1
    assert "news: 1 neu" in polled.output and "termine: Fehler:" in polled.output
    listing = configured.cli("sources", "list").output
    assert "news (feed, alle 15 min): 1 Einträge" in listing
    assert "letzter Fehler: termine: HTTP 404" in listing
    assert (
        configured.cli("sources", "poll", "news").output.strip()
        == "news: 0 neu, 0 geändert, 0 abgesagt"
    )
    unknown = configured.cli("sources", "poll", "gibtsnicht", ok=False)
    assert unknown.exit_code == 1 and "keine Quelle" in unknown.output
