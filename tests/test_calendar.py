"""``notifier.sources.calendar``: iCalendar feeds → occurrences in UTC, and ``.ics`` attachments."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import icalendar
import pytest

from notifier.errors import SourceError
from notifier.sources.calendar import (
    CalendarEvent,
    event_ics,
    ics_uid,
    parse_calendar,
    parse_calendar_full,
    series_ics,
)

CALENDARS = Path(__file__).parent / "calendars"
SPRECHSTUNDE = "sprechstunde-2025@eifelkreis.example"
WIDE_START = datetime(2024, 1, 1, tzinfo=UTC)
WIDE_END = datetime(2027, 1, 1, tzinfo=UTC)
PB_NAME = "Projektbüro EIFELKREIS VERBINDET"
PB_EMAIL = "pb@eifel.example"
BERLIN = ZoneInfo("Europe/Berlin")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def ics(*events: str, head: str = "") -> bytes:
    """A VCALENDAR around ``events`` (VEVENT bodies, one property a line), with CRLF line ends."""
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//test//calendar//DE"]
    lines += [line for line in head.splitlines() if line.strip()]
    for body in events:
        lines += ["BEGIN:VEVENT", "DTSTAMP:20250101T000000Z"]
        lines += [line.strip() for line in body.strip().splitlines()]
        lines.append("END:VEVENT")
    lines.append("END:VCALENDAR")
    return ("\r\n".join(lines) + "\r\n").encode()


def parse(
    data: bytes,
    start: datetime = WIDE_START,
    end: datetime = WIDE_END,
    tz: ZoneInfo = BERLIN,
) -> list[CalendarEvent]:
    return parse_calendar("kreis-termine", data, window_start=start, window_end=end, tz=tz)


def one(data: bytes, tz: ZoneInfo = BERLIN) -> CalendarEvent:
    events = parse(data, tz=tz)
    assert len(events) == 1, events
    return events[0]


def sprechstunde() -> list[CalendarEvent]:
    data = (CALENDARS / "sprechstunde.ics").read_bytes()
    return parse(data, utc(2025, 3, 1), utc(2025, 5, 1))


def attach(
    event: CalendarEvent,
    method: Literal["PUBLISH", "CANCEL"],
    prodid: str = "-//EIFELKREIS VERBINDET//notifier//DE",
) -> bytes:
    """``event_ics`` with the project office as organizer."""
    return event_ics(
        event, method=method, organizer_name=PB_NAME, organizer_email=PB_EMAIL, prodid=prodid
    )


def organizer_cn(vevent: icalendar.Event) -> str:
    organizer = vevent["ORGANIZER"]
    assert isinstance(organizer, icalendar.vCalAddress)
    return str(organizer.params["CN"])


def reparse(attachment: bytes) -> tuple[icalendar.Calendar, icalendar.Event]:
    calendar = icalendar.Calendar.from_ical(attachment)
    assert isinstance(calendar, icalendar.Calendar)
    [vevent] = calendar.walk("VEVENT")
    assert isinstance(vevent, icalendar.Event)
    return calendar, vevent


# --- times ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ("20250115T100000", utc(2025, 1, 15, 9)),  # CET, UTC+1
        ("20250715T100000", utc(2025, 7, 15, 8)),  # CEST, UTC+2
    ],
)
def test_berlin_time_is_converted_to_utc_in_winter_and_summer(
    local: str, expected: datetime
) -> None:
    event = one(
        ics(f"""
            UID:rat@eifel.example
            SUMMARY:Digitalrat
            DTSTART;TZID=Europe/Berlin:{local}
            DTEND;TZID=Europe/Berlin:{local[:9]}113000
        """)
    )
    assert event.start == expected
    assert event.start.utcoffset() == timedelta(0)
    assert event.end == expected + timedelta(hours=1, minutes=30)
    assert event.all_day is False
    assert event.key == event.uid == "rat@eifel.example"


def test_utc_times_stay_as_they_are() -> None:
    event = one(ics("UID:u@x\nSUMMARY:U\nDTSTART:20250115T100000Z\nDTEND:20250115T110000Z"))
    assert (event.start, event.end) == (utc(2025, 1, 15, 10), utc(2025, 1, 15, 11))


def test_all_day_event_runs_from_berlin_midnight_to_next_berlin_midnight() -> None:
    event = one(ics("UID:tag@x\nSUMMARY:Tag der offenen Tür\nDTSTART;VALUE=DATE:20250115"))
    assert event.all_day is True
    assert event.start == utc(2025, 1, 14, 23)
    assert event.end == utc(2025, 1, 15, 23)


def test_all_day_dates_follow_summer_time_and_the_dst_change() -> None:
    summer = one(
        ics("UID:fest@x\nSUMMARY:Fest\nDTSTART;VALUE=DATE:20250701\nDTEND;VALUE=DATE:20250703")
    )
    assert (summer.start, summer.end) == (utc(2025, 6, 30, 22), utc(2025, 7, 2, 22))
    # 30 March 2025 has 23 hours in Berlin: the day ends at local midnight, not 24 hours later.
    change = one(ics("UID:umstellung@x\nSUMMARY:Umstellung\nDTSTART;VALUE=DATE:20250330"))
    assert (change.start, change.end) == (utc(2025, 3, 29, 23), utc(2025, 3, 30, 22))


def test_floating_time_is_read_in_the_given_timezone() -> None:
    data = ics("UID:f@x\nSUMMARY:Floating\nDTSTART:20250115T100000\nDTEND:20250115T110000")
    assert one(data).start == utc(2025, 1, 15, 9)
    assert one(data, tz=ZoneInfo("Europe/London")).start == utc(2025, 1, 15, 10)
    assert one(data, tz=ZoneInfo("America/New_York")).end == utc(2025, 1, 15, 16)


def test_missing_dtend_takes_duration_else_the_start() -> None:
    with_duration = one(ics("UID:d@x\nSUMMARY:D\nDTSTART:20250115T090000Z\nDURATION:PT1H30M"))
    assert with_duration.end == utc(2025, 1, 15, 10, 30)
    neither = one(ics("UID:n@x\nSUMMARY:N\nDTSTART:20250115T090000Z"))
    assert neither.end == neither.start == utc(2025, 1, 15, 9)


# --- recurring series ----------------------------------------------------------------------------


def test_weekly_series_skips_the_exdate_and_moves_the_overridden_occurrence() -> None:
    events = sprechstunde()
    # 17.3. and 24.3. in CET, 31.3. excluded, 7.4. moved to 8.4. 14:00, then CEST.
    assert [e.start for e in events] == [
        utc(2025, 3, 17, 9),
        utc(2025, 3, 24, 9),
        utc(2025, 4, 8, 12),
        utc(2025, 4, 14, 8),
        utc(2025, 4, 21, 8),
    ]
    assert [e.end - e.start for e in events] == [timedelta(hours=1)] * 5
    moved = events[2]
    assert moved.title == "Digitale Sprechstunde (verschoben)"
    assert moved.key == f"{SPRECHSTUNDE}@20250407T080000Z"  # the original start, not the new one
    assert moved.sequence == 3
    assert moved.description == ""
    assert {e.uid for e in events} == {SPRECHSTUNDE}
    assert events[0].description == "Fragen zur Digitalstrategie?\nDas Projektbüro antwortet."


def test_keys_of_recurring_occurrences_are_distinct_and_stable_across_parses() -> None:
    first = sprechstunde()
    data = (CALENDARS / "sprechstunde.ics").read_bytes()
    # A later poll with another window sees the same occurrences under the same keys.
    second = parse(data, utc(2025, 3, 20), utc(2025, 4, 30))
    keys = [e.key for e in first]
    assert len(set(keys)) == len(keys) == 5
    assert keys[0] == f"{SPRECHSTUNDE}@20250317T090000Z"
    assert [e.key for e in second] == keys[1:]
    assert [e.content_hash for e in second] == [e.content_hash for e in first[1:]]


def test_all_day_series_keys_carry_the_date() -> None:
    events = parse(
        ics("UID:markt@x\nSUMMARY:Markt\nDTSTART;VALUE=DATE:20250301\nRRULE:FREQ=MONTHLY;COUNT=3"),
        utc(2025, 1, 1),
        utc(2025, 12, 31),
    )
    assert [e.key for e in events] == ["markt@x@20250301", "markt@x@20250401", "markt@x@20250501"]
    assert all(e.all_day for e in events)
    assert events[1].start == utc(2025, 3, 31, 22)  # 1 April, CEST


def test_rdate_adds_occurrences_with_their_own_keys() -> None:
    events = parse(
        ics("""
            UID:rd@x
            SUMMARY:Extra
            DTSTART;TZID=Europe/Berlin:20250303T180000
            DURATION:PT2H
            RDATE;TZID=Europe/Berlin:20250310T180000,20250320T180000
        """),
        utc(2025, 3, 1),
        utc(2025, 4, 1),
    )
    assert [e.key for e in events] == [
        "rd@x@20250303T170000Z",
        "rd@x@20250310T170000Z",
        "rd@x@20250320T170000Z",
    ]
    assert events[2].end == utc(2025, 3, 20, 19)


def test_this_and_future_override_keeps_keys_distinct() -> None:
    data = ics(
        "UID:tf@x\nSUMMARY:Täglich\nDTSTART:20250303T100000Z\nDURATION:PT1H\nRRULE:FREQ=DAILY;COUNT=5",
        "UID:tf@x\nSUMMARY:Später\nRECURRENCE-ID;RANGE=THISANDFUTURE:20250305T100000Z\n"
        "DTSTART:20250305T120000Z\nDURATION:PT1H",
    )
    events = parse(data, utc(2025, 3, 1), utc(2025, 4, 1))
    assert [e.start.hour for e in events] == [10, 10, 12, 12, 12]
    assert [e.key.removeprefix("tf@x@") for e in events] == [
        "20250303T100000Z",
        "20250304T100000Z",
        "20250305T100000Z",
        "20250306T100000Z",
        "20250307T100000Z",
    ]


# --- window --------------------------------------------------------------------------------------


def test_window_keeps_only_occurrences_that_overlap_it() -> None:
    data = ics(
        "UID:before@x\nSUMMARY:a\nDTSTART:20250301T080000Z\nDTEND:20250301T090000Z",
        "UID:ends-at-start@x\nSUMMARY:b\nDTSTART:20250301T090000Z\nDTEND:20250301T100000Z",
        "UID:overlaps-start@x\nSUMMARY:c\nDTSTART:20250301T093000Z\nDTEND:20250301T103000Z",
        "UID:point-at-start@x\nSUMMARY:d\nDTSTART:20250301T100000Z",
        "UID:inside@x\nSUMMARY:e\nDTSTART:20250301T110000Z\nDTEND:20250301T113000Z",
        "UID:overlaps-end@x\nSUMMARY:f\nDTSTART:20250301T115000Z\nDTEND:20250301T130000Z",
        "UID:at-end@x\nSUMMARY:g\nDTSTART:20250301T120000Z\nDTEND:20250301T130000Z",
        "UID:after@x\nSUMMARY:h\nDTSTART:20250302T120000Z\nDTEND:20250302T130000Z",
    )
    events = parse(data, utc(2025, 3, 1, 10), utc(2025, 3, 1, 12))
    assert [e.uid for e in events] == [
        "overlaps-start@x",
        "point-at-start@x",
        "inside@x",
        "overlaps-end@x",
    ]


def test_window_cuts_a_long_series_and_accepts_any_timezone() -> None:
    data = ics("UID:w@x\nSUMMARY:W\nDTSTART;TZID=Europe/Berlin:20250106T100000\nRRULE:FREQ=WEEKLY")
    berlin = ZoneInfo("Europe/Berlin")
    events = parse(
        data, datetime(2025, 2, 3, 10, tzinfo=berlin), datetime(2025, 2, 17, 10, tzinfo=berlin)
    )
    assert [e.start for e in events] == [utc(2025, 2, 3, 9), utc(2025, 2, 10, 9)]


def test_window_applies_to_all_day_events_in_berlin_time() -> None:
    data = ics("UID:tag@x\nSUMMARY:Tag\nDTSTART;VALUE=DATE:20250115")
    # The day starts at 23:00 UTC the evening before.
    assert parse(data, utc(2025, 1, 14, 22), utc(2025, 1, 14, 23)) == []
    assert [e.uid for e in parse(data, utc(2025, 1, 14, 22), utc(2025, 1, 14, 23, 30))] == ["tag@x"]
    assert [e.uid for e in parse(data, utc(2025, 1, 15, 22), utc(2025, 1, 16))] == ["tag@x"]
    assert parse(data, utc(2025, 1, 15, 23), utc(2025, 1, 16)) == []


def test_events_are_sorted_by_start() -> None:
    data = ics(
        "UID:late@x\nSUMMARY:late\nDTSTART:20250301T150000Z",
        "UID:early@x\nSUMMARY:early\nDTSTART:20250301T080000Z",
        "UID:middle@x\nSUMMARY:middle\nDTSTART;TZID=Europe/Berlin:20250301T100000",
    )
    assert [e.uid for e in parse(data)] == ["early@x", "middle@x", "late@x"]


def test_naive_window_is_refused() -> None:
    data = ics("UID:x@x\nSUMMARY:x\nDTSTART:20250301T150000Z")
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_calendar(
            "kreis-termine", data, window_start=datetime(2025, 1, 1), window_end=utc(2026, 1, 1)
        )


# --- status, sequence, categories ----------------------------------------------------------------


def test_cancelled_event_and_cancelled_single_occurrence() -> None:
    cancelled = one(ics("UID:c@x\nSUMMARY:Abgesagt\nDTSTART:20250301T150000Z\nSTATUS:CANCELLED"))
    assert cancelled.cancelled is True
    series = sprechstunde()
    assert [e.cancelled for e in series] == [False, False, False, True, False]
    assert series[3].key == f"{SPRECHSTUNDE}@20250414T080000Z"


def test_cancelled_series_cancels_its_overridden_occurrences_too() -> None:
    data = ics(
        "UID:s@x\nSUMMARY:S\nDTSTART:20250303T100000Z\nRRULE:FREQ=DAILY;COUNT=3\nSTATUS:CANCELLED",
        "UID:s@x\nSUMMARY:S moved\nRECURRENCE-ID:20250304T100000Z\nDTSTART:20250304T120000Z",
    )
    events = parse(data)
    assert len(events) == 3
    assert all(e.cancelled for e in events)


def test_method_cancel_calendar_cancels_its_events() -> None:
    data = ics("UID:m@x\nSUMMARY:M\nDTSTART:20250303T100000Z\nSEQUENCE:1", head="METHOD:CANCEL")
    assert one(data).cancelled is True


def test_confirmed_event_is_not_cancelled_and_sequence_defaults_to_zero() -> None:
    event = one(ics("UID:ok@x\nSUMMARY:OK\nDTSTART:20250303T100000Z\nSTATUS:CONFIRMED"))
    assert (event.cancelled, event.sequence, event.categories) == (False, 0, ())


def test_sequence_and_categories_are_read() -> None:
    event = one(
        ics("""
            UID:k@x
            SUMMARY:K
            DTSTART:20250303T100000Z
            SEQUENCE:4
            CATEGORIES:Digitalisierung,Mobilität
            CATEGORIES:Bildung,Digitalisierung
        """)
    )
    assert event.sequence == 4
    assert event.categories == ("Digitalisierung", "Mobilität", "Bildung")


# --- text ----------------------------------------------------------------------------------------


def test_description_keeps_its_lines_and_title_collapses_line_breaks() -> None:
    event = one(
        ics(r"""
            UID:t@x
            SUMMARY:Sitzung\nDigitalrat\r\n  Bitburg\, 2025
            DESCRIPTION:Tagesordnung:\n1. Breitband\n2. Smart Parking\n\nGäste\; Anmeldung.
            LOCATION:Kreisverwaltung\nTrierer Straße 1\n54634 Bitburg
            DTSTART:20250303T100000Z
        """)
    )
    assert event.title == "Sitzung Digitalrat Bitburg, 2025"
    assert event.description == (
        "Tagesordnung:\n1. Breitband\n2. Smart Parking\n\nGäste; Anmeldung."
    )
    assert event.location == "Kreisverwaltung, Trierer Straße 1, 54634 Bitburg"


def test_html_description_becomes_plain_text() -> None:
    event = one(
        ics(
            "UID:h@x\nSUMMARY:H\nDTSTART:20250303T100000Z\nDESCRIPTION:<p>Programm:</p><ul>"
            '<li>Vortrag <b>Smart City</b></li><li>Fragen &amp\\; Antworten</li></ul><a href="'
            'https://eifel.example/anmeldung">Zur Anmeldung</a><br>Ende'
        )
    )
    assert event.description == (
        "Programm:\n\n- Vortrag Smart City\n- Fragen & Antworten\n"
        "Zur Anmeldung (https://eifel.example/anmeldung)\nEnde"
    )


@pytest.mark.parametrize(
    ("url", "link"),
    [
        ("https://eifel.example/termin?id=7&x=1", "https://eifel.example/termin?id=7&x=1"),
        ("http://eifel.example/", "http://eifel.example/"),
        ("mailto:pb@eifel.example", None),
        ("ftp://eifel.example/x", None),
        ("https://", None),
    ],
)
def test_link_is_the_url_only_when_it_is_http(url: str, link: str | None) -> None:
    event = one(ics(f"UID:l@x\nSUMMARY:L\nDTSTART:20250303T100000Z\nURL:{url}"))
    assert event.link == link


def test_windows_1252_feed_is_decoded() -> None:
    data = ics("UID:w@x\nSUMMARY:Sitzung in Prüm\nDTSTART:20250303T100000Z")
    assert one(data.decode().encode("cp1252")).title == "Sitzung in Prüm"


def test_event_without_uid_gets_a_stable_generated_uid() -> None:
    data = ics("SUMMARY:Ohne UID\nDTSTART:20250303T100000Z")
    first, second = one(data), one(data)
    assert first.uid.startswith("generated-")
    assert first.key == second.key == first.uid


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"garbage",
        b"",
        b"<html><body>502 Bad Gateway</body></html>",
        b"BEGIN:VEVENT\r\nUID:x\r\nDTSTART:20250101T100000Z\r\nEND:VEVENT\r\n",
        b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:x\r\nEND:VCALENDAR\r\n",
        ics("UID:no-start@x\nSUMMARY:x"),
        ics("UID:bad-start@x\nSUMMARY:x\nDTSTART:morgen"),
        ics("UID:bad-rule@x\nSUMMARY:x\nDTSTART:20250101T100000Z\nRRULE:FREQ=SOMETIMES"),
        ics("UID:bad-seq@x\nSUMMARY:x\nDTSTART:20250101T100000Z\nSEQUENCE:zwei"),
    ],
)
def test_malformed_data_raises_source_error_naming_the_source(data: bytes) -> None:
    with pytest.raises(SourceError, match=r"^kreis-termine: fehlerhafter Kalender: ") as caught:
        parse(data)
    assert caught.value.source == "kreis-termine"
    assert caught.value.problem.startswith("fehlerhafter Kalender: ")


def test_broken_event_names_its_uid() -> None:
    with pytest.raises(SourceError, match="bad-start@x"):
        parse(ics("UID:ok@x\nSUMMARY:ok\nDTSTART:20250101T100000Z", "UID:bad-start@x\nDTSTART:x"))


def test_empty_calendar_has_no_events() -> None:
    assert parse(b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//x//y//DE\r\nEND:VCALENDAR\r\n") == []
    assert parse(ics()) == []


# --- content hash --------------------------------------------------------------------------------

BASE = """
    UID:h@x
    SUMMARY:Digitalrat
    DESCRIPTION:Tagesordnung folgt
    LOCATION:Bitburg
    DTSTART;TZID=Europe/Berlin:20250303T100000
    DTEND;TZID=Europe/Berlin:20250303T110000
