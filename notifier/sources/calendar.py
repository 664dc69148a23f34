"""iCalendar feeds turned into event occurrences, and ``.ics`` attachments for one occurrence.

``parse_calendar`` reads a feed (bytes as fetched), expands recurring series inside a time window
and returns one :class:`CalendarEvent` per occurrence, with times in UTC and text as plain text.
``event_ics`` builds the calendar attachment of an invitation or cancellation for one occurrence.

Both are pure: no network, no database, no clock except ``DTSTAMP``.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from html.parser import HTMLParser
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import icalendar
import recurring_ical_events
from dateutil import rrule as dateutil_rrule

from notifier.errors import SourceError

__all__ = [
    "DEFAULT_PRODID",
    "CalendarEvent",
    "CalendarSeries",
    "ParsedCalendar",
    "event_ics",
    "ics_uid",
    "parse_calendar",
    "parse_calendar_full",
    "series_ics",
]

BERLIN = ZoneInfo("Europe/Berlin")
DEFAULT_PRODID = "-//EIFELKREIS VERBINDET//notifier//DE"

# Asked of recurring_ical_events around the window, so that floating and all-day times near the
# edges are surely included; the exact overlap test is done here, in UTC.
_WINDOW_MARGIN = timedelta(days=2)
# What untrusted calendar data makes icalendar and recurring_ical_events raise.
_PARSE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError)
_UID_UNSAFE = re.compile(r"[^A-Za-z0-9@._+=-]")
_UID_MAX = 200
_HTML_TAG = re.compile(
    r"</?(?:a|b|i|u|p|br|div|span|em|strong|ul|ol|li|h[1-6]|html|body|table|tr|td"
    r"|script|style|template)\b[^>]*>",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class CalendarEvent:
    """One occurrence of a calendar event, times in UTC, texts as plain text."""

    key: str
    """Stable per occurrence: the UID; for a recurring series ``UID@<original start>``."""
    uid: str
    title: str
    description: str
    location: str
    link: str | None
    start: datetime
    end: datetime
    all_day: bool
    cancelled: bool
    sequence: int
    categories: tuple[str, ...]
    content_hash: str
    """sha256 over title, start, end, location, description and link."""
    series: str | None = None
    """The UID of the recurring series this occurrence belongs to (None: a single event)."""
    outside: bool = False
    """A single event or a moved occurrence found beyond the window (see parse_calendar_full)."""


@dataclass(frozen=True)
class CalendarSeries:
    """A recurring series as its master VEVENT states it, for one message about all of it."""

    uid: str
    title: str
    description: str
    location: str
    link: str | None
    start: datetime
    """The master's DTSTART (the first occurrence), in UTC."""
    end: datetime
    all_day: bool
    rule: str
    """The RRULE value as written (``FREQ=WEEKLY;BYDAY=TH;UNTIL=…``); empty for RDATE only."""
    exdates: tuple[str, ...]
    """Excluded starts, ISO 8601 in UTC."""
    last: datetime | None
    """The start of the last occurrence by the rule (UNTIL/COUNT); None: open-ended."""
    cancelled: bool
    sequence: int
    categories: tuple[str, ...]
    ics: str
    """A VCALENDAR (no METHOD) with the master, its overrides and the time zones they use."""
    content_hash: str
    """sha256 over the master's title, times, place, texts, RRULE and RDATE (not EXDATE: an
    excluded date is a cancelled occurrence, told as such)."""


@dataclass(frozen=True)
class ParsedCalendar:
    """What one poll of a calendar needs: occurrences in the window, series, and what lies
    beyond the window (so an event moved there is not mistaken for a removed one)."""

    events: list[CalendarEvent]
    series: list[CalendarSeries]
    outside: list[CalendarEvent]


# A series' last occurrence is counted up to this many; beyond, it is shown as open-ended.
_LAST_SCAN = 5000


