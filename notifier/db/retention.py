"""The queries of the retention periods (``[retention]``): who and what is due, and the bulk
changes. Each function takes the cut-off times, so a dry run and the purge at the same ``now``
see the same rows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Text, cast, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .models import AuditEntry, Consent, Digest, OutboxMessage, OutboxState, Subscriber
from .models import SubscriberStatus as Status

# The name of an unsubscribed person whose data is gone but whose consent record is kept as
# proof (with the address) until ``consent_proof_days`` have passed too.
PROOF_ONLY_NAME = ""
# Messages in these states are finished; only these lose their recipient.
FINISHED = (OutboxState.sent, OutboxState.failed, OutboxState.cancelled)


async def unconfirmed(session: AsyncSession, before: datetime) -> list[int]:
    """Sign-ups not confirmed, made (or made again) before ``before``."""
    rows = await session.scalars(
        select(Subscriber.id)
        .where(Subscriber.status == Status.pending, Subscriber.updated_at < before)
        .order_by(Subscriber.id)
    )
    return list(rows)


async def unsubscribed(session: AsyncSession, before: datetime) -> tuple[list[int], list[int]]:
    """Unsubscribed before ``before`` and not yet reduced: (with a consent record, without)."""
    with_consent = select(Consent.subscriber_id).where(Consent.subscriber_id == Subscriber.id)
    rows = await session.execute(
        select(Subscriber.id, with_consent.exists())
        .where(
            Subscriber.status == Status.unsubscribed,
            Subscriber.updated_at < before,
            Subscriber.name != PROOF_ONLY_NAME,
        )
        .order_by(Subscriber.id)
    )
    found = rows.all()
    return [i for i, has in found if has], [i for i, has in found if not has]


async def proof_expired(session: AsyncSession, before: datetime) -> list[int]:
    """Reduced records (consent kept as proof) of people unsubscribed before ``before``."""
    rows = await session.scalars(
        select(Subscriber.id)
        .where(
            Subscriber.status == Status.unsubscribed,
            Subscriber.updated_at < before,
            Subscriber.name == PROOF_ONLY_NAME,
        )
        .order_by(Subscriber.id)
    )
    return list(rows)


def _old_outbox(before: datetime) -> Any:
    return (
        OutboxMessage.subscriber_id.is_not(None)
        & OutboxMessage.state.in_(FINISHED)
        & (OutboxMessage.updated_at < before)
    )


def _old_digests(before: datetime) -> Any:
    return Digest.subscriber_id.is_not(None) & (Digest.created_at < before)


def _old_consent_ips(before: datetime) -> Any:
    return (Consent.ip != "") & (Consent.requested_at < before)


def _audit_with_ip(before: datetime) -> Any:
    return (AuditEntry.at < before) & cast(AuditEntry.details, Text).contains('"ip"')


async def _count(session: AsyncSession, entity: Any, where: Any) -> int:
    return int(await session.scalar(select(func.count()).select_from(entity).where(where)) or 0)


async def count_outbox(session: AsyncSession, before: datetime) -> tuple[int, int]:
    """Outbox rows and briefings older than ``before`` that still name their recipient."""
    return (
        await _count(session, OutboxMessage, _old_outbox(before)),
        await _count(session, Digest, _old_digests(before)),
    )


async def anonymise_outbox(session: AsyncSession, before: datetime) -> tuple[int, int]:
    rows = await session.execute(
        update(OutboxMessage)
        .where(_old_outbox(before))
        .values(subscriber_id=None, last_reply=None)
        .execution_options(synchronize_session=False)
    )
    digests = await session.execute(
        update(Digest)
        .where(_old_digests(before))
        .values(subscriber_id=None)
        .execution_options(synchronize_session=False)
    )
    return int(rows.rowcount), int(digests.rowcount)  # type: ignore[attr-defined]


async def _audit_ip_entries(session: AsyncSession, before: datetime) -> Sequence[AuditEntry]:
    entries = await session.scalars(select(AuditEntry).where(_audit_with_ip(before)))
    return [e for e in entries if isinstance(e.details, dict) and "ip" in e.details]


async def count_ips(session: AsyncSession, before: datetime) -> tuple[int, int]:
    """Consent records and audit entries older than ``before`` that still hold an IP."""
    return (
        await _count(session, Consent, _old_consent_ips(before)),
        len(await _audit_ip_entries(session, before)),
    )


async def remove_ips(session: AsyncSession, before: datetime) -> tuple[int, int]:
    consents = await session.execute(
        update(Consent)
        .where(_old_consent_ips(before))
        .values(ip="")
        .execution_options(synchronize_session=False)
    )
    entries = await _audit_ip_entries(session, before)
    for entry in entries:
        entry.details = {k: v for k, v in entry.details.items() if k != "ip"}
    return int(consents.rowcount), len(entries)  # type: ignore[attr-defined]


async def count_audit(session: AsyncSession, before: datetime) -> int:
    return await _count(session, AuditEntry, AuditEntry.at < before)


async def delete_audit(session: AsyncSession, before: datetime) -> int:
    result = await session.execute(
        delete(AuditEntry)
        .where(AuditEntry.at < before)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def reduce_to_proof(session: AsyncSession, subscriber_id: int) -> None:
    """Keep the address and the consent record, nothing else (the caller ran the other steps)."""
    await session.execute(
        update(Subscriber)
        .where(Subscriber.id == subscriber_id)
        .values(name=PROOF_ONLY_NAME, all_topics=True)
        .execution_options(synchronize_session=False)
    )
