"""What subscribers do themselves on the web: sign up (double opt-in with a consent record),
confirm, and unsubscribe (also the bounce intake's). Changing preferences, pausing and the
one-click unsubscribe of the personal links are Core statements in
:mod:`notifier.db.selfservice`, run in one worker-thread transaction each.

Every function works inside the caller's transaction and writes an audit entry. A sign-up never
tells whether an address is known: a new or unconfirmed address gets a confirmation e-mail, a
subscribed one an e-mail with its personal link, and the page says the same in every case.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from . import audit
from .addresses import check_email
from .config import Settings
from .console import FieldErrors
from .db.erasure import forget_erased
from .db.models import (
    BriefingQueue,
    Consent,
    LegalBasis,
    Organisation,
    OutboxMessage,
    OutboxState,
    Rhythm,
    Role,
    Subscriber,
    SubscriberSource,
    SubscriberStatus,
    Subscription,
)
from .db.retention import PROOF_ONLY_NAME
from .db.selfservice import PersonalRow
from .errors import FieldError
from .links import LinkError, LinkTarget, resubscribe_days

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# At most one service e-mail (confirmation, personal link) per address in this time: a form
# cannot be used to flood someone's mailbox.
SERVICE_MAIL_INTERVAL = timedelta(minutes=10)
# Roles a sign-up may choose (the project office is set up by the office itself).
SELF_ROLES = (Role.mayor, Role.deputy_mayor, Role.council_member, Role.staff)


@dataclass(frozen=True)
class Choices:
    """A subscriber's choices as a form submits them, already checked."""

    name: str
    organisation: Organisation
    role: Role
    rhythm: Rhythm
    topics: tuple[str, ...]  # empty: every topic


def check_name(value: str) -> str:
    name = value.strip()
    if not name:
        raise FieldError("name", "Bitte geben Sie Ihren Namen an.")
    if _CONTROL.search(name) or len(name) > 200:
        raise FieldError(
            "name",
            "Der Name darf keine Zeilenumbrüche enthalten und höchstens 200 Zeichen lang sein.",
        )
    return name


def check_choices(
    *,
    name: str,
    organisation: Organisation | None,
    role: str,
    rhythm: str,
    topics: Sequence[str],
    all_topics: bool | None,
    topic_keys: Sequence[str],
    roles: Sequence[Role] = SELF_ROLES,
) -> Choices:
    """Raises :class:`FieldErrors` naming every field that is wrong, not only the first.

    ``all_topics``: the radio "alle / nur diese" (``None``: not sent, single topics count).
    "Alle" with single topics ticked as well is refused, never silently decided."""
    errors: dict[str, str] = {}
    checked_name = ""
    try:
        checked_name = check_name(name)
    except FieldError as exc:
        errors[exc.field] = exc.problem
    if organisation is None:
        errors["organisation"] = (
            "Bitte geben Sie Ihre Organisation an, z. B. den Namen Ihrer Ortsgemeinde, "
            "oder wählen Sie sie aus der Liste."
        )
    chosen_role = Role.__members__.get(role)
    if chosen_role is None or chosen_role not in roles:
        errors["role"] = "Bitte wählen Sie Ihre Funktion."
    unknown = [t for t in topics if t not in topic_keys]
    chosen = tuple(sorted(set(topics)))
    if unknown:
        errors["topics"] = "Unbekannte Themen: " + ", ".join(unknown)
    elif all_topics and chosen:
        errors["topics"] = (
            "Sie haben „Alle Themen“ gewählt und zugleich einzelne Themen angekreuzt. Bitte "
            "wählen Sie „Nur diese Themen“ oder entfernen Sie die Häkchen."
        )
    elif not all_topics and not chosen:
        errors["topics"] = "Bitte wählen Sie „Alle Themen“ oder mindestens ein Thema."
    chosen_rhythm = Rhythm.__members__.get(rhythm)
    if chosen_rhythm is None:
        errors["rhythm"] = "Bitte wählen Sie, wie oft Sie E-Mails erhalten möchten."
    if errors or organisation is None or chosen_role is None or chosen_rhythm is None:
        raise FieldErrors(errors)
    return Choices(
        checked_name, organisation, chosen_role, chosen_rhythm, () if all_topics else chosen
    )


def _apply(sub: Subscriber, choices: Choices) -> None:
    sub.name = choices.name
    sub.organisation_id = choices.organisation.id
    sub.role = choices.role
    sub.rhythm = choices.rhythm
    sub.all_topics = not choices.topics
    sub.subscriptions = [Subscription(topic_key=k) for k in choices.topics]


