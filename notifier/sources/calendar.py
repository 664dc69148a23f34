"""iCalendar feeds turned into event occurrences, and ``.ics`` attachments for one occurrence.

``parse_calendar`` reads a feed (bytes as fetched), expands recurring series inside a time window
and returns one :class:`CalendarEvent` per occurrence, with times in UTC and text as plain text.
``event_ics`` builds the calendar attachment of an invitation or cancellation for one occurrence.

Both are pure: no network, no database, no clock except ``DTSTAMP``.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from html.parser import HTMLParser
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import icalendar
import recurring_ical_events

from notifier.errors import SourceError

__all__ = ["DEFAULT_PRODID", "CalendarEvent", "event_ics", "ics_uid", "parse_calendar"]

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
        return []
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
    except _PARSE_ERRORS as exc:
        raise SourceError(
            name, "fehlerhafter Kalender: ein Termin ist nicht lesbar", detail=str(exc)
        ) from exc
    inside = [
        e
        for e in events
        if e.start < window_end and (e.end > window_start or e.start >= window_start)
    ]
    return sorted(inside, key=lambda e: (e.start, e.key))


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
) -> bytes:
    """Return a standalone VCALENDAR with ``method`` and one VEVENT for this occurrence.

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
