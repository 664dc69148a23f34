"""The bounce intake: one incoming message is classified, matched to the message and person it
is about, recorded in ``bounces`` and acted on, in one transaction.

- hard bounce (5.x.x): the outbox row counts as bounced, like a 5xx refusal at RCPT; after
  ``[delivery] suppress_after_hard_failures`` the address is suppressed;
- soft bounce (4.x.x, mailbox full): ``[bounces] suppress_after_soft_bounces`` within
  ``soft_window_days`` suppress;
- complaint (ARF): unsubscribed at once (audited, ``how: complaint``);
- mail to ``[mail] unsubscribe_mailto``: its sender's subscription ends (``how: mailto``);
- auto-replies, success reports, anything unreadable or forged: recorded, nothing done.

Matching: the VERP token of the address the report came to (forged: nothing is done), else the
Message-ID of our message quoted in the report. Only without ``return_path`` is the reported
address alone trusted, as nothing better is there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from .. import selfservice
from ..config import Settings
from ..db import Database, queries
from ..db import bounces as store
from ..db.models import Bounce, BounceKind, Subscriber
from .parsing import Finding, classify
from .verp import ReturnPath

logger = logging.getLogger(__name__)

# Of a message over the size limit, this much of its start is kept (its headers, for a look).
HEAD_BYTES = 64 * 1024
ACTED = (BounceKind.hard, BounceKind.soft, BounceKind.complaint, BounceKind.unsubscribe)


@dataclass(frozen=True)
class Handled:
    """What became of one message: its ``bounces`` row, its kind and what was done.
    ``processed``: a bounce, complaint or unsubscribe mail (moved to the processed folder);
    otherwise it is left where it was."""

    bounce_id: int
    kind: BounceKind
    action: str

    @property
    def processed(self) -> bool:
        return self.kind in ACTED


async def return_path(db: Database, settings: Settings) -> ReturnPath:
    """The installation's VERP addresses (keyed with the database's secret)."""
    async with db.transaction() as session:
        key = await queries.message_id_key(session)
    return ReturnPath(settings.bounces.return_path, settings.mail.sender_address, key)


class BounceIntake:
    def __init__(self, db: Database, settings: Settings, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.settings = settings
        self.bounces = settings.bounces
        self.clock = clock
        self._return_path: ReturnPath | None = None

    async def handle(
        self, raw: bytes, *, source: str, recipients: Sequence[str] = (), size: int | None = None
    ) -> Handled:
        """Classify, record and act on one message. ``size``: its real size when ``raw`` is
        only its start (a message over the limit, never read whole). Never raises for what the
        message holds; a database failure propagates (the message stays for the next try)."""
        if self._return_path is None:
            self._return_path = await return_path(self.db, self.settings)
        size = len(raw) if size is None else size
        limit = self.bounces.max_message_bytes
        if size > limit or len(raw) > limit:
            finding = Finding(
                BounceKind.unparseable,
                recipients=list(recipients),
                reason=f"zu groß: {size:,} Bytes (Grenze {limit:,})".replace(",", "."),
            )
            raw = raw[:HEAD_BYTES]
        else:
            finding = await asyncio.to_thread(
                classify, raw, list(recipients), self.settings.mail.unsubscribe_mailto
            )
        outbox_id, had_token = self._return_path.find(finding.recipients)
        if had_token and outbox_id is None and finding.kind is not BounceKind.unsubscribe:
            finding.kind = BounceKind.unparseable
            finding.reason = "gefälschtes oder beschädigtes Token in der Bounce-Adresse"
        trusted = not (had_token and outbox_id is None)
        handled = await self._record(finding, raw, size, source, outbox_id, trusted)
        log = logger.info if handled.processed else logger.debug
        log("bounce %d (%s): %s", handled.bounce_id, handled.kind.value, handled.action)
        return handled

    async def _record(
        self,
        finding: Finding,
        raw: bytes,
        size: int,
        source: str,
        outbox_id: int | None,
        trusted: bool,
    ) -> Handled:
        """Record the finding and act on it; ``trusted``: no forged token (a forged message is
        tied to nobody, whatever else it quotes)."""
        now = self.clock()
        async with self.db.transaction() as session:
            row = None
            sub: Subscriber | None = None
            if finding.kind is BounceKind.unsubscribe:
                if finding.address:
                    sub = await store.subscriber_by_email(session, finding.address)
            elif trusted:
                # Tied to the message (and so the person) even when nothing is done: erasing a
                # person removes every row about them.
                if outbox_id is not None:
                    row = await store.outbox_row(session, outbox_id)
                if row is None and finding.original_message_id:
                    row = await store.outbox_by_message_id(session, finding.original_message_id)
                if row is not None:
                    sub = await session.get(Subscriber, row.subscriber_id)
                elif finding.address and not self._return_path_active:
                    sub = await store.subscriber_by_email(session, finding.address)
            # Whom the row is about (for erasure and the per-address view), even where nothing
            # is done because the report is not trusted to name them.
            about = sub
            if about is None and finding.address:
                about = await store.subscriber_by_email(session, finding.address)
            bounce = Bounce(
                received_at=now,
                source=source,
                kind=finding.kind,
                address=(finding.address or (about.email if about else None) or None),
                subscriber_id=about.id if about else None,
                outbox_id=row.id if row is not None else None,
                status=finding.status,
                diagnostic=(finding.diagnostic or finding.reason or None),
                action="",
                message_id=finding.message_id,
                size=size,
                raw=raw if self.bounces.keep_raw_days > 0 else None,
                counts=True,
            )
            if bounce.address is not None:
                bounce.address = bounce.address[:320].lower()
            session.add(bounce)
            if sub is None or finding.kind not in ACTED:
                bounce.action = finding.reason or (
                    "keine Zuordnung zu einer gesendeten Nachricht"
                    if finding.kind in ACTED
                    else "nichts zu tun"
                )
            else:
                if row is not None and finding.kind is BounceKind.hard:
                    row.bounced = True
                await session.flush()
                bounce.action = await self._act(session, finding.kind, sub, now)
            await session.flush()
            return Handled(bounce.id, finding.kind, bounce.action)

    @property
    def _return_path_active(self) -> bool:
        return self._return_path is not None and self._return_path.active

    async def _act(
        self, session: AsyncSession, kind: BounceKind, sub: Subscriber, now: datetime
    ) -> str:
        if kind is BounceKind.hard:
            threshold = self.settings.delivery.suppress_after_hard_failures
            failures = await store.hard_failures(session, sub.id)
            if failures < threshold:
                return f"gezählt ({failures} von {threshold} harten Fehlern)"
            if await store.suppress(
                session, sub, now, {"hard_failures": failures, "how": "bounce"}
            ):
                return f"gesperrt ({failures} harte Fehler)"
            return f"gezählt ({failures} harte Fehler; Status bleibt {sub.status.value})"
        if kind is BounceKind.soft:
            threshold = self.bounces.suppress_after_soft_bounces
            since = now - timedelta(days=self.bounces.soft_window_days)
            count = await store.soft_bounces(session, sub.id, since)
            if count < threshold:
                return f"gezählt ({count} von {threshold} weichen Fehlern)"
            if await store.suppress(session, sub, now, {"soft_bounces": count, "how": "bounce"}):
                return f"gesperrt ({count} weiche Fehler)"
            return f"gezählt ({count} weiche Fehler; Status bleibt {sub.status.value})"
        how = "complaint" if kind is BounceKind.complaint else "mailto"
        changed = await selfservice.unsubscribe(
            session, sub, how=how, ip="", now=now, actor="bounces"
        )
        return "abgemeldet" if changed else f"war schon {sub.status.value}"

    async def clean(self) -> int:
        """Forget raw messages older than keep_raw_days; returns how many."""
        before = self.clock() - timedelta(days=self.bounces.keep_raw_days)
        async with self.db.transaction() as session:
            return await store.drop_old_raw(session, before)
