"""What the project office does, shared by the office console (:mod:`notifier.web.office`) and
the JSON API (:mod:`notifier.web.api`): check and schedule announcements, edit them until they
are sent, preview them as a recipient sees them, send a test to oneself, push updates from a
CMS, and change subscribers.

Every function works inside the caller's transaction and writes an audit entry naming the actor
(``office:<name>`` or ``api:<token name>``). Bad input raises :class:`FieldErrors` naming every
field that is wrong, with German reasons.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from . import announcements as ann
from . import audit
from .config import Settings
from .db import reports
from .db.models import (
    Item,
    ItemKind,
    ItemStatus,
    Organisation,
    Role,
)
from .delivery.transport import SmtpTransport
from .errors import FieldError, NotFoundError, NotifierError, StateError
from .links import Links
from .rendering import Recipient, Renderer

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]")
MAX_SUBJECT = 300
MAX_BODY = 100_000
_URL = re.compile(r"https?://[^\s\x00-\x1f\x7f<>\"]+")


class FieldErrors(NotifierError, ValueError):
    """Several input fields were refused: ``errors`` maps each field to its German reason."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors = dict(errors)
        super().__init__("; ".join(f"{f}: {p}" for f, p in self.errors.items()))


# -- single fields ---------------------------------------------------------------------------


def check_line(field: str, value: str, *, max_length: int, required: bool = True) -> str:
    """One line of text (it may end up in a mail header): no line breaks or control
    characters. Raises :class:`FieldError`."""
    text = value.strip()
    if required and not text:
        raise FieldError(field, "Bitte ausfüllen.")
    if _CONTROL.search(text):
        raise FieldError(field, "Darf keine Zeilenumbrüche oder Steuerzeichen enthalten.")
    if len(text) > max_length:
        raise FieldError(field, f"Höchstens {max_length} Zeichen.")
    return text


def check_link(field: str, value: str) -> str:
    text = value.strip()
    if not _URL.fullmatch(text) or len(text) > 2000:
        raise FieldError(field, "Eine Adresse wie https://… ohne Leerzeichen angeben.")
    return text


def check_topics(field: str, topics: Sequence[str], known: Sequence[str]) -> list[str]:
    unknown = [t for t in topics if t not in known]
    if unknown:
        raise FieldError(field, "Unbekannte Themen: " + ", ".join(unknown))
    return [k for k in known if k in set(topics)]


def check_roles(field: str, roles: Sequence[str]) -> list[str]:
    unknown = [r for r in roles if r not in Role.__members__]
    if unknown:
        raise FieldError(field, "Unbekannte Funktionen: " + ", ".join(unknown))
    return [r for r in Role.__members__ if r in set(roles)]


def check_scope(field: str, scope: Sequence[str], units: Mapping[str, Organisation]) -> list[str]:
    unknown = [s for s in scope if s not in units]
    if unknown:
        raise FieldError(field, "Unbekannte Einheiten: " + ", ".join(unknown))
    return list(dict.fromkeys(scope))


# -- announcements ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AnnouncementInput:
    """An announcement as a form or a request gives it, not yet checked."""

    subject: str
    body: str
    topics: Sequence[str] = ()
    scope: Sequence[str] = ()  # organisation keys; empty: the whole Kreis
    roles: Sequence[str] = ()  # empty: every role
    send_at: datetime | None = None  # naive: the office's zone; None: now
    important: bool = False


def check_announcement(
    data: AnnouncementInput,
    *,
    settings: Settings,
    units: Mapping[str, Organisation],
    now: datetime,
    source: str,
) -> ann.Draft:
    """Check every field; raises :class:`FieldErrors` naming all that are wrong."""
    errors: dict[str, str] = {}
    subject = body = ""
    topics: list[str] = []
    scope: list[str] = []
    roles: list[str] = []
    try:
        subject = check_line("subject", data.subject, max_length=MAX_SUBJECT)
    except FieldError as exc:
        errors[exc.field] = exc.problem
    body = data.body.replace("\r\n", "\n").strip()
    if not body:
        errors["body"] = "Bitte einen Text schreiben."
    elif len(body) > MAX_BODY:
        errors["body"] = f"Höchstens {MAX_BODY} Zeichen."
    elif "\x00" in body:
        errors["body"] = "Enthält ungültige Zeichen."
    try:
        topics = check_topics("topics", data.topics, settings.topic_keys)
    except FieldError as exc:
        errors[exc.field] = exc.problem
    try:
        scope = check_scope("scope", data.scope, units)
    except FieldError as exc:
        errors[exc.field] = exc.problem
    try:
        roles = check_roles("roles", data.roles)
    except FieldError as exc:
        errors[exc.field] = exc.problem
    send_at = now
    if data.send_at is not None:
        tz: ZoneInfo = settings.scheduler.tz
        local = data.send_at if data.send_at.tzinfo else data.send_at.replace(tzinfo=tz)
        send_at = local.astimezone(ZoneInfo("UTC"))
        if send_at < now - ann.PAST_TOLERANCE:
            errors["send_at"] = "Der Zeitpunkt liegt in der Vergangenheit."
    if errors:
        raise FieldErrors(errors)
    return ann.Draft(subject, body, topics, scope, roles, send_at, data.important, source)


