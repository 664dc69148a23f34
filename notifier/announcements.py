"""Announcements of the project office: a Markdown file with TOML front matter.

```
+++
subject = "Digitale Kümmerer: neue Sprechstunden"
topics = ["eifelleben"]          # empty or missing: all topics
scope = ["Verbandsgemeinde Prüm"] # keys or exact names; missing: the whole Kreis
roles = ["mayor"]                 # missing: all roles
send_at = "2026-12-07T09:00"      # Europe/Berlin, or "now"
important = false
+++
Markdown text …
```
"""

from __future__ import annotations

import asyncio
import re
import tomllib
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from .audit import record
from .db import queries, reports
from .db.models import Item, ItemKind, ItemStatus, OrgKind, OutboxState, Role
from .errors import InputError, NotFoundError, RowProblem, StateError
from .links import Links
from .message_size import check_message_size, message_size_limit
from .organisations import organisation_index
from .remote_images import check_remote_images
from .rendering import MessageIds, Recipient, Renderer

FENCE = "+++"
KEYS = {"subject", "topics", "scope", "roles", "send_at", "important"}
# A time a little in the past is fine ("in five minutes" written slowly); more is a mistake.
PAST_TOLERANCE = timedelta(minutes=5)


@dataclass(frozen=True)
class Draft:
    """A checked announcement, not yet stored."""

    subject: str
    body: str
    topics: list[str]
    scope: list[str]  # organisation keys
    roles: list[str]
    send_at: datetime  # UTC
    important: bool
    source: str


def _key_lines(front: list[str], first_line: int) -> dict[str, int]:
    lines: dict[str, int] = {}
    for offset, text in enumerate(front):
        match = re.match(r"\s*([A-Za-z_][\w-]*)\s*=", text)
        if match:
            lines.setdefault(match.group(1), first_line + offset)
    return lines


def _string_list(value: Any) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value]
    return None


