"""The delivery engine: claims due outbox rows, builds each message and sends it over a pool of
reused SMTP connections, honouring the configured rate limits.

Outcomes are written back in small batches (every few milliseconds), so a crash repeats at most
the messages in flight; rows claimed by a crashed process come back when their lease expires.
A clean stop finishes the messages being sent and hands the others back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from jinja2 import TemplateError
from sqlalchemy import Connection, select

from ..config import Settings
from ..db import Database, queries
from ..db.models import Item, ItemStatus, OutboxState
from ..errors import DeliveryError, PermanentDeliveryError, TemporaryDeliveryError
from ..links import Links
from ..rendering import Prepared, Recipient, Renderer
from .ratelimit import SharedRateLimiter
from .transport import SmtpTransport

logger = logging.getLogger(__name__)

MAX_BACKOFF = timedelta(hours=2)
# Outcomes are written when this many are waiting, or after FLUSH_SECONDS at the latest.
FLUSH_SECONDS = 0.05
# How often the queued messages' items are checked for a cancellation.
CANCEL_CHECK_SECONDS = 0.5
# While a batch is being queued (personal links signed, recipients made), the loop gets a turn
# after this many messages (after each one in the first, small batch after a pause).
YIELD_EVERY = 25


@dataclass(frozen=True)
class Job:
    """One message to send: its outbox row, its prepared content and its recipient. Its bytes
    are built by the connection that sends it, just before sending, so the queue holds no
    built messages (about 6 KB each, a batch of them per process)."""

    claimed: queries.Claimed
    prepared: Prepared
    recipient: Recipient


class Sender:
    """Delivers the outbox until :meth:`stop`; :meth:`close` ends the connections."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        renderer: Renderer,
        transports: Callable[[], SmtpTransport],
        clock: Callable[[], datetime],
    ) -> None:
        self.db = db
        self.settings = settings
        self.delivery = settings.delivery
        self.renderer = renderer
        self.links = Links(settings)
        self.clock = clock
        self.wake = asyncio.Event()
        self._stopping = False
        self._stop_event = asyncio.Event()
        # Prepared messages by item, notice and version: an event that changed is prepared anew.
        self._prepared: dict[tuple[int, str, int, str | None], Prepared] = {}
        self._transports = [transports() for _ in range(self.delivery.connections)]
        # Room for a whole batch: the next claim (a database round trip, perhaps waiting for
        # another process's transaction) happens while the connections still have work.
        # Waiting messages are checked for cancellation and handed back on a stop.
        self._jobs: asyncio.Queue[Job | None] = asyncio.Queue(
            maxsize=max(self.delivery.batch_size, 4 * self.delivery.connections)
        )
        self._queued_items: dict[int, int] = {}  # item id -> jobs of it waiting or sending
        self._cancelled: set[int] = set()
        self._outcomes: list[queries.Outcome] = []
        self._build_errors: set[str] = set()  # errors whose traceback was logged
        self._unsent: list[tuple[int, str]] = []  # (outbox id, lease owner) to hand back
        # Lease owner tokens: this process (host, pid, a random part) and a claim number.
        self._owner = f"{socket.gethostname()[:24]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._claims = itertools.count(1)
        self._resuming = True  # the last claim found nothing (or none was made yet)
        self._workers: list[asyncio.Task[None]] = []
        self._flushing = asyncio.Lock()
        # Under a rate limit, claim no more than can go out well within a lease, so no claimed
        # message outlives its lease waiting (another process would take it over).
        self._claim_size = self.delivery.batch_size
        lease = self.delivery.lease_seconds
        for rate, period in (
            (self.delivery.rate_per_second, 1),
            (self.delivery.rate_per_hour, 3600),
        ):
            if rate:
                self._claim_size = min(self._claim_size, max(1, int(rate * lease / period / 4)))
        # The limits hold for all sender processes together (shared through the database).
        limiter = SharedRateLimiter(db, self.delivery, demand=lambda: self._jobs.qsize() + 1)
        self._limiter = limiter if limiter.active else None

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Claim nothing more; messages being sent finish, the others are handed back."""
        self._stopping = True
        self._stop_event.set()
        self.wake.set()

    async def close(self) -> None:
        """Wait for the connections' current messages, record everything, close connections."""
        self.stop()
        while not self._jobs.empty():  # waiting messages go back to the outbox
            job = self._jobs.get_nowait()
            if job is not None:
                self._unsent.append((job.claimed.id, job.claimed.owner))
                self._forget(job)
            self._jobs.task_done()
        for _ in self._workers:
            await self._jobs.put(None)
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        await self._flush()
        if self._limiter is not None:
            await self._limiter.close()
        for transport in self._transports:
            await transport.close()

    def _start_workers(self) -> None:
        if not self._workers:
            self._workers = [
                asyncio.create_task(self._worker(t), name=f"smtp-{i}")
                for i, t in enumerate(self._transports)
            ]

    async def run(self) -> None:
        """Send until stopped; sleeps when nothing is due, wakes early on :attr:`wake`."""
        self._start_workers()
        flusher = asyncio.create_task(self._flush_periodically(), name="outbox-recorder")
        try:
            while not self._stopping:
                if self._limiter is not None and not self._limiter.has_capacity():
                    # Claim nothing that would wait behind an exhausted limit (and outlive its
                    # lease): wait until the limit lets messages through again.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._stop_event.wait(), self.delivery.idle_poll_seconds
                        )
                    continue
                try:
                    handled = await self._produce()
                except Exception:
                    # A broken database connection must not end delivery for good.
                    logger.exception("sender: claiming a batch failed; retrying shortly")
                    handled = 0
                if handled == 0 and not self._stopping:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), self.delivery.idle_poll_seconds)
                    self.wake.clear()
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            await self.close()

    async def run_once(self) -> int:
        """Claim one batch, deliver it completely and record it; returns how many rows."""
        self._start_workers()
        handled = await self._produce()
        await self._jobs.join()
        await self._flush()
        return handled

    # -- producing ---------------------------------------------------------------------------

    async def _produce(self) -> int:
        """Claim a batch and queue its messages for the connections (waits while they are
        busy, so at most about two batches are in flight)."""
        now = self.clock()
        lease = timedelta(seconds=self.delivery.lease_seconds)
        owner = f"{self._owner}:{next(self._claims)}"
        # New work after an empty claim (or at the start) begins with a small batch, queued
        # with a turn for the connections after each message: the first messages leave sooner.
        resuming = self._resuming
        size = min(self._claim_size, 4 * len(self._transports)) if resuming else self._claim_size
        rows = await self.db.write(
            lambda connection: queries.claim_batch(connection, now, size, lease, owner)
        )
        self._resuming = not rows
        if not rows:
            return 0
        for transport in self._transports:  # sessions are set up while the batch is prepared
            transport.warm_up()
        # The rows are ours (leased): what they need is read without holding the write lock.
        async with self.db.reading() as session:
            batch = await queries.describe_claimed(session, rows)
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
        for index, claimed in enumerate(batch):
            if resuming or index % YIELD_EVERY == YIELD_EVERY - 1:
                # Let the connections and the other tasks (whose transactions may hold the
                # database's write lock while they wait for the loop) run in between.
                await asyncio.sleep(0)
            try:
                prepared, recipient = self._message_parts(
                    claimed, topics.get(claimed.subscriber_id, []), items, briefings
                )
            except Exception as exc:  # e.g. a service message that this version does not know
                self._cannot_build(claimed, exc)
                continue
            if prepared is None:
                self._record(
                    queries.Outcome(claimed.id, OutboxState.cancelled, now, owner=claimed.owner)
                )
                continue
            if claimed.item_id is not None:
                self._queued_items[claimed.item_id] = self._queued_items.get(claimed.item_id, 0) + 1
            await self._jobs.put(Job(claimed, prepared, recipient))
        return len(batch)

    def _message_parts(
        self,
        claimed: queries.Claimed,
        keys: list[str],
        items: dict[int, Item],
        briefings: dict[int, list[Item]],
    ) -> tuple[Prepared | None, Recipient]:
        """What the claimed row's message is made of; no prepared content: it is cancelled."""
        prepared: Prepared | None = None
        if claimed.item_id is None and claimed.digest_id is None:
            # A service message (confirmation of a sign-up, the personal links): no
            # unsubscribe links, the subscription may not exist yet.
            recipient = Recipient(
                email=claimed.email,
                name=claimed.name,
                organisation=claimed.organisation,
                topics=self.renderer.topic_list(keys),
                confirm_url=self.links.confirm_url(claimed.subscriber_id, claimed.version),
                preferences_url=self.links.personal_urls(claimed.subscriber_id, claimed.version)[0],
            )
            prepared = self.renderer.prepare_service(claimed.notice)
        else:
            preferences, unsubscribe = self.links.personal_urls(
                claimed.subscriber_id, claimed.version
            )
            recipient = Recipient(
                email=claimed.email,
                name=claimed.name,
                organisation=claimed.organisation,
                topics=self.renderer.topic_list(keys),
                preferences_url=preferences,
                unsubscribe_url=unsubscribe,
            )
        if claimed.digest_id is not None:
            if briefings.get(claimed.digest_id):
                prepared = self.renderer.prepare_briefing(
                    claimed.rhythm,
                    briefings[claimed.digest_id],
                    None if claimed.all_topics else keys,
                )
        elif claimed.item_id is not None:
            item = items[claimed.item_id]
            # A cancelled announcement stops sending; an event's cancellation notice is
            # itself a message about a cancelled event and goes out.
            if item.status is not ItemStatus.cancelled:
                prepared = self._prepare(item, claimed.notice)
        return prepared, recipient

    def _prepare(self, item: Item, notice: str) -> Prepared:
        key = (item.id, notice, item.change_count, item.content_hash)
        prepared = self._prepared.get(key)
        if prepared is None:
            if len(self._prepared) > 256:
                self._prepared.clear()
            prepared = self._prepared[key] = self.renderer.prepare(item, notice)
        return prepared

    def _build(self, job: Job, message_id: str) -> bytes | None:
        try:
            return self.renderer.build_bytes(
                job.prepared, job.recipient, message_id=message_id, date=self.clock()
            )
        except Exception as exc:
            self._cannot_build(job.claimed, exc)
            return None

    def _cannot_build(self, claimed: queries.Claimed, exc: Exception) -> None:
        """Record why a message could not be made: a template error waits for a fix, anything
        else fails the message."""
        error: DeliveryError
        if isinstance(exc, TemplateError):
            # The office can fix a template (Jinja reads a changed file again): the message
            # waits and is retried like a temporary SMTP failure, up to max_age_hours.
            error = TemporaryDeliveryError(claimed.email, None, f"Vorlage fehlerhaft: {exc}")
        else:  # the row's data cannot make a message (e.g. a line break in a header)
            error = PermanentDeliveryError(
                claimed.email, None, f"Nachricht nicht erstellbar: {exc}"
            )
        # The traceback once per error, not once for each of thousands of recipients.
        if str(exc) not in self._build_errors:
            if len(self._build_errors) > 64:
                self._build_errors.clear()
            self._build_errors.add(str(exc))
            logger.error("outbox %s: message cannot be built", claimed.id, exc_info=exc)
        self._failure(claimed, error)

    # -- sending -----------------------------------------------------------------------------

    async def _worker(self, transport: SmtpTransport) -> None:
        while True:
            job = await self._jobs.get()
            try:
                if job is None:
                    return
                if not await self._may_send():
                    self._unsent.append((job.claimed.id, job.claimed.owner))
                    continue
                if job.claimed.item_id in self._cancelled:
                    self._record(
                        queries.Outcome(
                            job.claimed.id,
                            OutboxState.cancelled,
                            self.clock(),
                            owner=job.claimed.owner,
                        )
                    )
                    continue
                await self._send(transport, job)
            finally:
                if job is not None:
                    self._forget(job)
                self._jobs.task_done()

    def _forget(self, job: Job) -> None:
        item_id = job.claimed.item_id
        if item_id is not None:
            left = self._queued_items.get(item_id, 1) - 1
            if left:
                self._queued_items[item_id] = left
            else:
                self._queued_items.pop(item_id, None)

    async def _may_send(self) -> bool:
        """Wait for the rate limits; False if a stop came first (the message goes back)."""
        if self._stopping:
            return False
        if self._limiter is None:
            return True
        acquire = asyncio.ensure_future(self._limiter.acquire())
        stopped = asyncio.ensure_future(self._stop_event.wait())
        await asyncio.wait({acquire, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not acquire.done():
            acquire.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acquire
            return False
        try:
            acquire.result()
        except Exception:
            # The message goes back to the outbox; the next claim tries again.
            logger.exception("rate limit: taking tokens from the database failed")
            return False
        return not self._stopping

    async def _send(self, transport: SmtpTransport, job: Job) -> None:
        claimed = job.claimed
        message_id = self.renderer.message_id(claimed.id, claimed.subscriber_id)
        data = self._build(job, message_id)
        if data is None:
            return
        try:
            reply = await transport.send(data, self.settings.mail.sender_address, claimed.email)
        except DeliveryError as exc:
            self._failure(claimed, exc)
            return
        outcome = queries.Outcome(
            claimed.id,
            OutboxState.sent,
            self.clock(),
            code=250,
            reply=reply,
            message_id=message_id,
            owner=claimed.owner,
        )
        self._record(outcome)

    def _failure(self, claimed: queries.Claimed, exc: DeliveryError) -> None:
        now = self.clock()
        too_old = now - claimed.created_at > timedelta(hours=self.delivery.max_age_hours)
        if isinstance(exc, TemporaryDeliveryError) and not too_old:
            backoff = timedelta(
                seconds=self.delivery.retry_base_seconds * 2 ** max(claimed.attempts - 1, 0)
            )
            backoff = min(backoff, MAX_BACKOFF) * random.uniform(0.8, 1.2)  # noqa: S311
            logger.warning(
                "outbox %s deferred until %s: %s",
                claimed.id,
                (now + backoff).isoformat(timespec="seconds"),
                exc,
            )
            self._record(
                queries.Outcome(
                    claimed.id,
                    OutboxState.deferred,
                    now,
                    code=exc.code,
                    reply=exc.reply,
                    retry_at=now + backoff,
                    owner=claimed.owner,
                )
            )
        else:
            logger.warning("outbox %s failed: %s", claimed.id, exc)
            hard = isinstance(exc, PermanentDeliveryError) and exc.bounced
            self._record(
                queries.Outcome(
                    claimed.id,
                    OutboxState.failed,
                    now,
                    code=exc.code,
                    reply=exc.reply,
                    subscriber_id=claimed.subscriber_id if hard else None,
                    owner=claimed.owner,
                )
            )

    # -- recording ---------------------------------------------------------------------------

    def _record(self, outcome: queries.Outcome) -> None:
        self._outcomes.append(outcome)

    async def _flush_periodically(self) -> None:
        loop = asyncio.get_running_loop()
        next_check = loop.time()
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                if self._outcomes or self._unsent:
                    await self._flush()
                if self._queued_items and loop.time() >= next_check:
                    next_check = loop.time() + CANCEL_CHECK_SECONDS
                    async with self.db.reading() as session:
                        self._cancelled = await queries.cancelled_items(
                            session, list(self._queued_items)
                        )
            except Exception:
                logger.exception("recording delivery outcomes failed; retrying")

    async def _flush(self) -> None:
        """Write waiting outcomes (and hand back unsent messages) in one transaction."""
        async with self._flushing:
            outcomes, self._outcomes = self._outcomes, []
            unsent, self._unsent = self._unsent, []
            if not outcomes and not unsent:
                return
            bouncing = {o.subscriber_id for o in outcomes if o.subscriber_id is not None}
            now = self.clock()
            threshold = self.delivery.suppress_after_hard_failures

            def record(connection: Connection) -> None:
                queries.record_outcomes(connection, outcomes)
                if bouncing:
                    queries.suppress_bouncing(connection, bouncing, threshold, now)
                queries.release(connection, unsent, now)

            try:
                await self.db.write(record)
            except BaseException:
                self._outcomes[:0] = outcomes  # keep them for the next try
                self._unsent[:0] = unsent
                raise