@dataclass
class _Series:
    """What the occurrences of one calendar need to know about the source components."""

    recurring: set[str] = field(default_factory=set)
    cancelled: set[str] = field(default_factory=set)
    # (UID, original start id) of a RANGE=THISANDFUTURE override → how far it moves occurrences
    moves: dict[tuple[str, str], timedelta] = field(default_factory=dict)


def parse_calendar(
    name: str,
    data: bytes,
    *,
    window_start: datetime,
    window_end: datetime,
    tz: ZoneInfo = BERLIN,
    max_per_series: int | None = None,
    max_per_calendar: int | None = None,
) -> list[CalendarEvent]:
    """Return the occurrences of :func:`parse_calendar_full` (its ``events``)."""
    return parse_calendar_full(
        name,
        data,
        window_start=window_start,
        window_end=window_end,
        tz=tz,
        max_per_series=max_per_series,
        max_per_calendar=max_per_calendar,
    ).events


def parse_calendar_full(
    name: str,
    data: bytes,
    *,
    window_start: datetime,
    window_end: datetime,
    tz: ZoneInfo = BERLIN,
    max_per_series: int | None = None,
    max_per_calendar: int | None = None,
) -> ParsedCalendar:
    """Return the event occurrences of the iCalendar ``data`` that overlap the window, by start.

    An occurrence overlaps ``[window_start, window_end)`` when it starts before ``window_end`` and
    ends after ``window_start`` (an occurrence without duration: starts at or after
    ``window_start``). Recurring series (RRULE, RDATE, EXDATE, RECURRENCE-ID overrides) are
    expanded; floating times and dates are read in ``tz``. ``name`` names the source in errors.

    ``max_per_series`` and ``max_per_calendar`` cap the occurrences one series and the whole
    calendar may have around the window: a rule is counted lazily before anything is expanded,
    so ``RRULE:FREQ=SECONDLY`` is refused after counting ``max_per_series + 1`` starts.

    Raises:
        SourceError: the data is not one VCALENDAR, an event in it cannot be read, or it has more
            occurrences than allowed. The whole calendar is refused, so that a broken event is
            never mistaken for a removed one (and the message repeats nothing of its content).
        ValueError: a window bound is naive.
    """
    for bound in (window_start, window_end):
        if bound.tzinfo is None or bound.utcoffset() is None:
            raise ValueError(f"window bounds must be timezone-aware, got {bound!r}")
    window_start, window_end = window_start.astimezone(UTC), window_end.astimezone(UTC)
    calendar = _load(name, data)
    series = _prepare(name, calendar, tz)
    if window_end <= window_start:
        return ParsedCalendar([], [], [])
    try:
        components = _expand(
            name,
            calendar,
            window_start.astimezone(tz) - _WINDOW_MARGIN,
            window_end.astimezone(tz) + _WINDOW_MARGIN,
            max_per_series,
            max_per_calendar,
        )
        cancel_all = str(calendar.get("METHOD", "")).upper() == "CANCEL"
        events = [_event(name, c, tz, series, cancel_all) for c in components]
        inside = sorted(
            (
                e
                for e in events
                if e.start < window_end and (e.end > window_start or e.start >= window_start)
            ),
            key=lambda e: (e.start, e.key),
        )
        found = {e.uid for e in inside if e.series is not None}
        by_uid: dict[str, list[Any]] = {}
        for component in calendar.walk("VEVENT"):
            if str(component["UID"]) in found:
                by_uid.setdefault(str(component["UID"]), []).append(component)
        timezones = calendar.walk("VTIMEZONE")
        masters = [
            _series(c, tz, cancel_all, components, timezones)
            for components in by_uid.values()
            for c in components
            if "RECURRENCE-ID" not in c
        ]
        outside = _outside(name, calendar, tz, series, cancel_all, window_end, max_per_calendar)
    except _PARSE_ERRORS as exc:
        raise SourceError(
            name, "fehlerhafter Kalender: ein Termin ist nicht lesbar", detail=str(exc)
        ) from exc
    return ParsedCalendar(inside, masters, outside)


