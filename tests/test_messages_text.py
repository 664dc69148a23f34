"""Messages that read right (issue 15, item 8): subjects with umlauts fold without a double
space, plain text keeps URLs whole and shows no Markdown, the reason line has its article, a
first briefing says so, the signature separator is "-- ", briefings carry their events' .ics."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from typing import Any

import icalendar
import pytest

from notifier.db.models import ItemKind, Rhythm
from notifier.markdown_text import markdown_text
from notifier.rendering import Prepared, Recipient, Renderer

from .conftest import Project
from .test_messages import NOW, item

RECIPIENT = Recipient(
    "m@vg-speicher.example",
    "Maria Muster",
    "Verbandsgemeinde Speicher",
    ["Digitale Verwaltung", "Mobilität", "Eifelleben"],
    preferences_url="https://newsletter.example/einstellungen/x",
    unsubscribe_url="https://newsletter.example/abmelden/x",
)
LONG_URL = (
    "https://www.eifelkreis-verbindet.de/aktuelles/2026/12/digitale-sprechstunden-fuer-"
    "ortsgemeinden-im-eifelkreis-bitburg-pruem?utm_source=newsletter&utm_medium=email"
)


@pytest.fixture
def renderer(project: Project) -> Renderer:
    return Renderer(project.settings)


def sent(renderer: Renderer, prepared: Prepared, recipient: Recipient = RECIPIENT) -> bytes:
    return renderer.build_bytes(prepared, recipient, message_id="<1.a@x.example>", date=NOW)


def parsed(data: bytes) -> EmailMessage:
    message = message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def plain(data: bytes) -> str:
    body = parsed(data).get_body(("plain",))
    assert body is not None
    text: str = body.get_content()
    return text


@pytest.mark.parametrize("padding", range(0, 60, 3))
def test_long_subjects_with_umlauts_read_back_without_a_double_space(
    renderer: Renderer, padding: int
) -> None:
    title = "Sitzung des Ausschusses " + "x" * padding + " für Bürgerbeteiligung"
    event = item(
        ItemKind.event,
        subject=title,
        external_key="a@test",
        starts_at=datetime(2027, 3, 1, 9, tzinfo=UTC),
        ends_at=datetime(2027, 3, 1, 10, tzinfo=UTC),
    )
    prepared = renderer.prepare(event)
    assert prepared.subject == f"Termin: {title} am 1. März 2027"

    data = sent(renderer, prepared)

    head = data.split(b"\r\n\r\n", 1)[0]
    raw = re.search(rb"^Subject:(.*?)\r\n(?![ \t])", head, re.M | re.S)
    assert raw is not None
    assert all(len(line) <= 78 for line in raw.group(0).split(b"\r\n"))
    unfolded = re.sub(r"\r\n(?=[ \t])", "", raw.group(1).decode("ascii"))
    # Read back as a modern and as a legacy mail program would.
    assert str(parsed(data)["Subject"]) == prepared.subject
    assert str(make_header(decode_header(unfolded.strip()))) == prepared.subject


def test_briefing_plain_text_keeps_urls_on_one_line(renderer: Renderer) -> None:
    update = item(
        ItemKind.update,
        id=8,
        subject="Sprechstunden",
        body="Alle Termine und die Anmeldung finden Sie unter " + LONG_URL + " – bis Freitag.",
        link=LONG_URL,
        published_at=NOW,
    )
    text = plain(sent(renderer, renderer.prepare_briefing(Rhythm.daily, [update], None)))

    # The URL is in the body and under the entry, each time whole on one line.
    with_url = [line for line in text.splitlines() if "/aktuelles/" in line]
    assert len(with_url) == 2
    assert all(LONG_URL in line for line in with_url)
    assert "bis Freitag." in text


MARKDOWN = (
    "Die **Digitalen Kümmerer** bieten in *Prüm* neue Sprechstunden an.\n"
    "Anmeldung [im Rathaus](https://eifel.example/anmeldung?x=1&y=2) oder per Mail.\n"
    "\n"
    "- erster Termin: `Montag`\n"
    "- zweiter Termin mit [Plan](https://eifel.example/plan.pdf)\n"
    "\n"
    "Mehr: <https://eifel.example/mehr>\n"
)


def test_markdown_text_is_readable_with_links_on_their_own_lines() -> None:
    assert markdown_text(MARKDOWN) == (
        "Die Digitalen Kümmerer bieten in Prüm neue Sprechstunden an.\n"
        "Anmeldung im Rathaus oder per Mail.\n"
        "im Rathaus: https://eifel.example/anmeldung?x=1&y=2\n"
        "\n"
        "- erster Termin: Montag\n"
        "- zweiter Termin mit Plan\n"
        "  Plan: https://eifel.example/plan.pdf\n"
        "\n"
        "Mehr: https://eifel.example/mehr"
    )


def test_announcement_plain_text_shows_no_markdown(renderer: Renderer) -> None:
    announcement = item(ItemKind.announcement, body=MARKDOWN)
    for prepared in (
        renderer.prepare(announcement),
        renderer.prepare_briefing(Rhythm.weekly, [announcement], None),
    ):
        text = plain(sent(renderer, prepared))
        assert "**" not in text and "](" not in text and "`" not in text
        assert "Die Digitalen Kümmerer bieten in Prüm" in text
        assert "im Rathaus: https://eifel.example/anmeldung?x=1&y=2" in [
            line.strip() for line in text.splitlines()
        ]


@pytest.mark.parametrize(
    ("organisation", "topics", "reason"),
    [
        (
            "Verbandsgemeinde Speicher",
            ["Digitale Verwaltung", "Mobilität", "Eifelleben"],
            "für die Verbandsgemeinde Speicher zu den Themen Digitale Verwaltung, Mobilität "
            "und Eifelleben.",
        ),
        ("Eifelkreis Bitburg-Prüm", [], "für den Eifelkreis Bitburg-Prüm zu allen Themen."),
        (
            "Arzfeld",
            ["Mobilität", "Eifelleben"],
            "für Arzfeld zu den Themen Mobilität und Eifelleben.",
        ),
    ],
)
def test_reason_line_has_its_article_and_joins_topics_with_und(
    renderer: Renderer, organisation: str, topics: list[str], reason: str
) -> None:
    recipient = Recipient("x@example.org", "X", organisation, topics, "https://p/x", "https://u/x")
    data = sent(renderer, renderer.prepare(item(ItemKind.update, link=None)), recipient)

    text = " ".join(plain(data).split())
    html = " ".join(parsed(data).get_body(("html",)).get_content().split())  # type: ignore[union-attr]
    assert reason in text
    assert reason.replace("&", "&amp;") in html


def test_first_briefing_does_not_speak_of_the_last_one(renderer: Renderer) -> None:
    news = [item(ItemKind.update, link=None, published_at=NOW)]
    first = sent(renderer, renderer.prepare_briefing(Rhythm.daily, news, None, first=True))
    later = sent(renderer, renderer.prepare_briefing(Rhythm.daily, news, None))

    for data in (first, later):
        html = parsed(data).get_body(("html",)).get_content()  # type: ignore[union-attr]
        said = ("seit Ihrem letzten Überblick" in plain(data), "seit Ihrem letzten" in html)
        assert said == ((False, False) if data is first else (True, True))
    assert "Ihr erster Tagesüberblick" in plain(first)


def test_plain_text_signature_separator_is_dash_dash_space(renderer: Renderer) -> None:
    for prepared in (
        renderer.prepare(item(ItemKind.announcement)),
        renderer.prepare_briefing(Rhythm.daily, [item(ItemKind.update, link=None)], None),
    ):
        lines = plain(sent(renderer, prepared)).splitlines()
        assert "-- " in lines and "--" not in lines


def _events() -> list[Any]:
    return [
        item(
            ItemKind.event,
            id=20 + i,
            subject=f"Sprechstunde {i}",
            external_key=f"sprechstunde-{i}@test",
            starts_at=NOW + timedelta(days=2 + i),
            ends_at=NOW + timedelta(days=2 + i, hours=1),
            location="Rathaus Prüm",
            body="",
            change_count=i,
        )
        for i in range(3)
    ]


def test_briefing_events_come_with_a_calendar_file(renderer: Renderer) -> None:
    events = _events()
    prepared = renderer.prepare_briefing(Rhythm.weekly, [item(ItemKind.update), *events], None)
    data = sent(renderer, prepared)

    message = parsed(data)
    (attachment,) = [p for p in message.walk() if p.get_filename()]
    assert attachment.get_filename() == "termine.ics"
    assert attachment.get_content_type() == "text/calendar"
    calendar = icalendar.Calendar.from_ical(attachment.get_content())
    assert str(calendar["METHOD"]) == "PUBLISH"
    vevents = list(calendar.walk("VEVENT"))
    # The same UID and SEQUENCE as each event's own message, so calendars update, not duplicate.
    assert [(str(v["UID"]), int(v["SEQUENCE"])) for v in vevents] == [
        (f"sprechstunde-{i}@test", i) for i in range(3)
    ]
    assert [v["DTSTART"].dt for v in vevents] == [e.starts_at for e in events]
    assert "In den Kalender: die angehängte Datei termine.ics enthält alle 3 Termine" in plain(data)
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "In den Kalender:" in html

    # The straightforward build agrees with the fast one; a briefing without events has none.
    reference = renderer.build(prepared, RECIPIENT, message_id="<1.a@x.example>", date=NOW)
    assert [p.get_filename() for p in reference.walk() if p.get_filename()] == ["termine.ics"]
    news_only = parsed(
        sent(renderer, renderer.prepare_briefing(Rhythm.weekly, [item(ItemKind.update)], None))
    )
    assert not [p for p in news_only.walk() if p.get_filename()]