async def parse_announcement(
    session: AsyncSession, path: Path, *, topic_keys: set[str], tz: ZoneInfo, now: datetime
) -> Draft:
    """Read and check an announcement file; raises :class:`InputError` naming line and field."""
    shown = str(path)
    try:
        text = await asyncio.to_thread(path.read_text, encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(shown, [RowProblem(1, "-", f"Datei nicht lesbar: {exc}")]) from exc
    lines = text.splitlines()
    if not lines or lines[0].strip() != FENCE:
        raise InputError(
            shown, [RowProblem(1, "-", f"die Datei muss mit einer Zeile '{FENCE}' beginnen")]
        )
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == FENCE)
    except StopIteration:
        raise InputError(shown, [RowProblem(1, "-", f"die zweite Zeile '{FENCE}' fehlt")]) from None
    front = lines[1:end]
    try:
        meta = tomllib.loads("\n".join(front))
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        line = int(match.group(1)) + 1 if match else 2
        raise InputError(shown, [RowProblem(line, "-", f"ungültiges TOML: {exc}")]) from exc
    where = _key_lines(front, 2)
    problems: list[RowProblem] = []

    def problem(key: str, reason: str) -> None:
        problems.append(RowProblem(where.get(key, 2), key, reason))

    for key in sorted(set(meta) - KEYS):
        problem(key, "unbekanntes Feld (erlaubt: " + ", ".join(sorted(KEYS)) + ")")

    subject = meta.get("subject")
    if not isinstance(subject, str) or not subject.strip():
        problem("subject", "fehlt oder ist leer")
        subject = ""
    elif any(ord(c) < 32 or ord(c) == 127 for c in subject) or len(subject) > 300:
        problem("subject", "muss eine Zeile ohne Steuerzeichen sein, höchstens 300 Zeichen")

    topics = _string_list(meta.get("topics", []))
    if topics is None:
        problem("topics", "muss eine Liste von Themen-Schlüsseln sein")
        topics = []
    elif unknown := [t for t in topics if t not in topic_keys]:
        problem(
            "topics",
            "unbekannte Themen: "
            + ", ".join(unknown)
            + " (bekannt: "
            + ", ".join(sorted(topic_keys))
            + ")",
        )

    scope_refs = _string_list(meta.get("scope", []))
    scope: list[str] = []
    if scope_refs is None:
        problem("scope", "muss eine Liste von Organisationen (Schlüssel oder Name) sein")
    else:
        by_key, by_name = await organisation_index(session)
        for ref in scope_refs:
            org = by_key.get(ref) or by_name.get(ref)
            if org is None:
                problem("scope", f"{ref!r} ist weder Schlüssel noch Name einer Einheit")
            elif org.key not in scope:
                scope.append(org.key)

    roles = _string_list(meta.get("roles", []))
    if roles is None:
        problem("roles", "muss eine Liste von Rollen sein")
        roles = []
    elif unknown := [r for r in roles if r not in Role.__members__]:
        problem(
            "roles",
            "unbekannte Rollen: "
            + ", ".join(unknown)
            + " (erlaubt: "
            + ", ".join(Role.__members__)
            + ")",
        )

    send_at = now
    raw_time = meta.get("send_at")
    if raw_time is None:
        problem("send_at", 'fehlt (lokale Zeit wie "2026-12-07T09:00" oder "now")')
    elif isinstance(raw_time, str) and raw_time.strip().lower() == "now":
        send_at = now
    else:
        try:
            parsed = (
                raw_time
                if isinstance(raw_time, datetime)
                else datetime.fromisoformat(str(raw_time))
            )
        except ValueError:
            problem("send_at", f'{raw_time!r} ist keine Zeit wie "2026-12-07T09:00" oder "now"')
        else:
            local = parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)
            send_at = local.astimezone(ZoneInfo("UTC"))
            if send_at < now - PAST_TOLERANCE:
                problem("send_at", f"{raw_time} liegt in der Vergangenheit")

    important = meta.get("important", False)
    if not isinstance(important, bool):
        problem("important", "muss true oder false sein")
        important = False

    body = "\n".join(lines[end + 1 :]).strip()
    if not body:
        problems.append(RowProblem(end + 2, "text", "der Text nach der zweiten Zeile '+++' fehlt"))

    if problems:
        raise InputError(shown, sorted(problems, key=lambda p: p.line))
    return Draft(subject.strip(), body, topics, scope, roles, send_at, important, shown)


def draft_item(draft: Draft, *, actor: str, now: datetime) -> Item:
    return Item(
        kind=ItemKind.announcement,
        subject=draft.subject,
        body=draft.body,
        topics=draft.topics,
        scope=draft.scope,
        roles=draft.roles,
        important=draft.important,
        send_at=draft.send_at,
        status=ItemStatus.scheduled,
        created_at=now,
        created_by=actor,
        source_file=draft.source,
    )


def made_up_recipient(links: Links) -> Recipient:
    """A recipient nobody is, with personal links that lead nowhere."""
    preferences, unsubscribe = links.personal_urls(0, -1)
    return Recipient(
        "erika.musterfrau@example.org",
        "Erika Musterfrau",
        "Musterhausen",
        [],
        preferences,
        unsubscribe,
    )


async def sample_recipient(
    session: AsyncSession, item: Item, renderer: Renderer, links: Links
) -> Recipient:
    """The first recipient of the item's audience (or a made-up one), with personal links that
    lead nowhere: a preview must not hand out a real subscriber's links."""
    sub = await reports.first_recipient(session, await queries.audience_for(session, item))
    if sub is None:
        return made_up_recipient(links)
    preferences, unsubscribe = links.personal_urls(0, -1)
    topics = [] if sub.all_topics else [s.topic_key for s in sub.subscriptions]
    return Recipient(
        sub.email,
        sub.name,
        sub.organisation.name,
        renderer.topic_list(topics),
        preferences,
        unsubscribe,
    )