def _outside(
    name: str,
    calendar: icalendar.Calendar,
    tz: ZoneInfo,
    series: _Series,
    cancel_all: bool,
    window_end: datetime,
    limit: int | None,
) -> list[CalendarEvent]:
    """Single events and moved occurrences (overrides) that start at or after ``window_end``."""
    found: list[CalendarEvent] = []
    for component in calendar.walk("VEVENT"):
        recurring = "RRULE" in component or "RDATE" in component
        if recurring and "RECURRENCE-ID" not in component:
            continue
        if _to_utc(_time_value(component, "DTSTART"), tz) < window_end:
            continue  # within the window (or before it): the expansion has it
        single = icalendar.Event.from_ical(component.to_ical())
        if "DTEND" not in single:
            start = _time_value(single, "DTSTART")
            duration = getattr(single.get("DURATION"), "dt", None)
            if isinstance(duration, timedelta):
                single.add("dtend", start + duration)
            else:
                single.add("dtend", start if isinstance(start, datetime) else start + timedelta(1))
        if "RECURRENCE-ID" not in single and str(single["UID"]) in series.recurring:
            continue
        event = _event(name, single, tz, series, cancel_all)
        if event.start >= window_end:
            found.append(replace(event, outside=True))
            if limit is not None and len(found) > limit:
                raise _too_many(name, "der Kalender", limit, "max_per_calendar")
    return found


def _series(
    component: Any, tz: ZoneInfo, cancel_all: bool, components: list[Any], timezones: list[Any]
) -> CalendarSeries:
    """The series of a master VEVENT, with its overrides and time zones as a calendar."""
    uid = str(component["UID"])
    raw_start = _time_value(component, "DTSTART")
    all_day = not isinstance(raw_start, datetime)
    if "DTEND" in component:
        raw_end = _time_value(component, "DTEND")
    else:
        duration = getattr(component.get("DURATION"), "dt", None)
        if isinstance(duration, timedelta):
            raw_end = raw_start + duration
        else:
            raw_end = raw_start + timedelta(days=1) if all_day else raw_start
    start, end = _to_utc(raw_start, tz), _to_utc(raw_end, tz)
    rules = component.get("RRULE")
    rule_prop = rules[0] if isinstance(rules, list) else rules
    rule = rule_prop.to_ical().decode() if rule_prop is not None else ""
    exdates: list[str] = []
    raw_exdates = component.get("EXDATE")
    for prop in raw_exdates if isinstance(raw_exdates, list) else [raw_exdates]:
        for value in getattr(prop, "dts", ()):
            if isinstance(value.dt, date):
                exdates.append(_to_utc(value.dt, tz).isoformat())
    rdates = component.get("RDATE")
    rdate_text = ""
    for prop in rdates if isinstance(rdates, list) else [rdates]:
        if prop is not None:
            rdate_text += prop.to_ical().decode()
    title = " ".join(_plain_text(str(component.get("SUMMARY", ""))).split())
    location = ", ".join(
        " ".join(line.split())
        for line in _plain_text(str(component.get("LOCATION", ""))).splitlines()
        if line.strip()
    )
    description = _plain_text(str(component.get("DESCRIPTION", "")))
    link = _http_link(component.get("URL"))
    sequence = component.get("SEQUENCE", 0)
    status = str(component.get("STATUS", "")).upper()
    fields = [title, start.isoformat(), end.isoformat(), location, description, link or ""]
    encoded = json.dumps([*fields, rule, rdate_text], ensure_ascii=False).encode()
    return CalendarSeries(
        uid=uid,
        title=title,
        description=description,
        location=location,
        link=link,
        start=start,
        end=end,
        all_day=all_day,
        rule=rule,
        exdates=tuple(sorted(set(exdates))),
        last=_last(rule, raw_start, tz) if rule and not rdate_text else None,
        cancelled=cancel_all or status == "CANCELLED",
        sequence=sequence if isinstance(sequence, int) else 0,
        categories=_categories(component.get("CATEGORIES")),
        ics=_series_calendar(components, timezones),
        content_hash=hashlib.sha256(encoded).hexdigest(),
    )