async def _queue_service_mail(
    session: AsyncSession, sub: Subscriber, notice: str, now: datetime
) -> bool:
    """Queue a confirmation (``confirm``) or personal-link (``links``) e-mail unless one went
    to this subscriber within :data:`SERVICE_MAIL_INTERVAL`."""
    recent = await session.scalar(
        select(OutboxMessage.id).where(
            OutboxMessage.subscriber_id == sub.id,
            OutboxMessage.item_id.is_(None),
            OutboxMessage.digest_id.is_(None),
            OutboxMessage.created_at > now - SERVICE_MAIL_INTERVAL,
        )
    )
    if recent is not None:
        return False
    session.add(
        OutboxMessage(
            subscriber_id=sub.id,
            notice=notice,
            state=OutboxState.queued,
            created_at=now,
            updated_at=now,
            next_attempt_at=now,
        )
    )
    return True


async def sign_up(
    session: AsyncSession,
    email: str,
    choices: Choices,
    *,
    ip: str,
    settings: Settings,
    now: datetime,
) -> bool:
    """Record a sign-up; returns whether an e-mail was queued (the caller wakes the sender).

    New, unconfirmed and unsubscribed addresses become ``pending`` with a consent record and a
    confirmation e-mail. A subscribed address keeps its settings and gets its personal link. A
    suppressed address (its mail bounces) gets nothing.
    """
    address = check_email("email", email)
    sub = await session.scalar(
        select(Subscriber)
        .where(Subscriber.email == address)
        .options(selectinload(Subscriber.subscriptions))
    )
    if sub is not None and sub.status is SubscriberStatus.suppressed:
        await audit.record(session, "web", "signup_refused", "subscriber", sub.id, {"ip": ip})
        return False
    if sub is not None and sub.status in (
        SubscriberStatus.active,
        SubscriberStatus.held,
        SubscriberStatus.paused,
    ):
        await audit.record(session, "web", "signup_repeated", "subscriber", sub.id, {"ip": ip})
        return await _queue_service_mail(session, sub, "links", now)
    if sub is None:
        sub = Subscriber(
            email=address,
            status=SubscriberStatus.pending,
            created_at=now,
            updated_at=now,
            token_version=0,
            subscriptions=[],
        )
        session.add(sub)
    else:  # pending again, or unsubscribed earlier: a new consent is needed
        sub.status = SubscriberStatus.pending
        sub.updated_at = now
    # From now on the person's own consent is the basis, whoever added them before.
    sub.basis, sub.source, sub.actor = LegalBasis.consent, SubscriberSource.signup, "web"
    _apply(sub, choices)
    await session.flush()
    session.add(
        Consent(
            subscriber_id=sub.id,
            text_version=settings.web.consent_version,
            text=settings.web.consent_text,
            requested_at=now,
            ip=ip,
        )
    )
    await audit.record(
        session,
        "web",
        "signup",
        "subscriber",
        sub.id,
        {"ip": ip, "consent_version": settings.web.consent_version},
    )
    return await _queue_service_mail(session, sub, "confirm", now)


async def subscriber_for(
    session: AsyncSession, target: LinkTarget, *, allow: Sequence[SubscriberStatus] = ()
) -> Subscriber:
    """The subscriber a checked link names; raises :class:`LinkError` if the link was revoked
    (another ``token_version``) or the subscriber is gone."""
    sub = await session.scalar(
        select(Subscriber)
        .where(Subscriber.id == target.subscriber_id)
        .options(selectinload(Subscriber.subscriptions), selectinload(Subscriber.organisation))
    )
    if sub is None or sub.token_version != target.version:
        raise LinkError("Der Link ist nicht mehr gültig.")
    if allow and sub.status not in allow:
        raise LinkError("Der Link ist nicht mehr gültig.")
    return sub


# Whose confirmation link still works (a confirmed one answers again without changing anything).
CONFIRMABLE = (
    SubscriberStatus.pending,
    SubscriberStatus.active,
    SubscriberStatus.held,
    SubscriberStatus.paused,
)


def domain_allowed(address: str, settings: Settings) -> bool:
    allowed = settings.web.allowed_domains
    if not allowed:
        return True
    domain = address.rpartition("@")[2].lower()
    return any(domain == d or domain.endswith("." + d) for d in allowed)


