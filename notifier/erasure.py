"""Erasure on request (DSGVO art. 17): one person's data goes from every table in one
transaction, from the preferences page, the office console, the API or the CLI.

What stays: the outbox rows and briefings sent to the person, without their recipient (the
statistics still count them), the audit log's entries without their personal details, one entry
"subscriber 42 erased by office:buero", and a salted hash of the address, so that the office's
next CSV import skips the address and says why (see :mod:`notifier.subscribers`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from . import audit
from .addresses import AddressError, normalise_email
from .db import erasure as steps
from .db.models import Subscriber
from .errors import NotFoundError

logger = logging.getLogger(__name__)

# Why an address was erased: the person asked, or the retention periods ran out.
REQUEST = "request"
RETENTION = "retention"
# The step whose count says how many messages were cancelled.
CANCELLED_STEP = steps.ERASURE_STEPS[0][0]


@dataclass(frozen=True)
class Erased:
    """What an erasure did: the subscriber's id and the rows touched per table."""

    subscriber_id: int
    rows: dict[str, int]


async def erase_subscriber(
    session: AsyncSession,
    sub: Subscriber,
    *,
    actor: str,
    now: datetime,
    reason: str = REQUEST,
    keep_hash: bool = True,
    search_audit: bool = True,
) -> Erased:
    """Erase ``sub`` everywhere, in the caller's transaction (so nothing is half-erased when it
    fails): messages not yet sent are cancelled first, then every step of
    :data:`notifier.db.erasure.ERASURE_STEPS` runs; the audit entry names only the id and the
    actor. With ``keep_hash`` the address's salted hash is kept for the import; without
    ``search_audit`` only the audit entries filed under the subscriber are cleaned, not every
    entry that might quote the address (see :class:`notifier.db.erasure.Person`)."""
    who = await steps.person(session, sub, search_audit=search_audit)
    # The ORM must not write the object back after its row is gone.
    session.expunge(sub)
    rows = await steps.run_steps(session, who, now)
    if keep_hash:
        await steps.remember_erased(session, who.email, reason, now)
    await audit.record(
        session, actor, "subscriber.erased", "subscriber", who.id, {"reason": reason}, at=now
    )
    logger.info("subscriber %d erased by %s (%s)", who.id, actor, reason)
    return Erased(who.id, rows)


async def subscriber_by_address(session: AsyncSession, address: str) -> Subscriber:
    """The subscriber with this address; raises :class:`NotFoundError` (German) otherwise."""
    try:
        email = normalise_email(address)
    except AddressError as exc:
        raise NotFoundError(f"Keine gültige E-Mail-Adresse: {address!r} ({exc}).") from exc
    sub = await session.scalar(select(Subscriber).where(Subscriber.email == email))
    if sub is None:
        raise NotFoundError(f"Keinen Abonnenten mit der Adresse {email} gefunden.")
    return sub


__all__ = ["REQUEST", "RETENTION", "Erased", "erase_subscriber", "subscriber_by_address"]