def _last(rule: str, first: date, tz: ZoneInfo) -> datetime | None:
    """The last start by an RRULE with UNTIL or COUNT (counted up to _LAST_SCAN), in UTC."""
    upper = rule.upper()
    if "UNTIL=" not in upper and "COUNT=" not in upper:
        return None
    start = first if isinstance(first, datetime) else datetime.combine(first, time())
    try:
        recurrence = dateutil_rrule.rrulestr(rule, dtstart=start)
    except (ValueError, TypeError, OverflowError):
        return None
    last = None
    for count, when in enumerate(recurrence, start=1):
        if count > _LAST_SCAN:
            return None
        last = when
    if last is None:
        return None
    return _to_utc(last if isinstance(first, datetime) else last.date(), tz)


def _series_calendar(components: list[Any], timezones: list[Any]) -> str:
    """The VEVENTs of a series (master and overrides) and the VTIMEZONEs they name."""
    out = icalendar.Calendar()
    out.add("prodid", DEFAULT_PRODID)
    out.add("version", "2.0")
    tzids: set[str] = set()
    events = []
    for component in components:
        copy = icalendar.Event.from_ical(component.to_ical())
        for prop in ("DTSTART", "DTEND", "RECURRENCE-ID", "EXDATE", "RDATE"):
            values = copy.get(prop)
            for value in values if isinstance(values, list) else [values]:
                tzid = getattr(value, "params", {}).get("TZID")
                if tzid:
                    tzids.add(str(tzid))
        events.append(copy)
    for timezone in timezones:
        if str(timezone.get("TZID")) in tzids:
            out.add_component(timezone)
            tzids.discard(str(timezone.get("TZID")))
    for tzid in sorted(tzids):  # named but not in the calendar (common): generated, once
        generated = _generated_timezone(tzid)
        if generated is not None:
            out.add_component(generated)
    for event in events:
        out.add_component(event)
    return str(out.to_ical().decode())


@functools.cache
def _generated_timezone(tzid: str) -> icalendar.Timezone | None:
    """A VTIMEZONE for an IANA name (None for a name that is none); the same for every series."""
    try:
        return icalendar.Timezone.from_tzid(tzid)
    except (ValueError, KeyError, OSError):
        return None


def series_ics(
    series_ics_text: str,
    uid: str,
    *,
    method: Literal["PUBLISH", "CANCEL"],
    sequence: int,
    organizer_name: str,
    organizer_email: str,
    prodid: str = DEFAULT_PRODID,
) -> bytes:
    """The calendar attachment of a whole series, from the text :attr:`CalendarSeries.ics`.

    Every VEVENT (master and overrides, with their RECURRENCE-ID) gets the UID ``ics_uid(uid)``,
    ``sequence`` and the organizer, so a calendar imports it as one series; a CANCEL carries
    only the master, with STATUS:CANCELLED (the whole series is called off).
    """
    email = organizer_email.strip()
    if "@" not in email or any(ch.isspace() or not ch.isprintable() for ch in email):
        raise ValueError(f"not an e-mail address: {organizer_email!r}")
    source = icalendar.Calendar.from_ical(series_ics_text)
    out = icalendar.Calendar()
    out.add("prodid", prodid)
    out.add("version", "2.0")
    out.add("calscale", "GREGORIAN")
    out.add("method", method)
    for timezone in source.walk("VTIMEZONE"):
        out.add_component(timezone)
    organizer = icalendar.vCalAddress(f"mailto:{email}")
    organizer.params["CN"] = icalendar.vText(" ".join(organizer_name.replace('"', "'").split()))
    stamp = datetime.now(UTC).replace(microsecond=0)
    for event in source.walk("VEVENT"):
        if method == "CANCEL" and "RECURRENCE-ID" in event:
            continue
        for prop in ("UID", "DTSTAMP", "SEQUENCE", "ORGANIZER", "STATUS"):
            event.pop(prop, None)
        event.add("uid", ics_uid(uid))
        event.add("dtstamp", stamp)
        event.add("sequence", sequence)
        event.add("organizer", organizer)
        event.add("status", "CANCELLED" if method == "CANCEL" else "CONFIRMED")
        out.add_component(event)
    ics: bytes = out.to_ical()
    return ics


