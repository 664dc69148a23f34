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
import recurring_ical_events

from notifier.briefings import run_due_briefings, send_due_reminders
from notifier.config import Settings
from notifier.db import Database
from notifier.db.models import Item, ItemKind, ItemStatus
from notifier.delivery import Sender, SmtpTransport
from notifier.rendering import Renderer
from notifier.routing import release_due
from notifier.sources.poller import PollResult, SourcePoller

from .conftest import REPO, Project
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
                    },
                    {
                        "name": "bestand",
                        "url": server.url("/bestand.ics"),
                        "lookahead_days": 60,
                        "remind_days_before": [7, 1],
                        "timeout": 2,
                        "backfill": True,
                    },
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
        assert result.error and not result.error.startswith("news")  # named once, by the caller
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
    assert "letzter Fehler: HTTP 404" in listing
    assert (
        configured.cli("sources", "poll", "news").output.strip()
        == "news: 0 neu, 0 geändert, 0 abgesagt"
    )
    unknown = configured.cli("sources", "poll", "gibtsnicht", ok=False)
    assert unknown.exit_code == 1 and "keine Quelle" in unknown.output


def attached_calendar(mail: EmailMessage) -> icalendar.Calendar:
    attachment = next(mail.iter_attachments())
    assert attachment.get_content_type() == "text/calendar"
    calendar = icalendar.Calendar.from_ical(attachment.get_content())
    assert str(calendar["METHOD"]) == attachment.get_param("method")
    return calendar


def plain(mail: EmailMessage) -> str:
    return str(mail.get_body(("plain",)).get_content())


def subjects(mails: list[EmailMessage]) -> list[str]:
    return sorted({str(m["Subject"]) for m in mails})


async def test_example_calendar_series_is_one_mail_with_the_whole_series(world: World) -> None:
    """Issue 15, item 1: a new series is one e-mail (the rule in German words, exceptions named)
    with one .ics holding the whole series; a briefing lists it once."""
    routes = world.server.routes
    world.at("2026-12-01T09:00")
    await run_due_briefings(world.db, world.settings, world.now)  # the daily slots start now
    routes["/cal.ics"] = Route(body=ics())
    assert (await world.poll("termine")).error is None
    routes["/cal.ics"] = Route(body=(REPO / "examples" / "termine.ics").read_bytes())
    result = await world.poll("termine")
    assert (result.new, result.error) == (2, None)  # two series, each one item
    mails = await world.deliver()
    assert to(mails) == [
        "alle@kreis.example",
        "alle@kreis.example",
        "mobil@vg-pruem.example",
        "mobil@vg-pruem.example",
    ]
    assert subjects(mails) == [
        "Neue Terminreihe: Digitale Sprechstunde, donnerstags 9–10 Uhr, 7. Januar bis 25. März "
        "2027, außer am 4. Februar 2027",
        "Neue Terminreihe: Sprechstunde Digitale Kümmerer, dienstags 10–12 Uhr, ab 6. Januar 2026",
    ]
    mail = next(m for m in mails if "Digitale Sprechstunde" in m["Subject"])
    text = plain(mail)
    assert "Eine neue Terminreihe von" in text
    assert "Wann: donnerstags 9–10 Uhr, 7. Januar bis 25. März 2027, außer am 4. Februar" in text
    assert "alle Termine der Reihe" in text

    calendar = attached_calendar(mail)
    assert str(calendar["METHOD"]) == "PUBLISH"
    assert [str(tz["TZID"]) for tz in calendar.walk("VTIMEZONE")] == ["Europe/Berlin"]
    vevents = calendar.walk("VEVENT")
    assert {str(v["UID"]) for v in vevents} == {
        "beispiel-digitale-sprechstunde-2027@eifelkreis-verbindet.example"
    }
    master = next(v for v in vevents if "RECURRENCE-ID" not in v)
    assert master["RRULE"]["FREQ"] == ["WEEKLY"] and "EXDATE" in master
    # A calendar reading the attachment gets the whole series: 12 Thursdays, less the excluded
    # one, the override in the afternoon.
    occurrences = recurring_ical_events.of(calendar).between((2027, 1, 1), (2027, 4, 1))
    starts = sorted(o.decoded("DTSTART").astimezone(BERLIN) for o in occurrences)
    assert len(starts) == 11
    assert datetime(2027, 2, 4, 9, tzinfo=BERLIN) not in starts
    assert datetime(2027, 3, 11, 14, tzinfo=BERLIN) in starts

    # Tina (daily) gets the series once in her briefing, said by its rule.
    world.at("2026-12-02T07:05")
    await run_due_briefings(world.db, world.settings, world.now)
    briefing = [
        m
        for m in await world.deliver()
        if to([m]) == ["taeglich@bitburg.example"] and "überblick" in m["Subject"]
    ]
    assert len(briefing) == 1
    briefing_text = plain(briefing[0])
    assert briefing_text.count("* Digitale Sprechstunde") == 1
    assert "donnerstags 9–10 Uhr, 7. Januar bis 25. März 2027" in briefing_text
    assert briefing[0]["Subject"] == "Ihr Tagesüberblick: 2 Termine"


