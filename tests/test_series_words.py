"""A recurring series in German words (notifier.sources.rules): the common RRULEs, the times, the
span and the exceptions; what it cannot say falls back to "regelmäßig"."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from notifier.sources.rules import rule_words, series_words, time_words

BERLIN = ZoneInfo("Europe/Berlin")
THURSDAY = datetime(2027, 1, 7, 9, tzinfo=BERLIN)


@pytest.mark.parametrize(
    ("rule", "words"),
    [
        ("FREQ=DAILY", "täglich"),
        ("FREQ=DAILY;INTERVAL=3", "alle drei Tage"),
        ("FREQ=WEEKLY", "donnerstags"),
        ("FREQ=WEEKLY;BYDAY=TH", "donnerstags"),
        ("FREQ=WEEKLY;BYDAY=TU,TH", "dienstags und donnerstags"),
        ("FREQ=WEEKLY;BYDAY=MO,WE,FR;WKST=MO", "montags, mittwochs und freitags"),
        ("FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR", "werktags (montags bis freitags)"),
        ("FREQ=DAILY;BYDAY=MO,TU,WE,TH,FR", "werktags (montags bis freitags)"),
        ("FREQ=WEEKLY;INTERVAL=2;BYDAY=TH", "jeden zweiten Donnerstag"),
        ("FREQ=WEEKLY;INTERVAL=3;BYDAY=TU,TH", "alle drei Wochen dienstags und donnerstags"),
        ("FREQ=MONTHLY", "monatlich am 7."),
        ("FREQ=MONTHLY;BYMONTHDAY=15", "monatlich am 15."),
        ("FREQ=MONTHLY;BYMONTHDAY=1,15", "monatlich am 1. und 15."),
        ("FREQ=MONTHLY;BYMONTHDAY=-1", "monatlich am letzten Tag"),
        ("FREQ=MONTHLY;INTERVAL=2;BYMONTHDAY=7", "alle zwei Monate am 7."),
        ("FREQ=MONTHLY;BYDAY=1TH", "jeden ersten Donnerstag im Monat"),
        ("FREQ=MONTHLY;BYDAY=-1FR", "jeden letzten Freitag im Monat"),
        ("FREQ=MONTHLY;BYDAY=TU;BYSETPOS=2", "jeden zweiten Dienstag im Monat"),
        ("FREQ=MONTHLY;INTERVAL=3;BYDAY=2WE", "alle drei Monate am zweiten Mittwoch"),
        ("FREQ=YEARLY", "jährlich am 7. Januar"),
        ("FREQ=YEARLY;INTERVAL=2", "alle zwei Jahre am 7. Januar"),
    ],
)
def test_common_rules_in_german(rule: str, words: str) -> None:
    assert rule_words(rule, THURSDAY) == words


@pytest.mark.parametrize(
    "rule",
    [
        "FREQ=HOURLY",
        "FREQ=WEEKLY;BYHOUR=9,15",
        "FREQ=MONTHLY;BYDAY=MO,TU;BYSETPOS=1",
        "FREQ=MONTHLY;BYDAY=7TH",
        "FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU",
        "FREQ=WEEKLY;INTERVAL=x",
        "kaputt",
    ],
)
def test_what_cannot_be_said_is_none(rule: str) -> None:
    assert rule_words(rule, THURSDAY) is None


def test_times_in_words() -> None:
    assert time_words(THURSDAY, THURSDAY.replace(hour=10), False) == "9–10 Uhr"
    assert time_words(THURSDAY.replace(minute=30), THURSDAY.replace(hour=11), False) == (
        "9:30–11 Uhr"
    )
    assert time_words(THURSDAY, THURSDAY.replace(day=8), False) == "ab 9 Uhr"
    assert time_words(THURSDAY, THURSDAY, True) == "ganztägig"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN).astimezone(UTC)


def test_the_issue_example_with_its_exceptions() -> None:
    words = series_words(
        "FREQ=WEEKLY;UNTIL=20270325T235959Z",
        utc(2027, 1, 7, 9),
        utc(2027, 1, 7, 10),
        False,
        utc(2027, 3, 25, 9),
        [utc(2027, 2, 18, 9), utc(2027, 3, 4, 9)],
        BERLIN,
    )
    assert words == (
        "donnerstags 9–10 Uhr, 7. Januar bis 25. März 2027, "
        "außer am 18. Februar 2027 und 4. März 2027"
    )


def test_open_ended_across_years_all_day_and_fallback() -> None:
    assert (
        series_words(
            "FREQ=WEEKLY", utc(2026, 1, 6, 10), utc(2026, 1, 6, 12), False, None, [], BERLIN
        )
        == "dienstags 10–12 Uhr, ab 6. Januar 2026"
    )
    assert (
        series_words(
            "FREQ=MONTHLY;BYDAY=1MO",
            utc(2026, 12, 7),
            utc(2026, 12, 8),
            True,
            utc(2027, 2, 1),
            [],
            BERLIN,
        )
        == "jeden ersten Montag im Monat, ganztägig, 7. Dezember 2026 bis 1. Februar 2027"
    )
    # An hourly rule (or RDATE only) cannot be said: "regelmäßig" with the dates.
    assert (
        series_words(
            "FREQ=HOURLY;COUNT=3",
            utc(2027, 1, 7, 9),
            utc(2027, 1, 7, 10),
            False,
            utc(2027, 1, 7, 11),
            [],
            BERLIN,
        )
        == "regelmäßig 9–10 Uhr, 7. Januar 2027"
    )
