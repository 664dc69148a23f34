"""The whole service on its embedded defaults (built-in mail catcher), with sources configured and
time taken from an injected clock: immediate notices, reminders with .ics attachments, and a daily
and a weekly briefing, each exactly once."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from notifier.catcher import CaughtMail, MailStore
from notifier.service import Service

from .conftest import REPO, Project

BERLIN = ZoneInfo("Europe/Berlin")
PEOPLE = """email,name,role,organisation,topics,rhythm
sofort@kreis.example,Sofia Sofort,staff,07232,,immediate
taeglich@vg-pruem.example,Tim Täglich,mayor,Verbandsgemeinde Prüm,,daily
woechentlich@bitburg.example,Wilma Woche,staff,Bitburg,,weekly
"""
NEW_ENTRY = """    <item>
      <title>Mobilitätsstationen: Standorte beschlossen</title>
      <link>https://www.eifelkreis-verbindet.de/mobilitaet/</link>
      <guid isPermaLink="false">beispiel-mobilitaetsstationen</guid>
      <category>Mobilität</category>
      <pubDate>Sat, 05 Dec 2026 10:00:00 +0100</pubDate>
      <description>Der Kreistag hat die ersten Standorte beschlossen.</description>
    </item>
  </channel>"""
NEW_EVENT = """BEGIN:VEVENT
UID:workshop-heimatapp@test
DTSTAMP:20261201T000000Z
DTSTART;TZID=Europe/Berlin:20261215T180000
DTEND;TZID=Europe/Berlin:20261215T200000
SUMMARY:Workshop Digitale HeimatApp
LOCATION:Bürgerhaus Kyllburg
END:VEVENT
END:VCALENDAR"""


class Clock:
    def __init__(self, local: str) -> None:
        self.set(local)

    def set(self, local: str) -> None:
        self.now = datetime.fromisoformat(local).replace(tzinfo=BERLIN).astimezone(UTC)

    def __call__(self) -> datetime:
        return self.now


async def until(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def mails_to(store: MailStore, address: str) -> list[CaughtMail]:
    return [m for m in store.list() if address in m.rcpt_tos]


@pytest.fixture
def embedded(project: Project) -> tuple[Project, Path, Path]:
    """Catcher on, sources on local copies of examples/, subscribers on all three rhythms."""
    feed = Path(shutil.copy(REPO / "examples" / "news.xml", project.root / "news.xml"))
    calendar = Path(shutil.copy(REPO / "examples" / "termine.ics", project.root / "termine.ics"))
    project.write_config(
        {
            "smtp": {"catcher": True},
            "catcher": {"port": 0, "directory": "var/mails"},
            "scheduler": {"poll_seconds": 0.1},
            "delivery": {"idle_poll_seconds": 0.1},
            # Jumps of the clock below must not count as briefings missed within the grace.
            "briefings": {"grace_hours": 0.5},
            "sources": {
                "feed": [
                    {
                        "name": "news",
                        "url": str(feed),
                        "poll_minutes": 0.005,
                        "categories": {"Mobilität": "mobilitaet"},
                    }
                ],
                "calendar": [
                    {
                        "name": "termine",
                        "url": str(calendar),
                        "poll_minutes": 0.005,
                        "remind_days_before": [7, 1],
                        "lookahead_days": 30,
                    }
                ],
            },
        }
    )
    project.seed(project.write("people.csv", PEOPLE))
    return project, feed, calendar


async def test_embedded_service_with_sources_and_briefings(
    embedded: tuple[Project, Path, Path],
) -> None:
    project, feed, calendar = embedded
    settings = project.settings
    store = MailStore(settings.path("var/mails"))
    clock = Clock("2026-12-02T12:00")  # a Wednesday
    service = Service(settings, clock=clock)
    task = asyncio.create_task(service.run(install_signal_handlers=False))
    try:
        await asyncio.wait_for(service.ready.wait(), 20)
        # First polls only record what the sources already hold.
        await asyncio.sleep(1.0)
        assert store.list() == []

        feed.write_text(feed.read_text("utf-8").replace("  </channel>", NEW_ENTRY), "utf-8")
        calendar.write_text(
            calendar.read_text("utf-8").replace("END:VCALENDAR", NEW_EVENT), "utf-8"
        )
        await until(lambda: len(mails_to(store, "sofort@kreis.example")) >= 2, "immediate notices")
        await asyncio.sleep(0.5)
        immediate = mails_to(store, "sofort@kreis.example")
        assert sorted(m.subject for m in immediate) == [
            "Mobilitätsstationen: Standorte beschlossen",
            "Termin: Workshop Digitale HeimatApp am 15. Dezember 2026",
        ]
        event_mail = next(m for m in immediate if m.subject.startswith("Termin:")).message()
        assert [a.get_content_type() for a in event_mail.iter_attachments()] == ["text/calendar"]

        clock.set("2026-12-03T07:00:30")  # Thursday: the daily briefing
        await until(lambda: bool(mails_to(store, "taeglich@vg-pruem.example")), "daily briefing")
        clock.set("2026-12-07T07:00:30")  # Monday: the weekly briefing (the daily one is empty)
        await until(
            lambda: bool(mails_to(store, "woechentlich@bitburg.example")), "weekly briefing"
        )

        clock.set("2026-12-14T18:05")  # a day before the workshop
        for who in (
            "sofort@kreis.example",
            "taeglich@vg-pruem.example",
            "woechentlich@bitburg.example",
        ):
            await until(
                lambda who=who: mails_to(store, who)[-1].subject.startswith("Erinnerung"), who
            )
        reminder = mails_to(store, "sofort@kreis.example")[-1]
        assert (
            reminder.subject
            == "Erinnerung: Workshop Digitale HeimatApp (morgen, 15. Dezember 2026)"
        )
        ics = next(reminder.message().iter_attachments())
        assert "SUMMARY:Workshop Digitale HeimatApp" in ics.get_content()
        await asyncio.sleep(1.0)  # anything sent twice would arrive now
    finally:
        service.stop()
        await asyncio.wait_for(task, 20)

    daily = [m.subject for m in mails_to(store, "taeglich@vg-pruem.example")]
    weekly = [m.subject for m in mails_to(store, "woechentlich@bitburg.example")]
    reminder_subject = "Erinnerung: Workshop Digitale HeimatApp (morgen, 15. Dezember 2026)"
    assert daily == ["Ihr Tagesüberblick: 1 Neuigkeit, 1 Termin", reminder_subject]
    assert weekly == ["Ihr Wochenüberblick: 1 Neuigkeit, 1 Termin", reminder_subject]
    briefing = mails_to(store, "taeglich@vg-pruem.example")[0].message()
    text = briefing.get_body(("plain",)).get_content()
    assert "MOBILITÄT" in text and "TERMINE" in text and "Bürgerhaus Kyllburg" in text
    assert len(mails_to(store, "sofort@kreis.example")) == 3