def daily_series(*extra: str) -> str:
    return vevent(
        "buerger@test",
        "20261210T100000",
        "20261210T120000",
        "Bürgersprechtag",
        "RRULE:FREQ=DAILY;COUNT=5",
        "LOCATION:Rathaus Bitburg",
        *extra,
    )


async def test_series_reminds_its_next_occurrence_and_tells_occurrence_and_series_notices(
    world: World,
) -> None:
    """Issue 15, item 1: reminders only for the series' next occurrence (remind_series = next);
    a cancelled occurrence is one notice with its RECURRENCE-ID; a cancelled series one notice;
    a series that comes back "findet doch statt"."""
    routes = world.server.routes
    world.at("2026-12-01T09:00")
    routes["/cal.ics"] = Route(body=ics())
    await world.poll("termine")
    routes["/cal.ics"] = Route(body=ics(daily_series()))
    assert (await world.poll("termine")).new == 1
    announced = await world.deliver()
    assert subjects(announced) == [
        "Neue Terminreihe: Bürgersprechtag, täglich 10–12 Uhr, 10. bis 14. Dezember 2026"
    ]
    assert len(announced) == 2

    world.at("2026-12-03T10:30")  # seven days before the first
    first = await world.deliver()
    assert subjects(first) == ["Erinnerung: Bürgersprechtag (in 7 Tagen, 10. Dezember 2026)"]
    assert len(first) == 3  # to everyone it is meant for, Tina (daily) included
    world.at("2026-12-05T10:30")  # seven days before the 12th: not the next occurrence
    assert await world.deliver() == []
    world.at("2026-12-09T10:30")
    assert subjects(await world.deliver()) == [
        "Erinnerung: Bürgersprechtag (morgen, 10. Dezember 2026)"
    ]
    world.at("2026-12-10T10:30")  # the first has begun: the 11th is next
    assert subjects(await world.deliver()) == [
        "Erinnerung: Bürgersprechtag (morgen, 11. Dezember 2026)"
    ]

    # The 12th is called off (EXDATE): one notice for that occurrence, to those told.
    routes["/cal.ics"] = Route(body=ics(daily_series("EXDATE;TZID=Europe/Berlin:20261212T100000")))
    assert (await world.poll("termine")).cancelled == 1
    cancelled = await world.deliver()
    assert to(cancelled) == ["alle@kreis.example", "mobil@vg-pruem.example"]
    assert subjects(cancelled) == ["Abgesagt: Bürgersprechtag am 12. Dezember 2026"]
    calendar = attached_calendar(cancelled[0])
    assert str(calendar["METHOD"]) == "CANCEL"
    (occurrence,) = calendar.walk("VEVENT")
    assert str(occurrence["UID"]) == "buerger@test"
    assert occurrence.decoded("RECURRENCE-ID") == datetime(2026, 12, 12, 9, tzinfo=UTC)

    # The whole series is cancelled: one notice, not one per occurrence.
    routes["/cal.ics"] = Route(
        body=ics(daily_series("EXDATE;TZID=Europe/Berlin:20261212T100000", "STATUS:CANCELLED"))
    )
    await world.poll("termine")
    series_cancelled = await world.deliver()
    assert to(series_cancelled) == ["alle@kreis.example", "mobil@vg-pruem.example"]
    assert subjects(series_cancelled) == ["Abgesagt: Terminreihe Bürgersprechtag"]
    assert "Diese Terminreihe wurde abgesagt." in plain(series_cancelled[0])
    calendar = attached_calendar(series_cancelled[0])
    (master,) = calendar.walk("VEVENT")
    assert (str(calendar["METHOD"]), str(master["STATUS"])) == ("CANCEL", "CANCELLED")
    assert "RRULE" in master and "RECURRENCE-ID" not in master
    world.at("2026-12-10T17:00")  # a cancelled series is reminded of no more
    assert await world.deliver() == []

    # It takes place after all: "findet doch statt" to those who got the cancellation.
    routes["/cal.ics"] = Route(body=ics(daily_series("EXDATE;TZID=Europe/Berlin:20261212T100000")))
    await world.poll("termine")
    back = await world.deliver()
    assert to(back) == ["alle@kreis.example", "mobil@vg-pruem.example"]
    assert subjects(back) == ["Findet doch statt: Terminreihe Bürgersprechtag"]
    calendar = attached_calendar(back[0])
    assert str(calendar["METHOD"]) == "PUBLISH"
    sequences = {int(v["SEQUENCE"]) for v in calendar.walk("VEVENT")}
    assert sequences == {2}  # cancellation 1, back 2

    # The series itself moves an hour later: one notice for the series, saying how.
    later = daily_series("EXDATE;TZID=Europe/Berlin:20261212T100000")
    later = later.replace("T100000\r\n", "T110000\r\n").replace("T120000", "T130000")
    routes["/cal.ics"] = Route(body=ics(later))
    await world.poll("termine")
    moved = await world.deliver()
    assert to(moved) == ["alle@kreis.example", "mobil@vg-pruem.example"]
    assert subjects(moved) == ["Geändert: Terminreihe Bürgersprechtag"]
    assert (
        "- Terminreihe: neu täglich 11–13 Uhr, 10. bis 14. Dezember 2026, außer am 12. Dezember "
        "2026 (bisher täglich 10–12 Uhr, 10. bis 14. Dezember 2026, außer am 12. Dezember 2026)"
    ) in plain(moved[0])
    calendar = attached_calendar(moved[0])
    (master,) = calendar.walk("VEVENT")
    assert master.decoded("DTSTART") == datetime(2026, 12, 10, 11, tzinfo=BERLIN)
    assert int(master["SEQUENCE"]) == 3


