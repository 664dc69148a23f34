"""Everything stored about one person, as one document (DSGVO art. 15 access, art. 20
portability): the subscriber's data, subscriptions, provenance, consent records, the messages
sent or queued to them, their briefing queue, the bounces and complaints that came back for
them, and the audit entries about them.

The same document serves every way of asking: the personal preferences page (JSON download and
a readable page), the office console (for a request by letter) and
``GET /api/v1/subscribers/{id}/export``. Its JSON shape is documented in README.md and marked
with :data:`FORMAT` and :data:`VERSION`; a change of shape raises the version.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from .config import Settings
from .db import personal
from .db.models import (
    AuditEntry,
    Bounce,
    Consent,
    LegalBasis,
    OutboxState,
    Subscriber,
    SubscriberSource,
)
from .labels import BOUNCE_LABELS, RHYTHM_LABELS, ROLE_CHOICES, STATE_LABELS, SUBSCRIBER_LABELS

FORMAT = "notifier-personal-data"
VERSION = 1

BASIS_LABELS = {
    LegalBasis.consent: "Einwilligung (Art. 6 Abs. 1 Buchst. a DSGVO)",
    LegalBasis.public_task: (
        "Wahrnehmung einer Aufgabe im öffentlichen Interesse (Art. 6 Abs. 1 Buchst. e DSGVO)"
    ),
}
SOURCE_LABELS = {
    SubscriberSource.signup: "eigene Anmeldung auf der Website",
    SubscriberSource.csv_import: "Import einer Liste durch das Projektbüro",
    SubscriberSource.api: "Schnittstelle (API)",
    SubscriberSource.office: "eingetragen vom Projektbüro",
    SubscriberSource.cli: "Kommandozeile",
    SubscriberSource.unknown: "unbekannt (eingetragen, bevor die Herkunft gespeichert wurde)",
}
# What a message row is, for people; the JSON carries the key.
KIND_LABELS = {
    "announcement": "Mitteilung",
    "update": "Neuigkeit",
    "event": "Termin",
    "briefing": "Überblick",
    "confirmation": "Bestätigung der Anmeldung",
    "personal_link": "Ihr persönlicher Link",
    "service": "Service-E-Mail",
}
# The audit log's actions about a subscriber, for people; others are shown as they are stored.
AUDIT_LABELS = {
    "signup": "Anmeldung auf der Website",
    "signup_repeated": "erneute Anmeldung (persönlicher Link zugesandt)",
    "signup_refused": "Anmeldung abgelehnt (Adresse unzustellbar)",
    "confirm": "Anmeldung bestätigt",
    "preferences": "Einstellungen geändert",
    "pause": "Empfang pausiert",
    "resume": "Empfang fortgesetzt",
    "unsubscribe": "abgemeldet",
    "subscriber.imported": "durch Import eingetragen",
    "subscriber.added": "vom Projektbüro eingetragen",
    "subscriber.updated": "durch Import geändert",
    "subscriber.edited": "vom Projektbüro geändert",
    "subscriber.approved": "vom Projektbüro freigegeben",
    "subscriber.paused": "vom Projektbüro pausiert",
    "subscriber.resumed": "vom Projektbüro fortgesetzt",
    "subscriber.deactivated": "vom Projektbüro deaktiviert",
    "subscriber.exported": "Auskunft: Daten abgerufen",
}
_SERVICE_KINDS = {"confirm": "confirmation", "links": "personal_link"}


@dataclass(frozen=True)
class Message:
    id: int
    kind: str  # a key of KIND_LABELS
    subject: str | None
    notice: str  # "", "reminder:7", "changed:2", "cancelled:3", "restored:4" (an item's messages)
    state: str
    attempts: int
    created_at: datetime
    sent_at: datetime | None
    smtp_code: int | None

    @property
    def label(self) -> str:
        """What the message was, in German (the subject where there is one)."""
        kind = KIND_LABELS[self.kind]
        if self.kind == "briefing":
            return kind
        if self.subject is None:
            return kind
        notice = self.notice.partition(":")[0]
        extra = {
            "reminder": "Erinnerung",
            "changed": "Änderung",
            "cancelled": "Absage",
            "restored": "Findet doch statt",
        }.get(notice)
        return f"{kind}{' (' + extra + ')' if extra else ''}: {self.subject}"

    @property
    def state_label(self) -> str:
        return STATE_LABELS[OutboxState(self.state)]


@dataclass(frozen=True)
class PersonalData:
    """The export of one subscriber; :meth:`document` is its JSON form."""

    created_at: datetime
    controller: str
    subscriber: Subscriber
    topic_titles: dict[str, str]
    consents: Sequence[Consent]
    messages: list[Message]
    briefing_queue: list[personal.QueuedItem]
    audit: Sequence[AuditEntry]
    bounces: Sequence[Bounce]

    @property
    def basis_label(self) -> str:
        return BASIS_LABELS[self.subscriber.basis]

    @property
    def source_label(self) -> str:
        return SOURCE_LABELS[self.subscriber.source]

    @property
    def status_label(self) -> str:
        return SUBSCRIBER_LABELS[self.subscriber.status]

    @property
    def role_label(self) -> str:
        return ROLE_CHOICES[self.subscriber.role]

    @property
    def rhythm_label(self) -> str:
        return RHYTHM_LABELS[self.subscriber.rhythm]

    @property
    def topics(self) -> list[tuple[str, str]]:
        """The followed topics as (key, title); empty: all topics."""
        sub = self.subscriber
        if sub.all_topics:
            return []
        return [
            (s.topic_key, self.topic_titles.get(s.topic_key, s.topic_key))
            for s in sub.subscriptions
        ]

    @staticmethod
    def bounce_label(bounce: Bounce) -> str:
        return BOUNCE_LABELS[bounce.kind.value]

    @staticmethod
    def action_label(action: str) -> str:
        return audit_label(action)

    @staticmethod
    def details(entry: AuditEntry) -> str:
        return details_text(entry.details)

    def document(self) -> dict[str, Any]:
        """The JSON document (times in ISO 8601, UTC)."""
        sub = self.subscriber
        return {
            "format": FORMAT,
            "version": VERSION,
            "created_at": _time(self.created_at),
            "controller": self.controller,
            "subscriber": {
                "id": sub.id,
                "email": sub.email,
                "name": sub.name,
                "organisation": {"key": sub.organisation.key, "name": sub.organisation.name},
                "role": sub.role.value,
                "rhythm": sub.rhythm.value,
                "all_topics": sub.all_topics,
                "topics": [{"key": k, "title": t} for k, t in self.topics],
                "status": sub.status.value,
                "created_at": _time(sub.created_at),
                "updated_at": _time(sub.updated_at),
            },
            "provenance": {
                "basis": sub.basis.value,
                "basis_text": self.basis_label,
                "source": sub.source.value,
                "actor": sub.actor,
            },
            "consents": [
                {
                    "text_version": c.text_version,
                    "text": c.text,
                    "requested_at": _time(c.requested_at),
                    "confirmed_at": _time(c.confirmed_at),
                    "ip": c.ip,
                }
                for c in self.consents
            ],
            "messages": [
                {
                    "id": m.id,
                    "kind": m.kind,
                    "subject": m.subject,
                    "notice": m.notice,
                    "state": m.state,
                    "attempts": m.attempts,
                    "created_at": _time(m.created_at),
                    "sent_at": _time(m.sent_at),
                    "smtp_code": m.smtp_code,
                }
                for m in self.messages
            ],
            "briefing_queue": [
                {"item_id": q.item_id, "subject": q.subject, "queued_at": _time(q.queued_at)}
                for q in self.briefing_queue
            ],
            "bounces": [
                {
                    "received_at": _time(b.received_at),
                    "kind": b.kind.value,
                    "address": b.address,
                    "outbox_id": b.outbox_id,
                    "status": b.status,
                    "diagnostic": b.diagnostic,
                    "action": b.action,
                }
                for b in self.bounces
            ],
            "audit": [
                {"at": _time(a.at), "actor": a.actor, "action": a.action, "details": a.details}
                for a in self.audit
            ],
        }

    def json_bytes(self) -> bytes:
        """The document as UTF-8 JSON, indented for reading."""
        return json.dumps(self.document(), ensure_ascii=False, indent=2).encode() + b"\n"


def audit_label(action: str) -> str:
    return AUDIT_LABELS.get(action, action)


def details_text(details: dict[str, Any]) -> str:
    """An audit entry's details as one line of JSON (empty when there are none)."""
    return json.dumps(details, ensure_ascii=False, sort_keys=True) if details else ""


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _message(row: personal.MessageRow) -> Message:
    if row.item_kind is not None:
        kind = row.item_kind.value
    elif row.digest_rhythm is not None:
        kind = "briefing"
    else:
        kind = _SERVICE_KINDS.get(row.notice, "service")
    return Message(
        row.id,
        kind,
        row.subject,
        row.notice,
        row.state.value,
        row.attempts,
        row.created_at,
        row.sent_at,
        row.last_code,
    )


async def personal_data(
    session: AsyncSession, subscriber_id: int, settings: Settings, *, now: datetime
) -> PersonalData | None:
    """Everything stored about the subscriber, read in the caller's session; None if there is
    no such subscriber."""
    sub = await personal.subscriber(session, subscriber_id)
    if sub is None:
        return None
    return PersonalData(
        created_at=now,
        controller=settings.mail.sender_name,
        subscriber=sub,
        topic_titles={t.key: t.title for t in settings.topics},
        consents=await personal.consents(session, sub.id),
        messages=[_message(r) for r in await personal.messages(session, sub.id)],
        briefing_queue=await personal.briefing_queue(session, sub.id),
        audit=await personal.audit_entries(session, sub.id),
        bounces=await personal.bounces(session, sub.id, sub.email),
    )


def file_name(data: PersonalData, tz: Any) -> str:
    """``daten-42-2026-12-03.json``: the download's name (no personal data in it)."""
    day = data.created_at.astimezone(tz).strftime("%Y-%m-%d")
    return f"daten-{data.subscriber.id}-{day}.json"