"""


def hash_of(body: str) -> str:
    return one(ics(body)).content_hash


def test_content_hash_changes_with_time_and_location() -> None:
    base = hash_of(BASE)
    assert len(base) == 64
    assert int(base, 16) >= 0
    assert hash_of(BASE.replace("T100000", "T100500")) != base
    assert hash_of(BASE.replace("T110000", "T120000")) != base
    assert hash_of(BASE.replace("LOCATION:Bitburg", "LOCATION:Prüm")) != base
    assert hash_of(BASE.replace("Tagesordnung folgt", "Tagesordnung steht")) != base
    assert hash_of(BASE + "URL:https://eifel.example/rat") != base
    assert hash_of(BASE.replace("SUMMARY:Digitalrat", "SUMMARY:Digitalrat (neu)")) != base


def test_content_hash_ignores_dtstamp_sequence_and_status() -> None:
    base = one(ics(BASE))
    restamped = ics(BASE + "SEQUENCE:5\nSTATUS:CANCELLED").replace(
        b"DTSTAMP:20250101T000000Z", b"DTSTAMP:20250220T121500Z"
    )
    again = one(restamped)
    assert again.sequence == 5
    assert again.content_hash == base.content_hash


# --- event_ics -----------------------------------------------------------------------------------


def test_event_ics_publish_parses_back_with_utc_times_and_organizer() -> None:
    event = sprechstunde()[0]
    before = datetime.now(UTC).replace(microsecond=0)
    attachment = attach(event, "PUBLISH")
    calendar, vevent = reparse(attachment)
    assert calendar["METHOD"] == "PUBLISH"
    assert calendar["VERSION"] == "2.0"
    assert calendar["PRODID"] == "-//EIFELKREIS VERBINDET//notifier//DE"
    assert vevent["UID"] == "sprechstunde-2025@eifelkreis.example@20250317T090000Z"
    assert b"DTSTART:20250317T090000Z\r\n" in attachment
    assert b"DTEND:20250317T100000Z\r\n" in attachment
    assert vevent.decoded("DTSTART") == utc(2025, 3, 17, 9)
    assert before <= vevent.decoded("DTSTAMP") <= datetime.now(UTC)
    assert vevent["SUMMARY"] == "Digitale Sprechstunde"
    assert vevent["DESCRIPTION"] == "Fragen zur Digitalstrategie?\nDas Projektbüro antwortet."
    assert vevent["LOCATION"] == "Online"
    assert vevent["URL"] == "https://www.eifelkreis.example/sprechstunde"
    assert vevent.decoded("SEQUENCE") == 3
    assert vevent["STATUS"] == "CONFIRMED"
    assert vevent["ORGANIZER"] == "mailto:pb@eifel.example"
    assert organizer_cn(vevent) == PB_NAME
    assert "RRULE" not in vevent
    assert "RECURRENCE-ID" not in vevent
    assert attachment.endswith(b"END:VCALENDAR\r\n")


def test_event_ics_cancel_keeps_the_uid_and_marks_it_cancelled() -> None:
    event = sprechstunde()[2]
    published = reparse(attach(event, "PUBLISH"))[1]
    calendar, vevent = reparse(attach(event, "CANCEL"))
    assert calendar["METHOD"] == "CANCEL"
    assert vevent["STATUS"] == "CANCELLED"
    assert vevent["UID"] == published["UID"] == f"{SPRECHSTUNDE}@20250407T080000Z"
    assert vevent.decoded("DTSTART") == utc(2025, 4, 8, 12)  # the moved time
    assert organizer_cn(vevent) == PB_NAME


def test_event_ics_all_day_event_uses_dates() -> None:
    event = one(
        ics("UID:fest@x\nSUMMARY:Fest\nDTSTART;VALUE=DATE:20250701\nDTEND;VALUE=DATE:20250703")
    )
    attachment = attach(event, "PUBLISH", prodid="-//Test//DE")
    calendar, vevent = reparse(attachment)
    assert calendar["PRODID"] == "-//Test//DE"
    assert b"DTSTART;VALUE=DATE:20250701\r\n" in attachment
    assert vevent.decoded("DTSTART") == date(2025, 7, 1)
    assert vevent.decoded("DTEND") == date(2025, 7, 3)


def test_event_ics_escapes_text_and_keeps_categories() -> None:
    event = dataclasses.replace(
        one(ics("UID:e@x\nSUMMARY:E\nDTSTART:20250303T100000Z\nCATEGORIES:Bildung,Mobilität")),
        title="Rat; Sitzung, öffentlich",
        description="Zeile 1\nZeile 2",
    )
    attachment = event_ics(
        event,
        method="PUBLISH",
        organizer_name='Büro "Smart City"',
        organizer_email="pb@eifel.example",
    )
    vevent = reparse(attachment)[1]
    assert vevent["SUMMARY"] == "Rat; Sitzung, öffentlich"
    assert vevent["DESCRIPTION"] == "Zeile 1\nZeile 2"
    categories = vevent["CATEGORIES"]
    assert isinstance(categories, icalendar.vCategory)
    assert [str(c) for c in categories.cats] == ["Bildung", "Mobilität"]
    assert organizer_cn(vevent) == "Büro 'Smart City'"
    assert all(len(line) <= 75 for line in attachment.split(b"\r\n"))


@pytest.mark.parametrize("email", ["", "kein-at", "pb@eifel.example\r\nX-EVIL:1", "p b@x.de"])
def test_event_ics_refuses_an_unusable_organizer_address(email: str) -> None:
    event = one(ics("UID:e@x\nSUMMARY:E\nDTSTART:20250303T100000Z"))
    with pytest.raises(ValueError, match="e-mail address"):
        event_ics(event, method="PUBLISH", organizer_name="PB", organizer_email=email)


def test_ics_uid_keeps_safe_keys_and_makes_others_safe_and_distinct() -> None:
    assert ics_uid("abc-123@eifel.example@20250317T090000Z") == (
        "abc-123@eifel.example@20250317T090000Z"
    )
    odd = [ics_uid("Termin 1/2: Prüm"), ics_uid("Termin 1-2: Prüm"), ics_uid("x" * 300)]
    assert all(uid.isascii() and " " not in uid and ":" not in uid for uid in odd)
    assert len(set(odd)) == 3
    assert len(odd[2]) <= 200
    assert ics_uid("Termin 1/2: Prüm") == odd[0]


# --- text (issue 15, item 7) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("summary", "title"),
    [
        ("Caf&#233; Digital in Pr&#252;m", "Café Digital in Prüm"),
        ("Tagung Baden-W&#252;rttemberg &amp; Eifel&hellip;", "Tagung Baden-Württemberg & Eifel…"),
        ("Caf&#233; <b>Digital</b>", "Café Digital"),
        ("Plan: a < b &c", "Plan: a < b &c"),
    ],
)
def test_entities_are_decoded_with_and_without_tags(summary: str, title: str) -> None:
    event = one(ics(f"UID:e@x\nSUMMARY:{summary}\nDTSTART:20250303T100000Z"))
    assert event.title == title


@pytest.mark.parametrize(
    "description",
    [
        "Vorher<script>alert(2)</script> nachher",
        "<p>Vorher</p><script>alert(2)</script><style>p{color:red}</style><p>nachher</p>",
    ],
)
def test_script_and_style_content_is_dropped(description: str) -> None:
    event = one(ics(f"UID:s@x\nSUMMARY:S\nDTSTART:20250303T100000Z\nDESCRIPTION:{description}"))
    assert "alert" not in event.description and "color" not in event.description
    assert "Vorher" in event.description and "nachher" in event.description


# --- errors in words (issue 15, item 9) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"<html><body>502 Bad Gateway</body></html>", "eine HTML-Seite statt iCalendar-Daten"),
        (b"", "das Dokument ist leer"),
        (b"garbage\r\nmore garbage", "keine iCalendar-Daten (BEGIN:VCALENDAR fehlt)"),
        (ics("UID:bad-rule@x\nSUMMARY:x\nDTSTART:20250101T100000Z\nRRULE:FREQ=SOMETIMES"), None),
    ],
)
def test_calendar_errors_are_german_and_echo_nothing(data: bytes, problem: str | None) -> None:
    with pytest.raises(SourceError) as caught:
        parse(data)
    message = caught.value.problem
    assert message.startswith("fehlerhafter Kalender: ")
    if problem is not None:
        assert message == f"fehlerhafter Kalender: {problem}"
    for echoed in ("502", "garbage", "SOMETIMES", "Content line", "parsed"):
        assert echoed not in message
    assert caught.value.detail  # the library's words, for the log


# --- series and what lies beyond the window (issue 15) -------------------------------------------


def test_parse_full_gives_the_series_and_the_events_beyond_the_window() -> None:
    data = ics(
        "UID:reihe@x\nSUMMARY:Sprechstunde\nDTSTART;TZID=Europe/Berlin:20270107T090000\n"
        "DTEND;TZID=Europe/Berlin:20270107T100000\nRRULE:FREQ=WEEKLY;COUNT=12\n"
        "EXDATE;TZID=Europe/Berlin:20270218T090000",
        "UID:reihe@x\nSUMMARY:Sprechstunde\nRECURRENCE-ID;TZID=Europe/Berlin:20270311T090000\n"
        "DTSTART;TZID=Europe/Berlin:20270611T140000\nDTEND;TZID=Europe/Berlin:20270611T150000",
        "UID:spaeter@x\nSUMMARY:Später\nDTSTART:20270901T100000Z\nDURATION:PT1H",
    )
    parsed = parse_calendar_full(
        "t",
        data,
        window_start=datetime(2027, 1, 1, tzinfo=UTC),
        window_end=datetime(2027, 4, 1, tzinfo=UTC),
    )
    assert {e.series for e in parsed.events} == {"reihe@x"}
    assert len(parsed.events) == 10  # 12, less the excluded one and the one moved to June
    (series,) = parsed.series
    assert (series.rule, series.exdates) == ("FREQ=WEEKLY;COUNT=12", ("2027-02-18T08:00:00+00:00",))
    assert series.last == datetime(2027, 3, 25, 8, tzinfo=UTC)
    assert series.start == datetime(2027, 1, 7, 8, tzinfo=UTC)
    assert sorted((e.key, e.outside) for e in parsed.outside) == [
        ("reihe@x@20270311T080000Z", True),
        ("spaeter@x", True),
    ]
    moved = next(e for e in parsed.outside if e.series == "reihe@x")
    assert moved.start == datetime(2027, 6, 11, 12, tzinfo=UTC)

    attachment = series_ics(
        series.ics,
        series.uid,
        method="PUBLISH",
        sequence=2,
        organizer_name="Projektbüro",
        organizer_email="pb@example.org",
    )
    calendar = icalendar.Calendar.from_ical(attachment)
    vevents = calendar.walk("VEVENT")
    assert {str(v["UID"]) for v in vevents} == {"reihe@x"}
    assert {int(v["SEQUENCE"]) for v in vevents} == {2}
    assert sum("RECURRENCE-ID" in v for v in vevents) == 1
    assert [str(t["TZID"]) for t in calendar.walk("VTIMEZONE")] == ["Europe/Berlin"]
    cancel = icalendar.Calendar.from_ical(
        series_ics(
            series.ics,
            series.uid,
            method="CANCEL",
            sequence=3,
            organizer_name="Projektbüro",
            organizer_email="pb@example.org",
        )
    )
    (master,) = cancel.walk("VEVENT")
    assert (str(master["STATUS"]), "RRULE" in master) == ("CANCELLED", True)


def test_event_ics_of_one_occurrence_names_the_series_and_its_original_start() -> None:
    data = ics(
        "UID:reihe@x\nSUMMARY:Sprechstunde\nDTSTART;TZID=Europe/Berlin:20270107T090000\n"
        "DTEND;TZID=Europe/Berlin:20270107T100000\nRRULE:FREQ=WEEKLY;COUNT=3"
    )
    second = parse_calendar(
        "t",
        data,
        window_start=datetime(2027, 1, 1, tzinfo=UTC),
        window_end=datetime(2027, 4, 1, tzinfo=UTC),
    )[1]
    attachment = event_ics(
        second,
        method="CANCEL",
        organizer_name="PB",
        organizer_email="pb@example.org",
        series="reihe@x",
    )
    (vevent,) = icalendar.Calendar.from_ical(attachment).walk("VEVENT")
    assert str(vevent["UID"]) == "reihe@x"
    assert vevent.decoded("RECURRENCE-ID") == datetime(2027, 1, 14, 8, tzinfo=UTC)
