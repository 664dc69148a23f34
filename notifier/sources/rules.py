"""A recurring series in German words: "donnerstags 9–10 Uhr, 7. Januar bis 25. März 2027".

No maintained Python library says an RRULE in German (rrule-humanize speaks English only), so
this covers the common cases: DAILY, WEEKLY with BYDAY, MONTHLY with BYMONTHDAY or BYDAY
(with or without BYSETPOS), YEARLY, each with INTERVAL; UNTIL and COUNT give the end date.
Anything else is "regelmäßig" with the dates.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from babel.dates import format_date

__all__ = ["rule_words", "series_words", "time_words"]

_DAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
_ADVERBS = dict(
    zip(
        _DAYS,
        ("montags", "dienstags", "mittwochs", "donnerstags", "freitags", "samstags", "sonntags"),
        strict=True,
    )
)
_NAMES = dict(
    zip(
        _DAYS,
        ("Montag", "Dienstag", "Mittwoch", "Donnerstag", "Freitag", "Samstag", "Sonntag"),
        strict=True,
    )
)
_ORDINALS = {
    1: "ersten",
    2: "zweiten",
    3: "dritten",
    4: "vierten",
    5: "fünften",
    -1: "letzten",
    -2: "vorletzten",
}
_NUMBERS = {2: "zwei", 3: "drei", 4: "vier", 5: "fünf", 6: "sechs"}
_BYDAY = re.compile(r"^([+-]?\d{1,2})?(MO|TU|WE|TH|FR|SA|SU)$")
# Rule parts the words below say (or that change nothing people see).
_KNOWN = {"FREQ", "INTERVAL", "BYDAY", "BYMONTHDAY", "BYSETPOS", "UNTIL", "COUNT", "WKST"}


def _join(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} und {words[-1]}"


def _every(interval: int, one: str, many: str) -> str:
    """ "alle zwei Wochen" and the like."""
    return f"alle {_NUMBERS.get(interval, str(interval))} {many}" if interval > 1 else one


def rule_words(rule: str, first: datetime) -> str | None:
    """The recurrence of ``rule`` in German ("donnerstags", "jeden zweiten Dienstag im Monat"),
    ``first`` being the first start in local time; None for what it cannot say."""
    try:
        parts = dict(part.split("=", 1) for part in rule.upper().split(";") if part)
        interval = int(parts.get("INTERVAL", "1"))
    except ValueError:
        return None
    if set(parts) - _KNOWN or interval < 1:
        return None
    days: list[tuple[int | None, str]] = []
    for entry in filter(None, parts.get("BYDAY", "").split(",")):
        match = _BYDAY.match(entry)
        if match is None:
            return None
        days.append((int(match.group(1)) if match.group(1) else None, match.group(2)))
    weekday = _DAYS[first.weekday()]
    freq = parts.get("FREQ")
    if freq == "DAILY" and not days and "BYMONTHDAY" not in parts:
        return _every(interval, "täglich", "Tage")
    if freq == "DAILY" and all(n is None for n, _ in days) and interval == 1:
        freq = "WEEKLY"  # DAILY;BYDAY=MO,TU… is the same as WEEKLY
    if freq == "WEEKLY" and "BYMONTHDAY" not in parts and "BYSETPOS" not in parts:
        if any(n is not None for n, _ in days):
            return None
        chosen = [d for d in _DAYS if d in {d for _, d in days}] or [weekday]
        if chosen == list(_DAYS[:5]) and interval == 1:
            return "werktags (montags bis freitags)"
        if interval == 1:
            return _join([_ADVERBS[d] for d in chosen])
        if interval == 2 and len(chosen) == 1:
            return f"jeden zweiten {_NAMES[chosen[0]]}"
        return f"{_every(interval, '', 'Wochen')} {_join([_ADVERBS[d] for d in chosen])}"
    if freq == "MONTHLY":
        months = _every(interval, "monatlich", "Monate")
        if "BYMONTHDAY" in parts and not days and "BYSETPOS" not in parts:
            try:
                monthdays = [int(d) for d in parts["BYMONTHDAY"].split(",")]
            except ValueError:
                return None
            if any(not 1 <= d <= 31 for d in monthdays):
                return None if any(d != -1 for d in monthdays) else f"{months} am letzten Tag"
            return f"{months} am {_join([f'{d}.' for d in monthdays])}"
        if len(days) == 1 and "BYMONTHDAY" not in parts:
            position, day = days[0]
            if "BYSETPOS" in parts:
                if position is not None:
                    return None
                try:
                    position = int(parts["BYSETPOS"])
                except ValueError:
                    return None
            if position not in _ORDINALS:
                return None
            if interval == 1:
                return f"jeden {_ORDINALS[position]} {_NAMES[day]} im Monat"
            return f"{_every(interval, '', 'Monate')} am {_ORDINALS[position]} {_NAMES[day]}"
        if not days and "BYMONTHDAY" not in parts and "BYSETPOS" not in parts:
            return f"{months} am {first.day}."
        return None
    if freq == "YEARLY" and not days and "BYMONTHDAY" not in parts and "BYSETPOS" not in parts:
        day = format_date(first, "d. MMMM", locale="de_DE")
        return f"{_every(interval, 'jährlich', 'Jahre')} am {day}"
    return None


def time_words(start: datetime, end: datetime, all_day: bool) -> str:
    """ "9–10 Uhr", "9:30–11 Uhr", "ganztägig"; "ab 9 Uhr" when it ends on another day."""
    if all_day:
        return "ganztägig"

    def clock(value: datetime) -> str:
        return f"{value.hour}" if value.minute == 0 else f"{value.hour}:{value.minute:02d}"

    if end.date() != start.date() or end <= start:
        return f"ab {clock(start)} Uhr"
    return f"{clock(start)}–{clock(end)} Uhr"


def _day(value: datetime, year: bool = True) -> str:
    return format_date(value, "d. MMMM y" if year else "d. MMMM", locale="de_DE")


def series_words(
    rule: str,
    start: datetime,
    end: datetime,
    all_day: bool,
    last: datetime | None,
    exdates: Sequence[datetime],
    tz: ZoneInfo,
) -> str:
    """The whole series in words: "donnerstags 9–10 Uhr, 7. Januar bis 25. März 2027, außer am
    18. Februar 2027". Times are UTC; they are said in ``tz``."""
    first, finish = start.astimezone(tz), end.astimezone(tz)
    if all_day:  # a DATE is midnight in tz: keep the calendar day
        first, finish = start.astimezone(tz), end.astimezone(tz)
    how = rule_words(rule, first) if rule else None
    words = [how or "regelmäßig", time_words(first, finish, all_day)]
    lines = f"{words[0]} {words[1]}" if words[1] != "ganztägig" else f"{words[0]}, ganztägig"
    if last is None:
        span = f"ab {_day(first)}"
    else:
        final = last.astimezone(tz)
        if first.date() == final.date():
            span = _day(first)
        elif (first.year, first.month) == (final.year, final.month):
            span = f"{first.day}. bis {_day(final)}"
        else:
            span = f"{_day(first, year=first.year != final.year)} bis {_day(final)}"
    text = f"{lines}, {span}"
    skipped = sorted({d.astimezone(tz).date() for d in exdates})
    if skipped:
        text += f", außer am {_join([_day(datetime(d.year, d.month, d.day)) for d in skipped])}"
    return text