async def check_message(
    session: AsyncSession, item: Item, *, renderer: Renderer, links: Links, now: datetime
) -> int:
    """The checks of an announcement's message before it is scheduled, for every way in (CLI,
    office console, API). Raises :class:`~notifier.errors.RemoteImageError` when the text loads
    an image from a host that ``[mail] image_hosts`` does not list (see
    :mod:`notifier.remote_images`).

    Then builds the item's message for a made-up recipient exactly as the sender does and
    returns its size in bytes; raises :class:`~notifier.errors.MessageTooLargeError` when it exceeds
    :func:`~notifier.message_size.message_size_limit` (the configured limit, or the SMTP
    server's SIZE when that is smaller). Not a real recipient: one whose own data cannot make
    a message (an address an older version let in) must not stop the announcement; the
    sender fails that one message."""
    check_remote_images(item.body, renderer.settings.mail.image_hosts)
    recipient = made_up_recipient(links)

    def build() -> int:
        prepared = renderer.prepare(item)
        # As long as a real one (the key only changes the hash, not its length).
        message_id = MessageIds(renderer.mail.domain, bytes(32))(0, 0)
        return len(renderer.build_bytes(prepared, recipient, message_id=message_id, date=now))

    # A long text takes seconds to render: not in the event loop the service shares.
    size = await asyncio.to_thread(build)
    check_message_size(size, await message_size_limit(session, renderer.settings))
    return size


async def schedule(
    session: AsyncSession,
    draft: Draft,
    *,
    actor: str,
    now: datetime,
    renderer: Renderer,
    links: Links,
) -> Item:
    """Store the announcement as scheduled, in the caller's transaction. Raises
    :class:`~notifier.errors.AnnouncementRefused` (before storing anything) when its message
    would be too large or loads remote images (see :func:`check_message`)."""
    item = draft_item(draft, actor=actor, now=now)
    await check_message(session, item, renderer=renderer, links=links, now=now)
    session.add(item)
    await session.flush()
    await record(
        session,
        actor,
        "announcement.scheduled",
        "item",
        item.id,
        {"subject": item.subject, "send_at": item.send_at.isoformat()},
    )
    return item


@dataclass(frozen=True)
class Audience:
    total: int
    by_level: dict[OrgKind, int]
    by_role: dict[Role, int]


async def audience(session: AsyncSession, item: Item) -> Audience:
    """Who would receive the item now: counts by organisation level and role."""
    rows = await queries.audience_breakdown(session, item)
    by_level: dict[OrgKind, int] = {}
    by_role: dict[Role, int] = {}
    for kind, role, count in rows:
        by_level[kind] = by_level.get(kind, 0) + count
        by_role[role] = by_role.get(role, 0) + count
    return Audience(sum(c for *_, c in rows), by_level, by_role)


async def cancel(session: AsyncSession, item_id: int, *, actor: str, now: datetime) -> int:
    """Cancel an announcement: nothing more of it is sent. Returns the number of messages that
    will now not go out. Raises :class:`NotFoundError` or :class:`StateError`."""
    item = await session.get(Item, item_id, with_for_update=True)
    if item is None or item.kind is not ItemKind.announcement:
        raise NotFoundError(f"keine Mitteilung mit der Nummer {item_id}")
    if item.status is ItemStatus.cancelled:
        raise StateError(f"Mitteilung {item_id} ist schon abgesagt")
    counts = await queries.outbox_counts(session, item_id)
    waiting = await queries.briefing_queue_count(session, item_id)
    if (
        item.status is ItemStatus.routed
        and not waiting
        and not any(
            counts.get(s, 0)
            for s in (OutboxState.queued, OutboxState.deferred, OutboxState.sending)
        )
    ):
        raise StateError(f"Mitteilung {item_id} ist schon vollständig versandt")
    item.status = ItemStatus.cancelled
    stopped = await queries.cancel_item(session, item_id, now) + waiting
    await queries.drop_from_briefings(session, item_id)
    await record(
        session, actor, "announcement.cancelled", "item", item_id, {"messages_stopped": stopped}
    )
    return stopped


async def list_announcements(session: AsyncSession) -> list[tuple[Item, dict[OutboxState, int]]]:
    items = (
        await session.scalars(
            select(Item)
            .where(Item.kind == ItemKind.announcement)
            .order_by(Item.send_at.desc(), Item.id.desc())
        )
    ).all()
    return [(item, await queries.outbox_counts(session, item.id)) for item in items]
