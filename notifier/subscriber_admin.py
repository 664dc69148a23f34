"""Subscribers as the project office changes them (the office console and the JSON API): check
and apply edits, add one, approve, pause, resume and deactivate.

Every function works inside the caller's transaction and writes an audit entry naming the actor.
Bad input raises :class:`~notifier.console.FieldErrors` naming every wrong field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from . import audit
from .addresses import check_email
from .config import Settings
from .console import FieldErrors, check_line, check_topics
from .db import reports
from .db.models import (
    Organisation,
    Rhythm,
    Role,
    Subscriber,
    SubscriberSource,
    SubscriberStatus,
    Subscription,
)
from .errors import FieldError, StateError
from .labels import SUBSCRIBER_LABELS
from .subscribers import active_subscriber

# -- subscribers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SubscriberInput:
    """A subscriber's data as the office enters it (every field; the API fills in the rest
    from the stored subscriber)."""

    email: str
    name: str
    organisation: str  # key
    role: str
    rhythm: str
    topics: Sequence[str] = ()  # empty: every topic


@dataclass(frozen=True)
class CheckedSubscriber:
    email: str
    name: str
    organisation: Organisation
    role: Role
    rhythm: Rhythm
    topics: tuple[str, ...]


def check_subscriber(
    data: SubscriberInput, *, settings: Settings, units: Mapping[str, Organisation]
) -> CheckedSubscriber:
    """Raises :class:`FieldErrors` naming every wrong field."""
    errors: dict[str, str] = {}
    email = name = ""
    try:
        email = check_email("email", data.email)
    except FieldError as exc:
        errors[exc.field] = exc.problem
    try:
        name = check_line("name", data.name, max_length=200)
    except FieldError as exc:
        errors[exc.field] = exc.problem
    org = units.get(data.organisation)
    if org is None:
        errors["organisation"] = "Bitte eine Einheit aus der Liste wählen."
    role = Role.__members__.get(data.role)
    if role is None:
        errors["role"] = "Bitte eine Funktion wählen."
    rhythm = Rhythm.__members__.get(data.rhythm)
    if rhythm is None:
        errors["rhythm"] = "Bitte einen Rhythmus wählen."
    topics: list[str] = []
    try:
        topics = check_topics("topics", data.topics, settings.topic_keys)
    except FieldError as exc:
        errors[exc.field] = exc.problem
    if errors or org is None or role is None or rhythm is None:
        raise FieldErrors(errors)
    return CheckedSubscriber(email, name, org, role, rhythm, tuple(topics))


def _topics_of(sub: Subscriber) -> list[str]:
    return [] if sub.all_topics else sorted(s.topic_key for s in sub.subscriptions)


async def _email_taken(session: AsyncSession, email: str, other_than: int | None) -> bool:
    found = await session.scalar(select(Subscriber.id).where(Subscriber.email == email))
    return found is not None and found != other_than


async def change_subscriber(
    session: AsyncSession, sub: Subscriber, data: CheckedSubscriber, *, actor: str, now: datetime
) -> list[str]:
    """Apply the office's changes; returns the changed fields."""
    if data.email != sub.email and await _email_taken(session, data.email, sub.id):
        raise FieldErrors({"email": "Diese Adresse hat schon ein anderer Eintrag."})
    before = {
        "email": sub.email,
        "name": sub.name,
        "organisation": sub.organisation_id,
        "role": sub.role,
        "rhythm": sub.rhythm,
        "topics": _topics_of(sub),
    }
    after = {
        "email": data.email,
        "name": data.name,
        "organisation": data.organisation.id,
        "role": data.role,
        "rhythm": data.rhythm,
        "topics": list(data.topics),
    }
    changed = [k for k in before if before[k] != after[k]]
    if not changed:
        return []
    sub.email, sub.name = data.email, data.name
    sub.organisation_id, sub.role, sub.rhythm = data.organisation.id, data.role, data.rhythm
    sub.all_topics = not data.topics
    sub.subscriptions = [Subscription(topic_key=t) for t in data.topics]
    sub.updated_at = now
    await audit.record(
        session, actor, "subscriber.edited", "subscriber", sub.id, {"changed": changed}
    )
    return changed


async def add_subscriber(
    session: AsyncSession,
    data: CheckedSubscriber,
    *,
    actor: str,
    source: SubscriberSource,
    now: datetime,
) -> Subscriber:
    """A subscriber entered by the office or the API (like a CSV row): active at once, with
    ``source`` and ``actor`` as its provenance."""
    if await _email_taken(session, data.email, None):
        raise FieldErrors({"email": "Diese Adresse ist schon eingetragen."})
    sub = active_subscriber(data, now, source=source, actor=actor)
    session.add(sub)
    await session.flush()
    await audit.record(session, actor, "subscriber.added", "subscriber", sub.id, {})
    return sub


# Which status the office may set from which.
_TRANSITIONS = {
    SubscriberStatus.active: (SubscriberStatus.held, SubscriberStatus.paused),
    SubscriberStatus.paused: (SubscriberStatus.active,),
    SubscriberStatus.unsubscribed: (
        SubscriberStatus.active,
        SubscriberStatus.pending,
        SubscriberStatus.held,
        SubscriberStatus.paused,
    ),
}
_STATUS_ACTIONS = {
    SubscriberStatus.active: "subscriber.approved",
    SubscriberStatus.paused: "subscriber.paused",
    SubscriberStatus.unsubscribed: "subscriber.deactivated",
}


async def set_status(
    session: AsyncSession,
    sub: Subscriber,
    status: SubscriberStatus,
    *,
    actor: str,
    now: datetime,
) -> bool:
    """Approve a held subscriber or resume a paused one (``active``), pause one (``paused``)
    or deactivate one (``unsubscribed``: messages not yet sent are cancelled). Returns whether
    anything changed; raises :class:`StateError` for a change that is not possible."""
    if sub.status is status:
        return False
    allowed = _TRANSITIONS.get(status, ())
    if sub.status not in allowed:
        raise StateError(
            f"Der Status „{SUBSCRIBER_LABELS[sub.status]}“ kann nicht zu "
            f"„{SUBSCRIBER_LABELS[status]}“ geändert werden."
        )
    before = sub.status
    sub.status = status
    sub.updated_at = now
    cancelled = 0
    if status is not SubscriberStatus.active:
        cancelled = await reports.stop_pending_mail(session, sub.id, now)
    action = _STATUS_ACTIONS[status]
    if status is SubscriberStatus.active and before is SubscriberStatus.paused:
        action = "subscriber.resumed"
    await audit.record(
        session,
        actor,
        action,
        "subscriber",
        sub.id,
        {"from": before.value, "cancelled": cancelled},
    )
    return True