def _too_many(name: str, what: str, limit: int, key: str) -> SourceError:
    return SourceError(
        name, f"Kalender abgelehnt: {what} hat mehr als {limit} Termine im Abrufzeitraum ({key})"
    )


def _expand(
    name: str,
    calendar: icalendar.Calendar,
    start: datetime,
    end: datetime,
    max_per_series: int | None,
    max_per_calendar: int | None,
) -> list[Any]:
    """The occurrences between ``start`` and ``end`` as components, within the caps.

    recurring_ical_events expands a rule with dateutil's ``rrule.between``, which builds the
    whole list first; each rule is therefore counted lazily (``xafter``) before, and the
    occurrences are counted again while they are turned into components."""
    query = recurring_ical_events.of(calendar)
    total = 0
    components: list[Any] = []
    for series in query.series:
        if max_per_series is not None:
            _check_rules(name, series, start, end, max_per_series)
        for count, occurrence in enumerate(series.between(start, end), start=1):
            total += 1
            if max_per_series is not None and count > max_per_series:
                raise _too_many(name, "eine Terminserie", max_per_series, "max_per_series")
            if max_per_calendar is not None and total > max_per_calendar:
                raise _too_many(name, "der Kalender", max_per_calendar, "max_per_calendar")
            components.append(occurrence.as_component(query.keep_recurrence_attributes))
    return components


def _check_rules(name: str, series: Any, start: datetime, end: datetime, limit: int) -> None:
    """Count the starts each RRULE of ``series`` gives in the span, up to ``limit + 1``."""
    recurrence = getattr(series, "recurrence", None)
    rules = getattr(recurrence, "rrules", None) or ()
    tzinfo = getattr(recurrence, "tzinfo", None)
    for rule in rules:
        first = getattr(rule, "_dtstart", None)
        # dateutil compares naive with naive and aware with aware only.
        if isinstance(first, datetime) and first.tzinfo is None:
            low, high = start.replace(tzinfo=None), end.replace(tzinfo=None)
        elif isinstance(first, datetime):
            low, high = (
                start.astimezone(tzinfo or first.tzinfo),
                end.astimezone(tzinfo or first.tzinfo),
            )
        else:
            continue
        for count, when in enumerate(rule.xafter(low, inc=True), start=1):
            if when > high:
                break
            if count > limit:
                raise _too_many(name, "eine Terminserie", limit, "max_per_series")


def ics_uid(key: str) -> str:
    """Return ``key`` as a UID every calendar client takes: ASCII letters, digits and ``@._+=-``.

    A key that needs changing gets a short hash of itself appended, so distinct keys stay distinct.
    """
    safe = _UID_UNSAFE.sub("-", key)
    if safe == key and len(key) <= _UID_MAX:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{safe[: _UID_MAX - 17]}-{digest}"


