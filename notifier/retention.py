"""The retention periods of ``[retention]`` (DSGVO art. 5(1)(e)), carried out daily by the
scheduler's leader and by ``notifier privacy purge [--dry-run]``.

:func:`plan` finds what is due at ``now`` without changing anything (the dry run); :func:`purge`
finds the same and removes it. The bulk kinds (outbox recipients, IP addresses, the audit log)
go first, each in one statement; then each person in a transaction of their own, so a purge
stopped at any moment leaves every person either whole or gone, and the next run goes on.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select

from . import audit
from .catcher import CaughtMail, MailStore
from .config import Settings
from .db import Database
from .db import erasure as steps
from .db import retention as queries
from .db.models import Subscriber, SubscriberStatus
from .erasure import RETENTION, erase_subscriber

logger = logging.getLogger(__name__)

# An unconfirmed sign-up is kept this long after its confirmation link expired, so a person
# who finds the e-mail late can sign up again knowing why nothing arrived.
UNCONFIRMED_GRACE = timedelta(days=7)
ACTOR = "retention"
# Steps for an unsubscribed person whose consent record is kept as proof (with the address).
PROOF_KEEPS = ("consents", "subscribers")


@dataclass
class Purge:
    """What is due at ``now`` (a dry run) or what was removed, per kind."""

    now: datetime
    unconfirmed: list[int] = field(default_factory=list)
    unsubscribed: list[int] = field(default_factory=list)  # reduced to the consent proof
    unsubscribed_gone: list[int] = field(default_factory=list)  # no consent: erased
    proof_expired: list[int] = field(default_factory=list)
    outbox_rows: int = 0
    digests: int = 0
    consent_ips: int = 0
    audit_ips: int = 0
    audit_entries: int = 0
    catcher_mails: list[CaughtMail] = field(default_factory=list)
    # Set by the purge: people skipped because they changed meanwhile (signed up again).
    skipped: int = 0

    def counts(self) -> dict[str, int]:
        return {
            "unconfirmed": len(self.unconfirmed),
            "unsubscribed": len(self.unsubscribed),
            "unsubscribed_gone": len(self.unsubscribed_gone),
            "proof_expired": len(self.proof_expired),
            "outbox_rows": self.outbox_rows,
            "digests": self.digests,
            "consent_ips": self.consent_ips,
            "audit_ips": self.audit_ips,
            "audit_entries": self.audit_entries,
            "catcher_mails": len(self.catcher_mails),
        }


@dataclass(frozen=True)
class Cutoffs:
    unconfirmed: datetime
    unsubscribed: datetime
    proof: datetime
    outbox: datetime
    ip: datetime
    audit: datetime
    catcher: datetime


def cutoffs(settings: Settings, now: datetime) -> Cutoffs:
    r = settings.retention
    days = timedelta(days=1)
    return Cutoffs(
        unconfirmed=now - timedelta(hours=settings.web.confirm_hours) - UNCONFIRMED_GRACE,
        unsubscribed=now - r.unsubscribed_days * days,
        proof=now - (r.unsubscribed_days + r.consent_proof_days) * days,
        outbox=now - r.outbox_days * days,
        ip=now - r.ip_days * days,
        audit=now - r.audit_days * days,
        catcher=now - r.catcher_days * days,
    )


def _catcher_store(settings: Settings) -> MailStore:
    return MailStore(settings.catcher_dir)


def _old_mails(store: MailStore, before: datetime) -> list[CaughtMail]:
    if not store.directory.is_dir():
        return []
    return [m for m in store.list() if m.received_at < before]


async def plan(db: Database, settings: Settings, now: datetime) -> Purge:
    """What a purge at ``now`` would remove; changes nothing."""
    cut = cutoffs(settings, now)
    due = Purge(now)
    async with db.reading() as session:
        due.unconfirmed = await queries.unconfirmed(session, cut.unconfirmed)
        due.unsubscribed, due.unsubscribed_gone = await queries.unsubscribed(
            session, cut.unsubscribed
        )
        due.proof_expired = await queries.proof_expired(session, cut.proof)
        due.outbox_rows, due.digests = await queries.count_outbox(session, cut.outbox)
        due.consent_ips, due.audit_ips = await queries.count_ips(session, cut.ip)
        due.audit_entries = await queries.count_audit(session, cut.audit)
    due.catcher_mails = await asyncio.to_thread(_old_mails, _catcher_store(settings), cut.catcher)
    return due


# Which people a kind takes, checked again inside each person's transaction.
def _still_due(kind: str, sub: Subscriber, cut: Cutoffs) -> bool:
    if kind == "unconfirmed":
        return sub.status is SubscriberStatus.pending and sub.updated_at < cut.unconfirmed
    if sub.status is not SubscriberStatus.unsubscribed:
        return False
    if kind == "proof_expired":
        return sub.name == queries.PROOF_ONLY_NAME and sub.updated_at < cut.proof
    return sub.name != queries.PROOF_ONLY_NAME and sub.updated_at < cut.unsubscribed


async def _person(db: Database, kind: str, subscriber_id: int, cut: Cutoffs, now: datetime) -> bool:
    async with db.transaction() as session:
        sub = await session.scalar(select(Subscriber).where(Subscriber.id == subscriber_id))
        if sub is None or not _still_due(kind, sub, cut):
            return False
        if kind == "unsubscribed":
            who = await steps.person(session, sub, search_audit=False)
            session.expunge(sub)
            keep = [s for s in steps.ERASURE_STEPS if s[0] not in PROOF_KEEPS]
            await steps.run_steps(session, who, now, keep)
            await queries.reduce_to_proof(session, subscriber_id)
            await audit.record(
                session,
                ACTOR,
                "subscriber.reduced_to_proof",
                "subscriber",
                subscriber_id,
                {},
                at=now,
            )
        else:
            # Unconfirmed sign-ups never became subscribers: no hash keeps them from an import.
            await erase_subscriber(
                session,
                sub,
                actor=ACTOR,
                now=now,
                reason=RETENTION,
                keep_hash=kind != "unconfirmed",
                search_audit=False,
            )
    return True


def _remove_mails(mails: list[CaughtMail]) -> None:
    for mail in mails:
        mail.path.unlink(missing_ok=True)
        mail.path.with_suffix(".json").unlink(missing_ok=True)


async def purge(db: Database, settings: Settings, now: datetime) -> Purge:
    """Remove what :func:`plan` finds at ``now``; returns it (``skipped``: people who changed
    in between and were left)."""
    due = await plan(db, settings, now)
    cut = cutoffs(settings, now)
    async with db.transaction() as session:
        await queries.anonymise_outbox(session, cut.outbox)
        await queries.remove_ips(session, cut.ip)
        await queries.delete_audit(session, cut.audit)
    people = [
        ("unconfirmed", due.unconfirmed),
        ("unsubscribed", due.unsubscribed),
        ("unsubscribed_gone", due.unsubscribed_gone),
        ("proof_expired", due.proof_expired),
    ]
    for kind, ids in people:
        for subscriber_id in ids:
            if not await _person(db, kind, subscriber_id, cut, now):
                due.skipped += 1
    await asyncio.to_thread(_remove_mails, due.catcher_mails)
    async with db.transaction() as session:
        await audit.record(session, ACTOR, "privacy.purge", "retention", None, due.counts(), at=now)
    logger.info("Löschfristen: %s", ", ".join(f"{k}={v}" for k, v in due.counts().items()))
    return due


def _n(value: int) -> str:
    return f"{value:,}".replace(",", ".")


def report_lines(due: Purge, settings: Settings, *, dry_run: bool) -> list[str]:
    """The German report of ``notifier privacy purge``: one line per kind with its count."""
    r = settings.retention
    c = due.counts()
    hours = f"{settings.web.confirm_hours:g}"
    rows = [
        (f"Unbestätigte Anmeldungen (älter als {hours} Std. + 7 Tage), gelöscht", c["unconfirmed"]),
        (
            f"Abgemeldete (nach {r.unsubscribed_days} Tagen): Daten gelöscht, "
            "Einwilligung als Nachweis behalten",
            c["unsubscribed"],
        ),
        (
            f"Abgemeldete ohne Einwilligung (nach {r.unsubscribed_days} Tagen), gelöscht",
            c["unsubscribed_gone"],
        ),
        (
            f"Einwilligungsnachweise (nach weiteren {r.consent_proof_days} Tagen), gelöscht",
            c["proof_expired"],
        ),
        (
            f"Outbox-Nachrichten älter als {r.outbox_days} Tage: Empfänger entfernt",
            c["outbox_rows"],
        ),
        (f"Sammel-E-Mails älter als {r.outbox_days} Tage: Empfänger entfernt", c["digests"]),
        (f"IP-Adressen in Einwilligungen (älter als {r.ip_days} Tage)", c["consent_ips"]),
        (f"IP-Adressen im Änderungsprotokoll (älter als {r.ip_days} Tage)", c["audit_ips"]),
        (f"Einträge im Änderungsprotokoll älter als {r.audit_days} Tage", c["audit_entries"]),
        (f"Mail-Catcher: E-Mails älter als {r.catcher_days} Tage", c["catcher_mails"]),
    ]
    head = "Probelauf – würde entfernen:" if dry_run else "Entfernt:"
    lines = [head, *(f"  {label}: {_n(count)}" for label, count in rows)]
    if due.skipped:
        changed = _n(due.skipped)
        lines.append(f"  Übersprungen (inzwischen geändert, z. B. neu angemeldet): {changed}")
    if not dry_run and not any(c.values()):
        lines = ["Nichts zu entfernen: alle Daten liegen innerhalb der Fristen."]
    elif dry_run and not any(c.values()):
        lines = ["Probelauf: nichts zu entfernen, alle Daten liegen innerhalb der Fristen."]
    return lines