BEIRAT = vevent(
    "beirat@test",
    "20261220T140000",
    "20261220T160000",
    "Smart-City-Beirat",
    "LOCATION:Kreisverwaltung Bitburg",
)
WORKSHOP = vevent("workshop@test", "20261217T090000", "20261217T120000", "Workshop HeimatApp")


async def announced(world: World, *events: str) -> None:
    """An empty first poll, then ``events`` announced to Anna and Max."""
    world.at("2026-12-01T09:00")
    world.server.routes["/cal.ics"] = Route(body=ics())
    await world.poll("termine")
    world.server.routes["/cal.ics"] = Route(body=ics(*events))
    await world.poll("termine")
    assert len(await world.deliver()) == 2 * len(events)


async def test_change_notice_says_what_changed(world: World) -> None:
    """Issue 15, item 2: the fields that changed, old and new; the subject says where to."""
    await announced(world, BEIRAT)
    moved = vevent(
        "beirat@test",
        "20270114T150000",
        "20270114T170000",
        "Smart-City-Beirat",
        "LOCATION:Rathaus Prüm",
    )
    world.server.routes["/cal.ics"] = Route(body=ics(moved))
    assert (await world.poll("termine")).changed == 1
    changed = await world.deliver()
    assert to(changed) == ["alle@kreis.example", "mobil@vg-pruem.example"]
    assert subjects(changed) == ["Verschoben: Smart-City-Beirat auf 14. Januar 2027"]
    text = plain(changed[0])
    assert "Dieser Termin hat sich geändert:" in text
    assert "- Datum: neu Donnerstag, 14. Januar 2027 (bisher Sonntag, 20. Dezember 2026)" in text
    assert "- Beginn: neu 15:00 Uhr (bisher 14:00 Uhr)" in text
    assert "- Ort: neu Rathaus Prüm (bisher Kreisverwaltung Bitburg)" in text
    html = str(changed[0].get_body(("html",)).get_content())
    assert "<li>Beginn: neu 15:00 Uhr (bisher 14:00 Uhr)</li>" in html
    calendar = attached_calendar(changed[0])
    assert (str(calendar["METHOD"]), int(calendar.walk("VEVENT")[0]["SEQUENCE"])) == ("PUBLISH", 1)

    # Only the place: "Neuer Ort".
    world.server.routes["/cal.ics"] = Route(body=ics(moved.replace("Rathaus Prüm", "Haus Beda")))
    await world.poll("termine")
    place = await world.deliver()
    assert subjects(place) == ["Neuer Ort: Smart-City-Beirat am 14. Januar 2027"]
    assert "- Ort: neu Haus Beda (bisher Rathaus Prüm)" in plain(place[0])