def draft_item(draft: ann.Draft, *, actor: str, now: datetime) -> Item:
    """An item that is not stored (for the audience count and the preview)."""
    item = ann.draft_item(draft, actor=actor, now=now)
    item.id = 0
    item.change_count = 0
    item.all_day = False
    item.event_cancelled = False
    return item


async def edit_announcement(
    session: AsyncSession,
    item_id: int,
    draft: ann.Draft,
    *,
    actor: str,
    now: datetime,
    renderer: Renderer,
    links: Links,
) -> Item:
    """Change a scheduled announcement; raises :class:`NotFoundError`, :class:`StateError`
    once it is sent or cancelled, or :class:`~notifier.errors.AnnouncementRefused` (see
    :func:`notifier.announcements.check_message`)."""
    item = await session.get(Item, item_id)
    if item is None or item.kind is not ItemKind.announcement:
        raise NotFoundError(f"keine Mitteilung mit der Nummer {item_id}")
    changed_item = draft_item(draft, actor=actor, now=now)
    await ann.check_message(session, changed_item, renderer=renderer, links=links, now=now)
    values = {
        "subject": draft.subject,
        "body": draft.body,
        "topics": draft.topics,
        "scope": draft.scope,
        "roles": draft.roles,
        "send_at": draft.send_at,
        "important": draft.important,
    }
    changed = sorted(k for k, v in values.items() if getattr(item, k) != v)
    if not await reports.update_scheduled(session, item_id, values):
        state = "abgesagt" if item.status is ItemStatus.cancelled else "versandt"
        raise StateError(
            f"Mitteilung {item_id} ist schon {state} und kann nicht mehr geändert werden."
        )
    await audit.record(
        session,
        actor,
        "announcement.edited",
        "item",
        item_id,
        {"changed": changed, "send_at": draft.send_at.isoformat()},
    )
    await session.refresh(item)
    return item


async def announcement(session: AsyncSession, item_id: int) -> Item:
    item = await session.get(Item, item_id)
    if item is None or item.kind is not ItemKind.announcement:
        raise NotFoundError(f"keine Mitteilung mit der Nummer {item_id}")
    return item


# -- preview and test ------------------------------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str
    recipient: Recipient


def render(renderer: Renderer, item: Item, recipient: Recipient) -> Rendered:
    """The e-mail exactly as the sender renders it (HTML with inlined CSS, and text)."""
    prepared = renderer.prepare(item)
    html, text = renderer.render_full(prepared, recipient)
    return Rendered(prepared.subject, html, text, recipient)


async def send_test(
    settings: Settings,
    renderer: Renderer,
    endpoint: tuple[str, int, str],
    item: Item,
    *,
    name: str,
    email: str,
    now: datetime,
) -> str:
    """Send the message about ``item`` to one address (an office user's own) through the
    configured SMTP server; returns the server's reply. Raises ``DeliveryError`` or
    ``ValueError`` (a header that would break)."""
    prepared = renderer.prepare(item)
    prepared = dataclasses.replace(prepared, subject=f"[Test] {prepared.subject}", skeleton={})
    preferences = f"{settings.mail.public_base_url}/anmelden"
    recipient = Recipient(email, name, "Projektbüro (Test)", [], preferences, "")
    message_id = f"<test.{secrets.token_hex(8)}@{settings.mail.domain}>"
    data = renderer.build_bytes(prepared, recipient, message_id=message_id, date=now)
    host, port, tls = endpoint
    async with SmtpTransport(settings.smtp, host=host, port=port, tls=tls) as transport:
        return await transport.send(data, settings.mail.sender_address, email)


# -- updates pushed by a CMS -----------------------------------------------------------------


async def push_update(
    session: AsyncSession,
    *,
    source: str,
    key: str,
    subject: str,
    body: str,
    link: str | None,
    topics: Sequence[str],
    scope: Sequence[str],
    actor: str,
    now: datetime,
) -> tuple[Item, bool]:
    """An update as a feed entry would make it: new keys are routed at once to the matching
    subscribers; a key seen before updates the stored item without sending it again (like a
    corrected feed entry). Returns the item and whether it is new."""
    item = await session.scalar(select(Item).where(Item.source == source, Item.external_key == key))
    if item is not None:
        item.subject, item.body, item.link = subject, body, link
        await audit.record(session, actor, "item.corrected", "item", item.id, {"key": key})
        return item, False
    item = Item(
        kind=ItemKind.update,
        subject=subject,
        body=body,
        link=link,
        topics=list(topics),
        scope=list(scope),
        roles=[],
        important=False,
        send_at=now,
        status=ItemStatus.scheduled,
        created_at=now,
        created_by=actor,
        source=source,
        external_key=key,
        published_at=now,
        change_count=0,
        all_day=False,
        event_cancelled=False,
    )
    session.add(item)
    await session.flush()
    await audit.record(session, actor, "item.pushed", "item", item.id, {"key": key})
    return item, True