async def confirm(
    session: AsyncSession, target: LinkTarget, *, ip: str, settings: Settings, now: datetime
) -> Subscriber:
    """Confirm a sign-up (idempotent): active, or held for the office's approval when the
    address is outside ``[web] allowed_domains``."""
    sub = await subscriber_for(session, target, allow=CONFIRMABLE)
    if sub.status is not SubscriberStatus.pending:
        return sub
    consent = await session.scalar(
        select(Consent)
        .where(Consent.subscriber_id == sub.id, Consent.confirmed_at.is_(None))
        .order_by(Consent.id.desc())
        .limit(1)
    )
    if consent is not None:
        consent.confirmed_at = now
    sub.status = (
        SubscriberStatus.active if domain_allowed(sub.email, settings) else SubscriberStatus.held
    )
    sub.updated_at = now
    # Back by their own consent: an office import may list the address again.
    await forget_erased(session, sub.email)
    await audit.record(
        session, "web", "confirm", "subscriber", sub.id, {"ip": ip, "status": sub.status.value}
    )
    return sub


async def _stop_pending_mail(session: AsyncSession, sub: Subscriber, now: datetime) -> int:
    """Cancel the subscriber's messages not yet on their way, and their briefing queue."""
    result = await session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.subscriber_id == sub.id,
            OutboxMessage.state.in_((OutboxState.queued, OutboxState.deferred)),
            (OutboxMessage.item_id.is_not(None)) | (OutboxMessage.digest_id.is_not(None)),
        )
        .values(state=OutboxState.cancelled, updated_at=now, last_reply="abgemeldet")
    )
    await session.execute(delete(BriefingQueue).where(BriefingQueue.subscriber_id == sub.id))
    count: int = result.rowcount  # type: ignore[attr-defined]
    return count


async def unsubscribe(
    session: AsyncSession,
    sub: Subscriber,
    *,
    how: str,
    ip: str,
    now: datetime,
    actor: str = "web",
) -> bool:
    """Unsubscribe at once (idempotent); returns whether anything changed. Messages not yet
    on their way are cancelled in the same transaction."""
    if sub.status in (SubscriberStatus.unsubscribed, SubscriberStatus.suppressed):
        return False
    sub.status = SubscriberStatus.unsubscribed
    sub.updated_at = now
    cancelled = await _stop_pending_mail(session, sub, now)
    await audit.record(
        session,
        actor,
        "unsubscribe",
        "subscriber",
        sub.id,
        {"how": how, "ip": ip, "cancelled": cancelled},
    )
    return True


def can_resubscribe(sub: Subscriber | PersonalRow, settings: Settings, now: datetime) -> bool:
    """Whether an unsubscribed person's old choices can still be restored: unsubscribed within
    :func:`~notifier.links.resubscribe_days` (their choices are kept so long, see
    ``[retention] unsubscribed_days``) and not yet reduced to the consent proof."""
    return (
        sub.status is SubscriberStatus.unsubscribed
        and sub.name != PROOF_ONLY_NAME
        and sub.updated_at >= now - timedelta(days=resubscribe_days(settings))
    )


async def resubscribable(
    session: AsyncSession, target: LinkTarget, *, settings: Settings, now: datetime
) -> Subscriber:
    """The subscriber a "wieder anmelden" link names, if :func:`can_resubscribe` or already
    back (the link answers again). Raises :class:`LinkError` otherwise."""
    sub = await subscriber_for(session, target)
    if sub.status in (SubscriberStatus.active, SubscriberStatus.held, SubscriberStatus.paused):
        return sub
    if not can_resubscribe(sub, settings, now):
        raise LinkError(
            "Ihre früheren Einstellungen sind nicht mehr gespeichert. "
            "Bitte melden Sie sich neu an.",
            expired=True,
        )
    return sub


async def resubscribe(
    session: AsyncSession, target: LinkTarget, *, ip: str, settings: Settings, now: datetime
) -> Subscriber:
    """Restore an unsubscribed person with their old choices (idempotent). The signed link
    reached them in their mailbox, so the address is proven; the consent is recorded anew
    (the current text, confirmed now). Outside ``[web] allowed_domains`` they wait for the
    office's approval again."""
    sub = await resubscribable(session, target, settings=settings, now=now)
    if sub.status is not SubscriberStatus.unsubscribed:
        return sub
    sub.status = (
        SubscriberStatus.active if domain_allowed(sub.email, settings) else SubscriberStatus.held
    )
    sub.updated_at = now
    session.add(
        Consent(
            subscriber_id=sub.id,
            text_version=settings.web.consent_version,
            text=settings.web.consent_text,
            requested_at=now,
            confirmed_at=now,
            ip=ip,
        )
    )
    await forget_erased(session, sub.email)
    await audit.record(
        session,
        "web",
        "resubscribe",
        "subscriber",
        sub.id,
        {"ip": ip, "status": sub.status.value, "consent_version": settings.web.consent_version},
    )
    return sub