async def test_event_postponed_beyond_the_window_is_a_change(world: World) -> None:
    """Issue 15, item 5: postponed beyond lookahead_days (60) is a change, not a cancellation;
    a cancellation out there is still told."""
    await announced(world, BEIRAT, WORKSHOP)
    postponed = BEIRAT.replace("20261220T", "20270310T")
    world.server.routes["/cal.ics"] = Route(body=ics(postponed, WORKSHOP))
    result = await world.poll("termine")
    assert (result.changed, result.cancelled) == (1, 0)
    later = await world.deliver()
    assert to(later) == ["alle@kreis.example", "mobil@vg-pruem.example"]
    assert subjects(later) == ["Verschoben: Smart-City-Beirat auf 10. März 2027"]
    assert str(attached_calendar(later[0])["METHOD"]) == "PUBLISH"

    cancelled = postponed.replace("END:VEVENT", "STATUS:CANCELLED\r\nEND:VEVENT")
    world.server.routes["/cal.ics"] = Route(body=ics(cancelled, WORKSHOP))
    assert (await world.poll("termine")).cancelled == 1
    told = await world.deliver()
    assert subjects(told) == ["Abgesagt: Smart-City-Beirat am 10. März 2027"]
    assert str(attached_calendar(told[0])["METHOD"]) == "CANCEL"