def event_ics(
    event: CalendarEvent,
    *,
    method: Literal["PUBLISH", "CANCEL"],
    organizer_name: str,
    organizer_email: str,
    prodid: str = DEFAULT_PRODID,
    tz: ZoneInfo = BERLIN,
    series: str | None = None,
) -> bytes:
    """Return a standalone VCALENDAR with ``method`` and one VEVENT for this occurrence.

    With ``series`` (the series' UID, ``event.key`` being ``<series>@<original start>``), the
    VEVENT is that occurrence of the series: its UID is the series' and RECURRENCE-ID the
    original start, so a calendar changes or removes just this occurrence.

    The VEVENT's UID is ``ics_uid(event.key)``, so a CANCEL matches the PUBLISH sent before it;
    SEQUENCE is ``event.sequence`` as given. Times are in UTC; an all-day event gets DATE values,
    its dates taken in ``tz`` (the ``tz`` it was parsed with). A CANCEL, or a cancelled event,
    carries STATUS:CANCELLED, otherwise STATUS:CONFIRMED.

    Raises:
        ValueError: ``method`` is unknown or ``organizer_email`` is not a plain address.
    """
    if method not in ("PUBLISH", "CANCEL"):
        raise ValueError(f"unknown method {method!r}")
    email = organizer_email.strip()
    if "@" not in email or any(ch.isspace() or not ch.isprintable() for ch in email):
        raise ValueError(f"not an e-mail address: {organizer_email!r}")

    vevent = icalendar.Event()
    prefix = f"{series}@"
    if series is not None and event.key.startswith(prefix):
        vevent.add("uid", ics_uid(series))
        original_id = event.key[len(prefix) :]
        if len(original_id) == 8:
            vevent.add("recurrence-id", datetime.strptime(original_id, "%Y%m%d").date())
        else:
            original = datetime.strptime(original_id, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            vevent.add("recurrence-id", original)
    else:
        vevent.add("uid", ics_uid(event.key))
    vevent.add("dtstamp", datetime.now(UTC).replace(microsecond=0))
    if event.all_day:
        first = event.start.astimezone(tz).date()
        vevent.add("dtstart", first)
        vevent.add("dtend", max(event.end.astimezone(tz).date(), first + timedelta(days=1)))
    else:
        vevent.add("dtstart", event.start.astimezone(UTC))
        vevent.add("dtend", event.end.astimezone(UTC))
    vevent.add("summary", event.title)
    if event.description:
        vevent.add("description", event.description)
    if event.location:
        vevent.add("location", event.location)
    if event.link:
        vevent.add("url", event.link)
    if event.categories:
        vevent.add("categories", list(event.categories))
    vevent.add("sequence", event.sequence)
    cancelled = method == "CANCEL" or event.cancelled
    vevent.add("status", "CANCELLED" if cancelled else "CONFIRMED")
    vevent.add("transp", "TRANSPARENT" if cancelled else "OPAQUE")
    organizer = icalendar.vCalAddress(f"mailto:{email}")
    # Outlook does not read RFC 6868 escapes, which icalendar would use for double quotes.
    organizer.params["CN"] = icalendar.vText(" ".join(organizer_name.replace('"', "'").split()))
    vevent.add("organizer", organizer)

    calendar = icalendar.Calendar()
    calendar.add("prodid", prodid)
    calendar.add("version", "2.0")
    calendar.add("calscale", "GREGORIAN")
    calendar.add("method", method)
    calendar.add_component(vevent)
    ics: bytes = calendar.to_ical()
    return ics


def _load(name: str, data: bytes) -> icalendar.Calendar:
    """Parse ``data`` as exactly one VCALENDAR."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Older exports (Outlook, Windows tools) write Windows-1252.
        text = data.decode("cp1252", errors="replace")
    try:
        component = icalendar.Calendar.from_ical(text)
    except _PARSE_ERRORS as exc:
        raise SourceError(
            name, f"fehlerhafter Kalender: {_not_a_calendar(text)}", detail=str(exc)
        ) from exc
    if not isinstance(component, icalendar.Calendar):
        raise SourceError(
            name,
            "fehlerhafter Kalender: kein VCALENDAR",
            detail=f"{str(component.name)[:40]!r} instead of VCALENDAR",
        )
    return component


def _not_a_calendar(text: str) -> str:
    """Why ``text`` is no iCalendar data, in words that repeat nothing of it."""
    head = text.lstrip()[:512].lower()
    if not head:
        return "das Dokument ist leer"
    if "<html" in head or "<!doctype html" in head:
        return "eine HTML-Seite statt iCalendar-Daten"
    if head.startswith(("<?xml", "<rss", "<feed")):
        return "ein XML-Dokument (Feed?) statt iCalendar-Daten"
    if head.startswith(("{", "[")):
        return "JSON statt iCalendar-Daten"
    if not head.startswith("begin:vcalendar"):
        return "keine iCalendar-Daten (BEGIN:VCALENDAR fehlt)"
    return "die iCalendar-Daten sind nicht lesbar"


def _prepare(name: str, calendar: icalendar.Calendar, tz: ZoneInfo) -> _Series:
    """Check the source events, give UID-less ones a stable UID, and note what series they form."""
    series = _Series()
    for component in calendar.walk("VEVENT"):
        try:
            start = _time_value(component, "DTSTART")
            if "UID" not in component:
                seed = f"{component.get('SUMMARY', '')}\n{start.isoformat()}"
                digest = hashlib.sha256(seed.encode()).hexdigest()[:32]
                component["UID"] = icalendar.vText(f"generated-{digest}")
            uid = str(component["UID"])
            if "RECURRENCE-ID" not in component:
                if str(component.get("STATUS", "")).upper() == "CANCELLED":
                    series.cancelled.add(uid)
                if "RRULE" in component or "RDATE" in component:
                    series.recurring.add(uid)
                continue
            series.recurring.add(uid)
            original = _time_value(component, "RECURRENCE-ID")
            moved = _difference(start, original)
            if _this_and_future(component) and moved is not None:
                series.moves[(uid, _start_id(original, tz))] = moved
        except _PARSE_ERRORS as exc:
            uid = _short(str(component.get("UID", "?")))
            raise SourceError(
                name,
                f"fehlerhafter Kalender: Termin {uid} ohne lesbaren Beginn (DTSTART)",
                detail=str(exc),
            ) from exc
    return series


def _event(
    name: str, component: Any, tz: ZoneInfo, series: _Series, cancel_all: bool
) -> CalendarEvent:
    """Turn one occurrence, as recurring_ical_events returns it, into a CalendarEvent."""
    uid = str(component["UID"])
    raw_start = _time_value(component, "DTSTART")
    raw_end = _time_value(component, "DTEND")  # recurring_ical_events derives it if missing
    all_day = not isinstance(raw_start, datetime)
    start, end = _to_utc(raw_start, tz), _to_utc(raw_end, tz)

    key = uid
    if uid in series.recurring:
        # recurring_ical_events sets RECURRENCE-ID on every occurrence: the original start.
        original = _time_value(component, "RECURRENCE-ID")
        if _this_and_future(component):
            # Occurrences after such an override all carry its RECURRENCE-ID; undo the move.
            moved = series.moves.get((uid, _start_id(original, tz)))
            if moved is not None:
                original = raw_start - moved
        key = f"{uid}@{_start_id(original, tz)}"
        series_uid: str | None = uid
    else:
        series_uid = None

    sequence = component.get("SEQUENCE", 0)
    if not isinstance(sequence, int):
        raise SourceError(
            name,
            f"fehlerhafter Kalender: Termin {_short(uid)}: SEQUENCE ist keine Zahl",
            detail=f"SEQUENCE {str(sequence)[:40]!r}",
        )
    title = " ".join(_plain_text(str(component.get("SUMMARY", ""))).split())
    location = ", ".join(
        " ".join(line.split())
        for line in _plain_text(str(component.get("LOCATION", ""))).splitlines()
        if line.strip()
    )
    description = _plain_text(str(component.get("DESCRIPTION", "")))
    link = _http_link(component.get("URL"))
    status = str(component.get("STATUS", "")).upper()
    return CalendarEvent(
        key=key,
        uid=uid,
        title=title,
        description=description,
        location=location,
        link=link,
        start=start,
        end=end,
        all_day=all_day,
        cancelled=cancel_all or status == "CANCELLED" or uid in series.cancelled,
        sequence=int(sequence),
        categories=_categories(component.get("CATEGORIES")),
        content_hash=_content_hash(title, start, end, location, description, link),
        series=series_uid,
    )


def _short(uid: str) -> str:
    """A UID as an error names it: in quotes, one line, at most 60 characters."""
    uid = " ".join(uid.split())
    return f"„{uid if len(uid) <= 60 else uid[:59] + '…'}“"


def _time_value(component: Any, prop_name: str) -> date:
    """The DATE or DATE-TIME value of a property (a ``datetime`` is a ``date`` too)."""
    value = getattr(component.get(prop_name), "dt", None)
    if not isinstance(value, date):
        raise ValueError(f"{prop_name} is missing or not a date or date-time")
    return value


def _this_and_future(component: Any) -> bool:
    params = getattr(component.get("RECURRENCE-ID"), "params", {})
    return str(params.get("RANGE", "")).upper() == "THISANDFUTURE"


def _to_utc(value: date, tz: ZoneInfo) -> datetime:
    """A DATE is midnight in ``tz``; a floating DATE-TIME is read in ``tz``."""
    if not isinstance(value, datetime):
        value = datetime.combine(value, time(), tz)
    elif value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value.astimezone(UTC)


def _start_id(value: date, tz: ZoneInfo) -> str:
    """The original start as it appears in keys: ``20250301`` or ``20250301T090000Z``."""
    if not isinstance(value, datetime):
        return value.strftime("%Y%m%d")
    return _to_utc(value, tz).strftime("%Y%m%dT%H%M%SZ")


def _difference(later: date, earlier: date) -> timedelta | None:
    """``later - earlier`` when both are dates or both date-times of the same kind, else None."""
    if isinstance(later, datetime) != isinstance(earlier, datetime):
        return None
    if (
        isinstance(later, datetime)
        and isinstance(earlier, datetime)
        and (later.tzinfo is None) != (earlier.tzinfo is None)
    ):
        return None
    return later - earlier


def _content_hash(
    title: str, start: datetime, end: datetime, location: str, description: str, link: str | None
) -> str:
    fields = [title, start.isoformat(), end.isoformat(), location, description, link or ""]
    encoded = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


def _http_link(value: object) -> str | None:
    if value is None:
        return None
    url = str(value).strip()
    parts = urlsplit(url)
    if (
        parts.scheme.lower() in ("http", "https")
        and parts.netloc
        and not any(ch.isspace() for ch in url)
    ):
        return url
    return None


def _categories(value: object) -> tuple[str, ...]:
    """CATEGORIES may repeat and each holds a list: all names, in order, each once."""
    seen: dict[str, None] = {}
    for prop in value if isinstance(value, list) else [value]:
        for category in getattr(prop, "cats", ()):
            text = " ".join(str(category).split())
            if text:
                seen[text] = None
    return tuple(seen)


def _plain_text(text: str) -> str:
    """Text with LF line ends, HTML (as Google Calendar writes it) reduced to text (script and
    style content dropped), entities decoded (also in text without tags: "Caf&#233;"), trimmed."""
    # Some generators escape CR as "\\r", which RFC 5545 lacks; icalendar leaves it as it is.
    text = text.replace("\\r\n", "\n").replace("\r\n", "\n").replace("\r", "\n")
    if _HTML_TAG.search(text):
        extractor = _TextExtractor()
        extractor.feed(text)
        extractor.close()
        text = "".join(extractor.parts)
    else:
        text = html.unescape(text)
    lines = [line.replace("\xa0", " ").rstrip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


class _TextExtractor(HTMLParser):
    """Collect the text of an HTML fragment; line breaks for blocks, link targets kept."""

    _BLOCKS = frozenset(
        {"p", "div", "ul", "ol", "li", "table", "tr", "h1", "h2", "h3", "h4", "h5", "h6"}
    )

    _HIDDEN = frozenset({"script", "style", "template"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._href: str | None = None
        self._anchor_at = 0
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden += 1
        elif tag == "br" or tag in self._BLOCKS:
            self.parts.append("\n")
        if tag == "li":
            self.parts.append("- ")
        elif tag == "a":
            self._href = _http_link(dict(attrs).get("href"))
            self._anchor_at = len(self.parts)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in self._BLOCKS and tag != "li":  # the next item or the list's end breaks the line
            self.parts.append("\n")
        elif tag == "a" and self._href:
            anchor = "".join(self.parts[self._anchor_at :]).strip()
            if anchor and not anchor.lower().startswith(("http://", "https://", "www.")):
                self.parts.append(f" ({self._href})")
            elif not anchor:
                self.parts.append(self._href)
            self._href = None

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)
