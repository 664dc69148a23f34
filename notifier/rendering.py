"""Jinja2 environment and message building: one HTML and one plain-text part per recipient.

What is the same for every recipient of an item (subject, the Markdown body turned into HTML, the
calendar attachment) is prepared once per item and notice; only the greeting, the reason line and
the addresses differ per recipient. Briefings are prepared per recipient, since each holds that
person's own items.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime as rfc2822_date
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import css_inline
from babel.dates import format_datetime
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from . import mime
from .config import Settings
from .db.models import Item, ItemKind, Rhythm
from .markdown_text import PARSER, markdown_text, tokens_text

if TYPE_CHECKING:
    from .dkim import Signer

_MARKDOWN = PARSER
_POLICY = policy.SMTP.clone(max_line_length=998)
GENERAL_TOPIC = "Allgemein"


def markdown_html(text: str) -> Markup:
    """CommonMark as HTML; raw HTML in the text is escaped, not passed through."""
    return Markup(_MARKDOWN.render(text))  # noqa: S704 - raw HTML disabled


def german_datetime(value: datetime, tz: ZoneInfo) -> str:
    """``Montag, 7. Dezember 2026, 09:00 Uhr`` in the given zone."""
    return format_datetime(value, "EEEE, d. MMMM y, HH:mm 'Uhr'", tzinfo=tz, locale="de_DE")


def german_date(value: datetime, tz: ZoneInfo) -> str:
    """``Montag, 7. Dezember 2026`` in the given zone."""
    return format_datetime(value, "EEEE, d. MMMM y", tzinfo=tz, locale="de_DE")


def german_span(start: datetime, end: datetime | None, all_day: bool, tz: ZoneInfo) -> str:
    """When an event takes place, in words: one day, a time range, or from … to …."""
    if all_day:
        last = (end - timedelta(days=1)) if end and end - start > timedelta(days=1) else None
        first = german_date(start, tz)
        return first if last is None else f"{first} bis {german_date(last, tz)}"
    if end is None or end <= start:
        return german_datetime(start, tz)
    if start.astimezone(tz).date() == end.astimezone(tz).date():
        to = format_datetime(end, "HH:mm", tzinfo=tz, locale="de_DE")
        since = format_datetime(start, "EEEE, d. MMMM y, HH:mm", tzinfo=tz, locale="de_DE")
        return f"{since} bis {to} Uhr"
    return f"{german_datetime(start, tz)} bis {german_datetime(end, tz)}"


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


@dataclass(frozen=True)
class Recipient:
    email: str
    name: str
    organisation: str
    topics: Sequence[str]  # titles; empty: all topics
    # The signed personal links (see notifier.links); empty in a message without them.
    preferences_url: str = ""
    unsubscribe_url: str = ""
    confirm_url: str = ""  # only in the confirmation of a sign-up

    @property
    def greeting(self) -> str:
        return f"Guten Tag {self.name}," if self.name else "Guten Tag,"

    @property
    def topics_text(self) -> str:
        if not self.topics:
            return "zu allen Themen"
        if len(self.topics) == 1:
            return "zum Thema " + self.topics[0]
        return "zu den Themen " + ", ".join(self.topics[:-1]) + " und " + self.topics[-1]

    @property
    def organisation_text(self) -> str:
        """The organisation as it follows "für": with its article where its name needs one."""
        return organisation_with_article(self.organisation)


# Names that start so take an article after "für" (accusative); a plain place name
# ("für Bitburg") takes none.
_ARTICLES = (
    ("die", ("Verbandsgemeinde", "Ortsgemeinde", "Gemeinde", "Stadt", "Kreisverwaltung",
             "Verwaltung", "Ortsbürgermeisterei")),
    ("den", ("Eifelkreis", "Landkreis", "Kreis ", "Kreistag", "Ortsgemeinderat", "Stadtrat")),
    ("das", ("Projektbüro", "Büro", "Amt ", "Landratsamt")),
)  # fmt: skip


def organisation_with_article(name: str) -> str:
    """``Verbandsgemeinde Speicher`` → ``die Verbandsgemeinde Speicher``, ``Eifelkreis
    Bitburg-Prüm`` → ``den Eifelkreis Bitburg-Prüm``; a place name stays as it is."""
    for article, starts in _ARTICLES:
        if name.startswith(starts):
            return f"{article} {name}"
    return name


# What the templates take from the recipient: the only parts of a message about an item that
# differ between recipients.
PERSONAL_FIELDS = (
    "greeting",
    "organisation",
    "topics_text",
    "preferences_url",
    "unsubscribe_url",
    "organisation_text",
)
_TOKEN = re.compile(r"NOTIFIERFIELD(\d)X")


@dataclass(frozen=True)
class _Placeholder:
    """A recipient whose fields are tokens, for rendering a message skeleton once."""

    email: str = "placeholder@invalid"
    name: str = "NOTIFIERFIELD0X"
    greeting: str = "NOTIFIERFIELD0X"
    organisation: str = "NOTIFIERFIELD1X"
    topics_text: str = "NOTIFIERFIELD2X"
    preferences_url: str = "NOTIFIERFIELD3X"
    unsubscribe_url: str = "NOTIFIERFIELD4X"
    organisation_text: str = "NOTIFIERFIELD5X"


_UNLINKED = _Placeholder(preferences_url="", unsubscribe_url="")


def _split(rendered: str) -> list[str | int]:
    """Alternate literal text and field indexes."""
    parts: list[str | int] = []
    for i, piece in enumerate(_TOKEN.split(rendered)):
        parts.append(int(piece) if i % 2 else piece)
    return parts


def _html_text(value: str) -> str:
    """Escape text as the HTML serializer of the CSS inliner does (so a skeleton filled in
    equals the page rendered for the recipient)."""
    return (
        value.replace("&", "&amp;")
        .replace("\xa0", "&nbsp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
    )


@dataclass(frozen=True)
class Prepared:
    """What a message has before it is personalised."""

    template: str  # announcement, update, event or briefing
    subject: str
    context: dict[str, Any] = field(default_factory=dict)
    attachment: tuple[bytes, str] | None = None  # (iCalendar bytes, METHOD)
    attachment_name: str = "termin.ics"
    # Sent to many recipients: render once with placeholders, then fill in per recipient.
    shared: bool = True
    # Newsletter mail (List-Id, List-Unsubscribe, Precedence: bulk, Feedback-ID); False for the
    # transactional service messages to one person.
    bulk: bool = True
    skeleton: dict[str, Any] = field(default_factory=dict, compare=False)


class MessageIds:
    """Message-IDs ``<outbox id>.<keyed hash>@domain``.

    The hash of the outbox row and subscriber is keyed with the database's secret (see
    :func:`notifier.db.queries.message_id_key`): a retried row keeps its Message-ID, while two
    installations (whose outbox ids repeat) never send the same one. Everything but the hash
    is prepared once; the sender makes thousands per second.
    """

    def __init__(self, domain: str, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the Message-ID key needs at least 16 bytes")
        self._key = key
        self._tail = f"@{domain}>"

    def __call__(self, outbox_id: int, subscriber_id: int) -> str:
        """The Message-ID of one outbox row (the same for each of its attempts)."""
        digest = hashlib.blake2b(
            f"{outbox_id}:{subscriber_id}".encode(), key=self._key, digest_size=12
        ).hexdigest()
        return f"<{outbox_id}.{digest}{self._tail}"


class Renderer:
    """Renders e-mails from the templates of ``email/`` (an override folder's first, then the
    package's) and builds MIME messages."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.mail = settings.mail
        # Signs every message build_bytes makes; loaded once (raises DkimKeyError for a key
        # that cannot be used). Imported here: without DKIM a process does without OpenSSL.
        self.signer: Signer | None = None
        if settings.dkim.enabled:
            from .dkim import Signer

            self.signer = Signer.from_settings(settings)
        self.tz = settings.scheduler.tz
        self.topic_titles = {t.key: t.title for t in settings.topics}
        self.topic_order = {t.key: i for i, t in enumerate(settings.topics)}
        self.env = Environment(
            loader=FileSystemLoader(settings.template_dirs("email")),
            autoescape=select_autoescape(["html"]),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self.env.filters["datum_zeit"] = functools.partial(german_datetime, tz=self.tz)
        self.env.filters["datum"] = functools.partial(german_date, tz=self.tz)
        self.env.filters["markdown_text"] = markdown_text
        self.env.globals["zeitraum"] = functools.partial(german_span, tz=self.tz)
        self.env.globals["wann"] = self.when
        self._inliner = css_inline.CSSInliner(keep_style_tags=False, load_remote_stylesheets=False)

    def topic_list(self, keys: Sequence[str]) -> list[str]:
        return [self.topic_titles.get(k, k) for k in keys]

    # -- preparing ---------------------------------------------------------------------------

    def prepare(self, item: Item, notice: str = "") -> Prepared:
        """Everything of a message about ``item`` that is the same for every recipient."""
        context: dict[str, Any] = {"item": item, "notice": notice}
        if item.kind is ItemKind.announcement:
            # One parse for both parts: an announcement may be megabytes long.
            tokens = _MARKDOWN.parse(item.body)
            html = _MARKDOWN.renderer.render(tokens, _MARKDOWN.options, {})
            context["body_html"] = Markup(html)  # noqa: S704 - raw HTML disabled
            context["body_text"] = tokens_text(tokens)
            return Prepared("announcement", item.subject, context)
        if item.kind is ItemKind.update:
            return Prepared("update", item.subject, context)
        return self._prepare_event(item, notice, context)

    def _prepare_event(self, item: Item, notice: str, context: dict[str, Any]) -> Prepared:
        assert item.starts_at is not None
        kind, _, arg = notice.partition(":")
        day = self._day(item.starts_at)
        series = item.recurrence is not None
        title = f"Terminreihe {item.subject}" if series else item.subject
        context["series_words"] = (item.recurrence or {}).get("words")
        context["changes"] = []
        if kind == "reminder":
            days = int(arg)
            context["reminder_days"] = days
            when = "morgen" if days == 1 else f"in {days} Tagen"
            subject = f"Erinnerung: {item.subject} ({when}, {day})"
        elif kind == "changed":
            fields = self._change_fields(item, arg)
            context["changes"] = self._change_lines(fields)
            subject = self._change_subject(item, title, fields, day)
        elif kind == "cancelled":
            subject = f"Abgesagt: {title}" if series else f"Abgesagt: {item.subject} am {day}"
        elif kind == "restored":
            subject = (
                f"Findet doch statt: {title}"
                if series
                else f"Findet doch statt: {item.subject} am {day}"
            )
        elif series:
            subject = f"Neue Terminreihe: {item.subject}, {context['series_words']}"
        else:
            subject = f"Termin: {item.subject} am {day}"
        context["notice_kind"] = kind or "new"
        method = "CANCEL" if kind == "cancelled" else "PUBLISH"
        return Prepared("event", subject, context, (self.event_ics(item, method), method))

    def _day(self, value: datetime) -> str:
        return format_datetime(value, "d. MMMM y", tzinfo=self.tz, locale="de_DE")

    def _clock(self, value: datetime) -> str:
        return format_datetime(value, "HH:mm", tzinfo=self.tz, locale="de_DE") + " Uhr"

    @staticmethod
    def _change_fields(item: Item, number: str) -> dict[str, list[Any]]:
        for entry in item.change_log or []:
            if str(entry.get("n")) == number:
                fields: dict[str, list[Any]] = entry.get("fields") or {}
                return fields
        return {}

    def _change_subject(
        self, item: Item, title: str, fields: dict[str, list[Any]], day: str
    ) -> str:
        """ "Verschoben: … auf 14. Januar 2027" where a new date or time says it all."""
        old, new = (fields.get("start") or [None, None])[:2]
        if item.recurrence is None and old and new:
            before, after = datetime.fromisoformat(old), datetime.fromisoformat(new)
            if self._day(before) != self._day(after):
                return f"Verschoben: {item.subject} auf {self._day(after)}"
            if not item.all_day:
                return f"Verschoben: {item.subject} am {day} auf {self._clock(after)}"
        if set(fields) == {"location"} and item.recurrence is None:
            return f"Neuer Ort: {item.subject} am {day}"
        if item.recurrence is not None:
            return f"Geändert: {title}"
        return f"Geändert: {item.subject} am {day}"

    def _change_lines(self, fields: dict[str, list[Any]]) -> list[str]:
        """One German line per changed field: "Beginn: neu 15:00 Uhr (bisher 14:00 Uhr)"."""

        def line(label: str, old: str | None, new: str | None) -> str:
            if not new:
                return f"{label}: entfällt (bisher {old})"
            return f"{label}: neu {new}" + (f" (bisher {old})" if old else "")

        lines: list[str] = []
        if "series" in fields:
            lines.append(line("Terminreihe", *fields["series"]))
        if "title" in fields:
            lines.append(line("Titel", *fields["title"]))
        all_day = bool((fields.get("all_day") or [False, False])[1])
        starts = [datetime.fromisoformat(v) if v else None for v in fields.get("start", [])]
        ends = [datetime.fromisoformat(v) if v else None for v in fields.get("end", [])]
        if starts:
            old, new = starts
            if old is None or new is None or self._day(old) != self._day(new):
                lines.append(
                    line(
                        "Datum",
                        german_date(old, self.tz) if old else None,
                        german_date(new, self.tz) if new else None,
                    )
                )
            moved = new is not None and (old is None or self._clock(old) != self._clock(new))
            if new is not None and moved and not all_day:
                lines.append(line("Beginn", self._clock(old) if old else None, self._clock(new)))
        if ends and not all_day:
            old, new = ends
            if new is not None and (old is None or self._clock(old) != self._clock(new)):
                lines.append(line("Ende", self._clock(old) if old else None, self._clock(new)))
        if "location" in fields:
            lines.append(line("Ort", *fields["location"]))
        if "description" in fields:
            lines.append("Beschreibung: geändert")
        if "link" in fields:
            lines.append(line("Link", *fields["link"]))
        return lines

    def when(self, item: Item) -> str:
        """When an event takes place in words; a series by its rule."""
        if item.recurrence is not None:
            return str(item.recurrence.get("words") or "")
        assert item.starts_at is not None
        return german_span(item.starts_at, item.ends_at, item.all_day, self.tz)

    def event_ics(self, item: Item, method: str) -> bytes:
        """The calendar file of an event item (METHOD PUBLISH or CANCEL): one VEVENT; for a
        series the whole series (RRULE, EXDATE, overrides); for an occurrence of a series the
        VEVENT of that occurrence (the series' UID, RECURRENCE-ID)."""
        assert item.starts_at is not None
        # Imported here: iCalendar support is only loaded once an event is sent.
        from .sources.calendar import CalendarEvent, event_ics, series_ics

        if item.recurrence is not None and item.recurrence.get("ics"):
            return series_ics(
                str(item.recurrence["ics"]),
                item.external_key or f"item-{item.id}",
                method="CANCEL" if method == "CANCEL" else "PUBLISH",
                sequence=item.change_count,
                organizer_name=self.mail.sender_name,
                organizer_email=self.mail.sender_address,
            )
        event = CalendarEvent(
            key=item.external_key or f"item-{item.id}",
            uid=item.external_key or f"item-{item.id}",
            title=item.subject,
            description=item.body,
            location=item.location or "",
            link=item.link,
            start=item.starts_at,
            end=item.ends_at or item.starts_at,
            all_day=item.all_day,
            cancelled=method == "CANCEL" or item.event_cancelled,
            sequence=item.change_count,
            categories=(),
            content_hash=item.content_hash or "",
        )
        return event_ics(
            event,
            method="CANCEL" if method == "CANCEL" else "PUBLISH",
            organizer_name=self.mail.sender_name,
            organizer_email=self.mail.sender_address,
            series=item.series_key,
        )

    def prepare_briefing(
        self,
        rhythm: Rhythm,
        items: Sequence[Item],
        followed: Sequence[str] | None,
        *,
        first: bool = False,
    ) -> Prepared:
        """A briefing: news grouped by topic (newest first), then upcoming events by date, with
        one ``termine.ics`` that holds all its events.

        ``followed`` are the recipient's topic keys (None: all topics); an item is listed under
        the first of its topics the recipient follows. ``first``: the recipient's first
        briefing (it cannot speak of "the last one").
        """
        events = sorted(
            (i for i in items if i.kind is ItemKind.event),
            key=lambda i: i.starts_at or datetime.min.replace(tzinfo=UTC),
        )
        news = sorted(
            (i for i in items if i.kind is not ItemKind.event),
            key=lambda i: i.published_at or i.send_at,
            reverse=True,
        )
        groups: dict[str, list[Item]] = {}
        for item in news:
            keys = sorted(item.topics, key=lambda k: self.topic_order.get(k, len(self.topic_order)))
            mine = [k for k in keys if followed is None or k in followed]
            title = self.topic_titles.get(mine[0], mine[0]) if mine else GENERAL_TOPIC
            groups.setdefault(title, []).append(item)
        order = {t: i for i, t in enumerate(self.topic_titles.values())}
        grouped = sorted(groups.items(), key=lambda g: order.get(g[0], len(order)))
        label = "Tagesüberblick" if rhythm is Rhythm.daily else "Wochenüberblick"
        parts = []
        if news:
            parts.append(_plural(len(news), "Neuigkeit", "Neuigkeiten"))
        if events:
            parts.append(_plural(len(events), "Termin", "Termine"))
        subject = f"Ihr {label}: {', '.join(parts)}"
        bodies = {i.id: markdown_html(i.body) for i in news if i.kind is ItemKind.announcement}
        context = {
            "label": label,
            "groups": grouped,
            "events": events,
            "bodies": bodies,
            "first": first,
        }
        attachment = (self.events_ics(events), "PUBLISH") if events else None
        return Prepared(
            "briefing",
            subject,
            context,
            attachment,
            attachment_name="termine.ics",
            shared=False,
        )

    def events_ics(self, events: Sequence[Item]) -> bytes:
        """One VCALENDAR (METHOD:PUBLISH) with a VEVENT for each of these event items, each as
        :meth:`event_ics` makes it (same UID and SEQUENCE as the event's own message)."""
        import icalendar  # only once an event is sent, like event_ics

        calendar: icalendar.Calendar | None = None
        for item in events:
            single = icalendar.Calendar.from_ical(self.event_ics(item, "PUBLISH"))
            if calendar is None:
                calendar = single
                continue
            for vevent in single.walk("VEVENT"):
                calendar.add_component(vevent)
        assert calendar is not None
        data: bytes = calendar.to_ical()
        return data

    def prepare_service(self, notice: str) -> Prepared:
        """A service message to one person: ``confirm`` (the double opt-in link of a sign-up)
        or ``links`` (the personal preferences link, for someone who signed up again)."""
        subjects = {
            "confirm": f"Bitte bestätigen Sie Ihre Anmeldung bei {self.mail.sender_name}",
            "links": f"Ihr persönlicher Link zu {self.mail.sender_name}",
        }
        if notice not in subjects:
            raise ValueError(f"unknown service message {notice!r}")
        context = {"confirm_hours": self.settings.web.confirm_hours}
        return Prepared(f"service_{notice}", subjects[notice], context, shared=False, bulk=False)

    # -- personalising -----------------------------------------------------------------------

    def render_full(
        self, prepared: Prepared, recipient: Recipient | _Placeholder
    ) -> tuple[str, str]:
        """The HTML (CSS inlined) and plain-text bodies, rendered straight from the templates."""
        context = {
            **prepared.context,
            "subject": prepared.subject,
            "recipient": recipient,
            "mail": self.mail,
        }
        html = self.env.get_template(f"{prepared.template}.html").render(context)
        text = self.env.get_template(f"{prepared.template}.txt").render(context)
        return self._inliner.inline(html), text

    def render(self, prepared: Prepared, recipient: Recipient) -> tuple[str, str]:
        """The HTML and plain-text bodies for one recipient.

        A shared message is rendered (and its CSS inlined) once with placeholders; each
        recipient's copy only fills in their fields, which is what makes bulk sending fast.
        """
        if not prepared.shared:
            return self.render_full(prepared, recipient)
        # One skeleton with the personal links (every bulk message), one without.
        kind = "linked" if recipient.unsubscribe_url else "plain"
        skeleton = prepared.skeleton.get(kind)
        if skeleton is None:
            placeholder = _Placeholder() if recipient.unsubscribe_url else _UNLINKED
            html, text = self.render_full(prepared, placeholder)
            skeleton = prepared.skeleton[kind] = (_split(html), _split(text))
        values = [getattr(recipient, f) for f in PERSONAL_FIELDS]
        escaped = [_html_text(v) for v in values]
        html = "".join(p if isinstance(p, str) else escaped[p] for p in skeleton[0])
        text = "".join(p if isinstance(p, str) else values[p] for p in skeleton[1])
        return html, text

    def build_bytes(
        self, prepared: Prepared, recipient: Recipient, *, message_id: str, date: datetime
    ) -> bytes:
        """The message as bytes, built the fast way (see :mod:`notifier.mime`); it parses to
        the same headers and parts as :meth:`build`. With ``[dkim] enabled`` it starts with its
        DKIM-Signature header(s) (see :mod:`notifier.dkim`).

        Raises ``ValueError`` if a header value would carry a line break (header injection).
        """
        shared = prepared.skeleton.get("headers")
        if shared is None:
            shared = mime.shared_headers(
                subject=prepared.subject,
                sender_name=self.mail.sender_name,
                sender_address=self.mail.sender_address,
                reply_to=self.mail.reply_to,
                list_id=self.mail.list_id,
                attachment=prepared.attachment,
                attachment_name=prepared.attachment_name,
                bulk=prepared.bulk,
                feedback_id=self.mail.feedback_id,
                unsubscribe_mailto=self.mail.unsubscribe_mailto,
            )
            prepared.skeleton["headers"] = shared
        html, text = self.render(prepared, recipient)
        data = mime.personal_message(
            shared,
            to_name=recipient.name,
            to_address=recipient.email,
            message_id=message_id,
            date=date,
            text=text,
            html=html,
            unsubscribe_url=recipient.unsubscribe_url,
        )
        return data if self.signer is None else self.signer.sign(data)

    def build(
        self, prepared: Prepared, recipient: Recipient, *, message_id: str, date: datetime
    ) -> EmailMessage:
        """A multipart/alternative message (multipart/mixed with a calendar file for events);
        the list headers only on bulk mail (see :attr:`Prepared.bulk`). Never signed: this is
        the reference the tests compare :meth:`build_bytes` with; what is sent comes from there.

        Raises ``ValueError`` if a header value would carry a line break (header injection).
        """
        html, text = self.render(prepared, recipient)
        msg = EmailMessage(policy=_POLICY)
        msg["Subject"] = prepared.subject
        msg["From"] = Address(self.mail.sender_name, addr_spec=self.mail.sender_address)
        msg["To"] = Address(recipient.name, addr_spec=recipient.email)
        if self.mail.reply_to:
            msg["Reply-To"] = self.mail.reply_to
        msg["Date"] = rfc2822_date(date)
        msg["Message-ID"] = message_id
        if prepared.bulk:
            msg["List-Id"] = f"{self.mail.sender_name} <{self.mail.list_id}>"
            if self.mail.feedback_id:
                msg["Feedback-ID"] = self.mail.feedback_id
            if recipient.unsubscribe_url:
                msg["List-Unsubscribe"] = mime.list_unsubscribe(
                    recipient.unsubscribe_url, self.mail.unsubscribe_mailto
                )
                msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
            msg["Precedence"] = "bulk"
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
        msg.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
        if prepared.attachment is not None:
            data, method = prepared.attachment
            msg.add_attachment(
                data,
                maintype="text",
                subtype="calendar",
                filename=prepared.attachment_name,
                params={"method": method, "charset": "utf-8"},
            )
        return msg
