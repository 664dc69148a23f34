"""Erasing one person from every table (DSGVO art. 17): a list of per-table steps, run in
order inside the caller's transaction, and the salted hashes of erased addresses.

A table that comes later and holds personal data adds one line to :data:`ERASURE_STEPS` (as
``bounces`` did); ``tests/test_erasure.py`` dumps every table after an erasure and fails if the
person is still found anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Text, cast, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from .models import (
    AuditEntry,
    Bounce,
    BriefingQueue,
    Consent,
    Digest,
    ErasedAddress,
    OutboxMessage,
    OutboxState,
    Subscriber,
    Subscription,
)
from .queries import _insert, installation_secret

# Written in place of personal data in the audit log's details.
ERASED = "[gelöscht]"
# Keys of audit details that hold personal data of the entry's subscriber.
PERSONAL_KEYS = frozenset({"email", "name", "ip", "address", "before"})
# Shorter parts of a name or address are not searched for (they would match other words).
MIN_NEEDLE = 3


@dataclass(frozen=True)
class Person:
    """What identifies a subscriber in the stored data."""

    id: int
    email: str
    name: str
    ips: frozenset[str]
    # Also search every other audit entry for the address (a scan of the whole log): on
    # request, yes; the retention purge, erasing many at a time, relies on the entries about
    # the person (all that notifier writes about a subscriber is filed under them).
    search_audit: bool = True

    @property
    def needles(self) -> tuple[str, ...]:
        """The strings that must not remain anywhere: address, its local part, name, IPs."""
        local = self.email.partition("@")[0]
        found = {self.email, local, self.name, *self.ips}
        return tuple(sorted((n for n in found if len(n) >= MIN_NEEDLE), key=len, reverse=True))


Step = Callable[[AsyncSession, Person, datetime], Awaitable[int]]


async def person(session: AsyncSession, sub: Subscriber, *, search_audit: bool = True) -> Person:
    """The subscriber as :class:`Person`, with the IPs their consents and audit entries hold."""
    ips = set(await session.scalars(select(Consent.ip).where(Consent.subscriber_id == sub.id)))
    for details in await session.scalars(select(AuditEntry.details).where(_about(sub.id))):
        if isinstance(details, dict) and isinstance(details.get("ip"), str):
            ips.add(details["ip"])
    ips.discard("")
    return Person(sub.id, sub.email, sub.name, frozenset(ips), search_audit)


def _about(subscriber_id: int) -> Any:
    return (AuditEntry.entity == "subscriber") & (AuditEntry.entity_id == str(subscriber_id))


async def cancel_pending(session: AsyncSession, who: Person, now: datetime) -> int:
    """Messages not yet sent to the person are cancelled (first of all), also those a sender
    holds: it then neither builds them (the recipient is gone) nor records them as sent."""
    result = await session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.subscriber_id == who.id,
            OutboxMessage.state.in_(
                (OutboxState.queued, OutboxState.deferred, OutboxState.sending)
            ),
        )
        .values(
            state=OutboxState.cancelled,
            updated_at=now,
            last_reply="gelöscht",
            lease_until=None,
            lease_owner=None,
        )
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def anonymise_outbox(session: AsyncSession, who: Person, now: datetime) -> int:
    """Outbox rows stay for the statistics (per state, per announcement, per day) but no longer
    name their recipient; the server's reply may quote the address and goes too."""
    result = await session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.subscriber_id == who.id)
        .values(subscriber_id=None, last_reply=None, lease_owner=None)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def anonymise_digests(session: AsyncSession, who: Person, now: datetime) -> int:
    result = await session.execute(
        update(Digest)
        .where(Digest.subscriber_id == who.id)
        .values(subscriber_id=None)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def _delete_where(column: InstrumentedAttribute[Any]) -> Step:
    """A step that deletes the rows whose ``column`` is the person's id."""

    async def step(session: AsyncSession, who: Person, now: datetime) -> int:
        result = await session.execute(
            delete(column.class_)
            .where(column == who.id)
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    return step


async def delete_bounces(session: AsyncSession, who: Person, now: datetime) -> int:
    """Bounces, complaints and unsubscribe mails that came back for the person: matched to them,
    or naming their address without a match (the raw message holds it too)."""
    result = await session.execute(
        delete(Bounce)
        .where(or_(Bounce.subscriber_id == who.id, Bounce.address == who.email))
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def scrubbed(value: Any, needles: Iterable[str]) -> Any:
    """``value`` (audit details) without the personal keys and with every string that
    contains one of ``needles`` replaced by :data:`ERASED`."""
    needles = tuple(needles)
    if isinstance(value, dict):
        return {k: scrubbed(v, needles) for k, v in value.items() if k not in PERSONAL_KEYS}
    if isinstance(value, list):
        return [scrubbed(v, needles) for v in value]
    if isinstance(value, str):
        lowered = value.lower()
        return ERASED if any(n.lower() in lowered for n in needles) else value
    return value


async def scrub_audit(session: AsyncSession, who: Person, now: datetime) -> int:
    """Audit entries about the person, and any other entry whose details quote their address,
    keep what happened and when, but not who it was."""
    where = _about(who.id)
    if who.search_audit:
        where = or_(where, cast(AuditEntry.details, Text).contains(who.email, autoescape=True))
    entries = await session.scalars(select(AuditEntry).where(where))
    changed = 0
    for entry in entries:
        clean = scrubbed(entry.details, who.needles)
        if clean != entry.details:
            entry.details = clean
            changed += 1
    return changed


# The order matters: messages are cancelled before anything else, the subscriber goes last.
ERASURE_STEPS: list[tuple[str, Step]] = [
    ("outbox (noch nicht versandt, storniert)", cancel_pending),
    # Before the outbox rows lose their recipient: bounces point at them and name the address.
    ("bounces", delete_bounces),
    ("outbox (Empfänger entfernt)", anonymise_outbox),
    ("briefing_queue", _delete_where(BriefingQueue.subscriber_id)),
    ("digests (Empfänger entfernt)", anonymise_digests),
    ("consents", _delete_where(Consent.subscriber_id)),
    ("subscriptions", _delete_where(Subscription.subscriber_id)),
    ("audit_log (Angaben entfernt)", scrub_audit),
    ("subscribers", _delete_where(Subscriber.id)),
]


async def run_steps(
    session: AsyncSession,
    who: Person,
    now: datetime,
    steps: Iterable[tuple[str, Step]] = ERASURE_STEPS,
) -> dict[str, int]:
    """Run ``steps`` in order in the caller's transaction; rows touched per step."""
    return {name: await step(session, who, now) for name, step in steps}


# -- salted hashes of erased addresses ------------------------------------------------------

ERASURE_SALT = "erasure_salt"


async def erasure_salt(session: AsyncSession) -> bytes:
    """This database's salt for the hashes of erased addresses (made by migration 0012)."""
    return await installation_secret(session, ERASURE_SALT)


def address_hash(salt: bytes, email: str) -> str:
    return hmac.new(salt, email.strip().lower().encode(), hashlib.sha256).hexdigest()


async def remember_erased(session: AsyncSession, email: str, reason: str, now: datetime) -> None:
    digest = address_hash(await erasure_salt(session), email)
    await session.execute(
        _insert(session)(ErasedAddress)
        .values(address_hash=digest, reason=reason, erased_at=now)
        .on_conflict_do_nothing()
    )


async def forget_erased(session: AsyncSession, email: str) -> None:
    """The person came back by their own sign-up: the import may add them again."""
    digest = address_hash(await erasure_salt(session), email)
    await session.execute(delete(ErasedAddress).where(ErasedAddress.address_hash == digest))


async def erased_among(session: AsyncSession, emails: Iterable[str]) -> dict[str, str]:
    """Which of ``emails`` belong to erased people, with the reason of each erasure."""
    salt = await erasure_salt(session)
    by_hash = {address_hash(salt, e): e for e in emails}
    if not by_hash:
        return {}
    rows = await session.execute(
        select(ErasedAddress.address_hash, ErasedAddress.reason).where(
            ErasedAddress.address_hash.in_(list(by_hash))
        )
    )
    return {by_hash[h]: reason for h, reason in rows.all()}
