"""The sender: claims due outbox rows, renders each message and hands it to SMTP.

Every outcome is written to the outbox right after the SMTP reply, so a crash repeats at most the
message in flight; rows claimed by a crashed process come back when their lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select

from ..config import Settings
from ..db import Database, queries
from ..db.models import Item, ItemStatus
from ..errors import DeliveryError, PermanentDeliveryError, TemporaryDeliveryError
from ..rendering import Prepared, Recipient, Renderer
from .transport import SmtpTransport

logger = logging.getLogger(__name__)

MAX_BACKOFF = timedelta(hours=2)


class Sender:
    """Delivers the outbox until :meth:`stop` is called."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        renderer: Renderer,
        transport: SmtpTransport,
        clock: Callable[[], datetime],
    ) -> None:
        self.db = db
        self.settings = settings
        self.delivery = settings.delivery
        self.renderer = renderer
        self.transport = transport
        self.clock = clock
        self.wake = asyncio.Event()
        self._stopping = False
        self._prepared: dict[tuple[int, str], Prepared] = {}

    def stop(self) -> None:
        self._stopping = True
        self.wake.set()

    async def run(self) -> None:
        """Send until stopped; sleeps when nothing is due, wakes early on :attr:`wake`."""
        while not self._stopping:
            try:
                handled = await self.run_once()
            except Exception:
                # A broken database connection or similar must not end delivery for good.
                logger.exception("sender: batch failed; retrying shortly")
                handled = 0
            if handled == 0 and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.delivery.idle_poll_seconds)
                self.wake.clear()

    async def run_once(self) -> int:
        """Claim one batch and deliver it; returns how many rows were handled."""
        now = self.clock()
        async with self.db.transaction() as session:
            batch = await queries.claim_batch(
                session,
                now,
                self.delivery.batch_size,
                timedelta(seconds=self.delivery.lease_seconds),
            )
            if not batch:
                return 0
            topics = await queries.subscriber_topics(
                session, [c.subscriber_id for c in batch if not c.all_topics]
            )
            item_ids = {c.item_id for c in batch if c.item_id is not None}
            items = {
                i.id: i for i in await session.scalars(select(Item).where(Item.id.in_(item_ids)))
            }
            briefings = await queries.digest_items(
                session, [c.digest_id for c in batch if c.digest_id is not None], now
            )
        pending = [c.id for c in batch]
        try:
            for claimed in batch:
                if self._stopping:
                    break
                keys = topics.get(claimed.subscriber_id, [])
                recipient = Recipient(
                    email=claimed.email,
                    name=claimed.name,
                    organisation=claimed.organisation,
                    topics=self.renderer.topic_list(keys),
                )
                if claimed.digest_id is not None and not briefings.get(claimed.digest_id):
                    # Everything in it was cancelled after the briefing was built.
                    async with self.db.transaction() as session:
                        await queries.mark_cancelled(session, claimed.id, self.clock())
                elif claimed.digest_id is not None:
                    prepared = self.renderer.prepare_briefing(
                        claimed.rhythm,
                        briefings[claimed.digest_id],
                        None if claimed.all_topics else keys,
                    )
                    await self._deliver(claimed, prepared, recipient)
                else:
                    assert claimed.item_id is not None
                    item = items[claimed.item_id]
                    # A cancelled announcement stops sending; an event's cancellation notice
                    # is itself a message about a cancelled item and goes out.
                    if item.status is ItemStatus.cancelled:
                        async with self.db.transaction() as session:
                            await queries.mark_cancelled(session, claimed.id, self.clock())
                    else:
                        await self._deliver(claimed, self._prepare(item, claimed.notice), recipient)
                pending.remove(claimed.id)
        finally:
            if pending:
                async with self.db.transaction() as session:
                    await queries.release(session, pending, self.clock())
        return len(batch)

    def _prepare(self, item: Item, notice: str) -> Prepared:
        key = (item.id, notice)
        prepared = self._prepared.get(key)
        if prepared is None:
            if len(self._prepared) > 256:
                self._prepared.clear()
            prepared = self._prepared[key] = self.renderer.prepare(item, notice)
        return prepared

    async def _deliver(
        self, claimed: queries.Claimed, prepared: Prepared, recipient: Recipient
    ) -> None:
        message_id = self.renderer.message_id(claimed.id, claimed.subscriber_id)
        try:
            message = self.renderer.build(
                prepared, recipient, message_id=message_id, date=self.clock()
            )
        except ValueError as exc:
            logger.error("outbox %s: message cannot be built: %s", claimed.id, exc)
            await self._record_failure(
                claimed,
                PermanentDeliveryError(recipient.email, None, f"Nachricht nicht erstellbar: {exc}"),
            )
            return
        try:
            reply = await self.transport.send(
                message, self.settings.mail.sender_address, recipient.email
            )
        except DeliveryError as exc:
            await self._record_failure(claimed, exc)
            return
        now = self.clock()
        async with self.db.transaction() as session:
            await queries.mark_sent(session, claimed.id, now, message_id, 250, reply)
        logger.debug("outbox %s sent to %s", claimed.id, recipient.email)

    async def _record_failure(self, claimed: queries.Claimed, exc: DeliveryError) -> None:
        now = self.clock()
        too_old = now - claimed.created_at > timedelta(hours=self.delivery.max_age_hours)
        async with self.db.transaction() as session:
            if isinstance(exc, TemporaryDeliveryError) and not too_old:
                backoff = timedelta(
                    seconds=self.delivery.retry_base_seconds * 2 ** (claimed.attempts - 1)
                )
                backoff = min(backoff, MAX_BACKOFF) * random.uniform(0.8, 1.2)  # noqa: S311
                await queries.mark_deferred(
                    session, claimed.id, now, now + backoff, exc.code, exc.reply
                )
                logger.warning(
                    "outbox %s deferred until %s: %s",
                    claimed.id,
                    (now + backoff).isoformat(timespec="seconds"),
                    exc,
                )
            else:
                await queries.mark_failed(session, claimed.id, now, exc.code, exc.reply)
                logger.warning("outbox %s failed: %s", claimed.id, exc)