async def test_cancelled_or_removed_event_that_comes_back_is_told(world: World) -> None:
    """Issue 15, item 4: "Findet doch statt" with a PUBLISH .ics (a newer SEQUENCE) to those who
    got the cancellation, for a cancelled and for a removed event."""
    await announced(world, BEIRAT, WORKSHOP)
    routes = world.server.routes
    routes["/cal.ics"] = Route(
        body=ics(BEIRAT.replace("END:VEVENT", "STATUS:CANCELLED\r\nEND:VEVENT"), WORKSHOP)
    )
    assert (await world.poll("termine")).cancelled == 1
    cancelled = await world.deliver()
    assert subjects(cancelled) == ["Abgesagt: Smart-City-Beirat am 20. Dezember 2026"]
    cancel_sequence = int(attached_calendar(cancelled[0]).walk("VEVENT")[0]["SEQUENCE"])

    routes["/cal.ics"] = Route(body=ics(BEIRAT, WORKSHOP))
    assert (await world.poll("termine")).changed == 1
    back = await world.deliver()
    assert to(back) == ["alle@kreis.example", "mobil@vg-pruem.example"]
    assert subjects(back) == ["Findet doch statt: Smart-City-Beirat am 20. Dezember 2026"]
    assert "Dieser Termin findet doch statt" in plain(back[0])
    calendar = attached_calendar(back[0])
    assert str(calendar["METHOD"]) == "PUBLISH"
    assert int(calendar.walk("VEVENT")[0]["SEQUENCE"]) > cancel_sequence

    # Removed from the calendar (a cancellation), then back.
    routes["/cal.ics"] = Route(body=ics(BEIRAT))
    assert (await world.poll("termine")).cancelled == 1
    assert subjects(await world.deliver()) == ["Abgesagt: Workshop HeimatApp am 17. Dezember 2026"]
    routes["/cal.ics"] = Route(body=ics(BEIRAT, WORKSHOP))
    await world.poll("termine")
    assert subjects(await world.deliver()) == [
        "Findet doch statt: Workshop HeimatApp am 17. Dezember 2026"
    ]
    # Once back, it is reminded like any other event.
    world.at("2026-12-16T09:30")
    assert subjects(await world.deliver()) == [
        "Erinnerung: Workshop HeimatApp (morgen, 17. Dezember 2026)"
    ]


async def test_backfilled_calendar_announces_what_it_holds(world: World) -> None:
    """Issue 15, item 3: backfill = true announces what the calendar holds at its first poll."""
    world.at("2026-12-01T09:00")
    world.server.routes["/bestand.ics"] = Route(
        body=ics(vevent("bestand@test", "20261220T170000", "20261220T190000", "Beiratssitzung"))
    )
    assert (await world.poll("bestand")).new == 1
    announced = await world.deliver()
    assert to(announced) == ["alle@kreis.example", "mobil@vg-pruem.example"]
    assert subjects(announced) == ["Termin: Beiratssitzung am 20. Dezember 2026"]


async def test_reminders_reach_everyone_meant_at_reminder_time(world: World) -> None:
    """Issue 15, item 3: someone who subscribed after the announcement is reminded too."""
    await announced(world, BEIRAT)
    world.at("2026-12-08T09:00")
    later = (
        "email,name,role,organisation,topics,rhythm\n"
        "neu@pruem.example,Nora Neu,staff,Prüm,,immediate\n"
    )
    world.project.cli("subscribers", "import", world.project.write("neu.csv", later))
    world.at("2026-12-13T14:01")
    reminders = await world.deliver()
    assert subjects(reminders) == ["Erinnerung: Smart-City-Beirat (in 7 Tagen, 20. Dezember 2026)"]
    assert to(reminders) == [
        "alle@kreis.example",
        "mobil@vg-pruem.example",
        "neu@pruem.example",
        "taeglich@bitburg.example",
    ]


async def test_occurrences_told_one_by_one_before_are_not_announced_again_as_a_series(
    world: World,
) -> None:
    """After the upgrade, a series whose occurrences were announced one by one (before series
    were items) is recorded, not announced a second time."""
    world.at("2026-12-01T09:00")
    world.server.routes["/cal.ics"] = Route(body=ics())
    await world.poll("termine")
    async with world.db.transaction() as session:
        session.add(
            Item(
                kind=ItemKind.event,
                subject="Bürgersprechtag",
                body="",
                send_at=world.now,
                status=ItemStatus.routed,
                routed_at=world.now,
                created_at=world.now,
                created_by="source:termine",
                source="termine",
                external_key="buerger@test@20261210T090000Z",
                starts_at=datetime(2026, 12, 10, 9, tzinfo=UTC),
                ends_at=datetime(2026, 12, 10, 11, tzinfo=UTC),
            )
        )
    world.server.routes["/cal.ics"] = Route(body=ics(daily_series()))
    assert (await world.poll("termine")).error is None
    assert await world.deliver() == []
