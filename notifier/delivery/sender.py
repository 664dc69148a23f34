"""The delivery engine: claims due outbox rows, builds each message and sends it over a pool of
reused SMTP connections, honouring the configured rate limits.

A connection sends a message only once the outcomes of all but its last few
(UNRECORDED_PER_CONNECTION) are committed (outcomes of all connections are written together, in
one transaction per round), so a crash repeats at most that many messages per connection; rows
claimed by a crashed process come back when their lease expires. A live process renews the
leases of the rows it holds. A clean stop finishes the messages being sent and hands the others
back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
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

from .. import metrics
from ..bounces.verp import ReturnPath
from ..config import Settings
from ..db import Database, queries
from ..db.models import Item, ItemStatus, OutboxState
from ..errors import (
    DeliveryError,
    PermanentDeliveryError,
    SmtpUnavailable,
    TemporaryDeliveryError,
)
from ..links import Links
from ..logs import log_form, without_address
from ..rendering import MessageIds, Prepared, Recipient, Renderer
from .health import SmtpHealth, Trouble
from .ratelimit import SharedRateLimiter
from .transport import SmtpTransport

logger = logging.getLogger(__name__)

MAX_BACKOFF = timedelta(hours=2)
# Messages a connection may have sent whose outcome is not committed yet: what a crash can
# repeat per connection. One (each message waiting for the last one's commit) cut the
# benchmark's rate to about half: a write round (the gap below plus the transaction, a few ms,
# more while the other sender process holds the write lock) is longer than a message takes;
# four keep the connections busy through a round.
UNRECORDED_PER_CONNECTION = 4
# The recorder waits this long after each write before the next: back-to-back writes of two
# processes kept SQLite's write lock taken nearly all the time, and claims starved behind them.
FLUSH_GAP_SECONDS = 0.01
# How often the queued messages' items are checked for a cancellation.
CANCEL_CHECK_SECONDS = 0.5
# While a batch is being queued (personal links signed, recipients made), the loop gets a turn
# after this many messages (after each one in the first, small batch after a pause).
YIELD_EVERY = 25
# A sender refreshes its SMTP status record this often; records not refreshed for STATUS_KEPT
# (of processes that ended without a clean stop) are removed.
STATUS_SECONDS = 60.0
STATUS_KEPT = timedelta(days=1)
# A stop waits this long for the messages on the wire (the service gives the sender 10 s).
CLOSE_GRACE_SECONDS = 8.0


@dataclass(frozen=True)
class Job:
    """One message to send: its outbox row, its prepared content and its recipient. Its bytes
    are built by the connection that sends it, just before sending, so the queue holds no
    built messages (about 6 KB each, a batch of them per process)."""

    claimed: queries.Claimed
    prepared: Prepared
    recipient: Recipient


def _reason_class(exc: DeliveryError) -> str:
    """The few classes failures are counted by: no session, the server's 4xx or 5xx reply, or
    a connection lost without a reply."""
    if isinstance(exc, SmtpUnavailable):
        return "unreachable"
    if exc.code is not None and 400 <= exc.code < 600:
        return f"smtp_{exc.code // 100}xx"
    return "connection"


def _described(claimed: queries.Claimed, exc: DeliveryError) -> tuple[str, dict[str, object]]:
    """A failure as the log shows it, and its fields. The recipient appears as a hash and its
    domain (servers repeat the address in their replies too): enough to follow one
    recipient's trouble, not to say who it is."""
    reply = without_address(exc.reply, claimed.email)
    recipient = log_form(claimed.email)
    fields: dict[str, object] = {
        "outbox_id": claimed.id,
        "item_id": claimed.item_id,
        "recipient": recipient,
        "smtp_code": exc.code,
        "smtp_reply": reply,
    }
    return f"{recipient}: {exc.code or '-'} {reply}", fields


def _resolve(future: asyncio.Future[None], _: object = None) -> None:
    if not future.done():
        future.set_result(None)


class Sender:
    """Delivers the outbox until :meth:`stop`; :meth:`close` ends the connections.

    Promises: a live sender never sends a row twice and never has a row taken from under it
    (it holds no more rows than its connections send within half a lease at the pace it sees,
    renews the leases of every row it holds, and sends a row only while its lease has at least
    half its length to run); no connection has more than UNRECORDED_PER_CONNECTION messages
    out whose outcome is not committed, so a crash repeats at most that many per connection.
    """

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
        self._message_ids: MessageIds | None = None  # keyed with the database's secret, once
        self._return_path: ReturnPath | None = None  # the envelope sender (VERP), same key
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
        self._recorded: asyncio.Future[None] | None = None  # done when _outcomes are committed
        self._flush_wanted = asyncio.Event()
        self._build_errors: set[str] = set()  # errors whose traceback was logged
        self._unsent: list[tuple[int, str]] = []  # (outbox id, lease owner) to hand back
        # Every row claimed and not yet recorded or handed back: outbox id -> lease owner, and
        # each claim's lease as last written (claimed or renewed).
        self._held: dict[int, str] = {}
        self._leases: dict[str, datetime] = {}
        self._room = asyncio.Event()  # set when held rows were recorded or handed back
        self._pace: float | None = None  # seconds one connection takes per message (average)
        # Lease owner tokens: this process (host, pid, a random part) and a claim number.
        self._owner = f"{socket.gethostname()[:24]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._claims = itertools.count(1)
        self._resuming = True  # the last claim found nothing (or none was made yet)
        self._workers: list[asyncio.Task[None]] = []
        self._helpers: list[asyncio.Task[None]] = []  # the recorder and the lease keeper
        self._flushing = asyncio.Lock()
        self._smtp = SmtpHealth(self.delivery.connections)
        self._outage_changed = asyncio.Event()
        self._status_reported: tuple[bool, int | None] | None = None  # (reachable, SIZE)
        self._reachable_since: datetime | None = None
        self._claiming = Trouble("Datenbank (Nachrichten abholen)")
        self._recording = Trouble("Datenbank (Ergebnisse schreiben)")
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
        self._metrics = metrics.current()

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Claim nothing more; messages being sent finish, the others are handed back."""
        self._stopping = True
        self._stop_event.set()
        self.wake.set()

    async def close(self) -> None:
        """Wait for the connections' current messages, record everything, close connections.
        The connections are closed even if this is cancelled half-way (a service that stops
        waits for it a limited time)."""
        self.stop()
        try:
            while not self._jobs.empty():  # waiting messages go back to the outbox
                job = self._jobs.get_nowait()
                if job is not None:
                    self._hand_back(job)
                self._jobs.task_done()
            for _ in self._workers:
                await self._jobs.put(None)
            if self._workers:
                # A message on the wire finishes and its outcome is written. Should that take
                # longer (a stalled server, a database refusing the write), the connection is
                # given up: the row comes back when its lease runs out.
                _, late = await asyncio.wait(self._workers, timeout=CLOSE_GRACE_SECONDS)
                for task in late:
                    task.cancel()
                await asyncio.gather(*self._workers, return_exceptions=True)
            self._workers = []
            with contextlib.suppress(Exception):  # logged before; kept for nothing more
                await self._flush()
            for task in self._helpers:
                task.cancel()
            await asyncio.gather(*self._helpers, return_exceptions=True)
            self._helpers = []
            with contextlib.suppress(Exception):  # the database may be the trouble
                await self._report_status(final=True)
        finally:
            for task in [*self._workers, *self._helpers]:
                task.cancel()
            if self._limiter is not None:
                await self._limiter.close()
            for transport in self._transports:
                await transport.close()

    def _start_workers(self) -> None:
        if not self._workers:
            self._workers = [
                asyncio.create_task(self._worker(i, t), name=f"smtp-{i}")
                for i, t in enumerate(self._transports)
            ]
        if not self._helpers:
            self._helpers = [
                asyncio.create_task(self._recorder(), name="outbox-recorder"),
                asyncio.create_task(self._keeper(), name="outbox-keeper"),
            ]

    async def run(self) -> None:
        """Send until stopped; sleeps when nothing is due, wakes early on :attr:`wake`."""
        self._start_workers()
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping:
                outage = self._smtp.outage
                if outage is not None and loop.time() < outage.probe_at:
                    # The SMTP server is unreachable: claim nothing until the next probe.
                    await self._pause(outage.probe_at - loop.time(), self._outage_changed)
                    continue
                if self._limiter is not None and not self._limiter.has_capacity():
                    # Claim nothing that would wait behind an exhausted limit (and outlive its
                    # lease): wait until the limit lets messages through again.
                    await self._pause(self.delivery.idle_poll_seconds)
                    continue
                room = self._room_to_claim()
                if room <= 0:
                    # Holding as many rows as the connections send within half a lease at
                    # the pace they go: the next claim waits until some are done.
                    self._room.clear()
                    await self._pause(self.delivery.idle_poll_seconds, self._room)
                    continue
                try:
                    handled = await self._produce(room)
                except Exception as exc:
                    # A broken database must not end delivery for good, nor flood the log.
                    await self._pause(self._claiming.failed(exc))
                    continue
                self._claiming.recovered()
                if handled == 0 and not self._stopping:
                    await self._pause(self.delivery.idle_poll_seconds, self.wake)
                    self.wake.clear()
        finally:
            await self.close()

    async def _pause(self, seconds: float, event: asyncio.Event | None = None) -> None:
        """Sleep ``seconds``, less if stopped or ``event`` is set."""
        waits = [asyncio.ensure_future(self._stop_event.wait())]
        if event is not None:
            waits.append(asyncio.ensure_future(event.wait()))
        try:
            await asyncio.wait(waits, timeout=max(seconds, 0), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def run_once(self) -> int:
        """Claim one batch, deliver it completely and record it; returns how many rows."""
        self._start_workers()
        handled = await self._produce(self._claim_size)
        await self._jobs.join()
        await self._flush()
        return handled

    def _room_to_claim(self) -> int:
        """How many rows the next claim may take: no more than the connections send within half
        a lease at the pace measured so far, counting the rows held already."""
        if self._pace is None:
            return self._claim_size
        lease = self.delivery.lease_seconds
        limit = int(len(self._transports) * lease / 2 / max(self._pace, 1e-6))
        return min(self._claim_size, max(limit, 1) - len(self._held))

    # -- producing ---------------------------------------------------------------------------

    async def _produce(self, limit: int) -> int:
        """Claim up to ``limit`` rows and queue their messages for the connections (waits while
        they are busy, so at most about two batches are in flight)."""
        now = self.clock()
        lease = timedelta(seconds=self.delivery.lease_seconds)
        owner = f"{self._owner}:{next(self._claims)}"
        # New work after an empty claim (or at the start) begins with a small batch, queued
        # with a turn for the connections after each message: the first messages leave sooner.
        # So does a probe while the SMTP server is unreachable.
        resuming = self._resuming or self._smtp.outage is not None
        if self._message_ids is None:
            async with self.db.transaction() as session:
                key = await queries.message_id_key(session)
            self._message_ids = MessageIds(self.settings.mail.domain, key)
            self._return_path = ReturnPath(
                self.settings.bounces.return_path, self.settings.mail.sender_address, key
            )
        size = min(limit, 4 * len(self._transports)) if resuming else limit
        rows = await self.db.write(
            lambda connection: queries.claim_batch(connection, now, size, lease, owner)
        )
        self._resuming = not rows
        if not rows:
            return 0
        self._leases[owner] = now + lease
        self._held.update((row.id, owner) for row in rows)
        for index, transport in enumerate(self._transports):
            if self._smtp.working(index):  # sessions are set up while the batch is prepared
                transport.warm_up()
        # The rows are ours (leased): what they need is read without holding the write lock.
        try:
            async with self.db.reading() as session:
                batch = await queries.describe_claimed(session, rows)
                topics = await queries.subscriber_topics(
                    session, [c.subscriber_id for c in batch if not c.all_topics]
                )
                item_ids = {c.item_id for c in batch if c.item_id is not None}
                items = {
                    i.id: i
                    for i in await session.scalars(select(Item).where(Item.id.in_(item_ids)))
                }
                digest_ids = [c.digest_id for c in batch if c.digest_id is not None]
                briefings = await queries.digest_items(session, digest_ids, now)
                first_briefings = await queries.first_digests(session, digest_ids)
        except BaseException:
            self._unsent.extend((row.id, owner) for row in rows)  # back to the outbox
            self._flush_wanted.set()
            raise
        # Recipients erased since the claim: the erasure cancelled their rows; not ours any more.
        for outbox_id in {row.id for row in rows} - {c.id for c in batch}:
            self._held.pop(outbox_id, None)
        for index, claimed in enumerate(batch):
            if resuming or index % YIELD_EVERY == YIELD_EVERY - 1:
                # Let the connections and the other tasks (whose transactions may hold the
                # database's write lock while they wait for the loop) run in between.
                await asyncio.sleep(0)
            try:
                prepared, recipient = self._message_parts(
                    claimed,
                    topics.get(claimed.subscriber_id, []),
                    items,
                    briefings,
                    first_briefings,
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
        first_briefings: set[int],
    ) -> tuple[Prepared | None, Recipient]:
        """What the claimed row's message is made of; no prepared content: it is cancelled."""
        prepared: Prepared | None = None
        if claimed.item_id is None and claimed.digest_id is None:
            # A service message (confirmation of a sign-up, the personal links): no
            # unsubscribe links, the subscription may not exist yet.
            recipient = Recipient(
                email=claimed.email,
                # The confirmation goes to an address that nobody has confirmed yet: it repeats
                # no text typed into the form (neither in the greeting nor in To), so the form
                # cannot carry someone's message into a county-branded mail.
                name="" if claimed.notice == "confirm" else claimed.name,
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
                    first=claimed.digest_id in first_briefings,
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
            self._cannot_build(job.claimed, exc, personal=True)
            return None

    def _cannot_build(
        self, claimed: queries.Claimed, exc: Exception, *, personal: bool = False
    ) -> None:
        """Record why a message could not be made: a template error waits for a fix, anything
        else fails the message. ``personal``: it failed on the recipient's own data (its
        address, say), which makes every message to it fail: that counts towards suppressing
        the address, like a refusal by the server."""
        error: DeliveryError
        reason = "template" if isinstance(exc, TemplateError) else "unbuildable"
        if isinstance(exc, TemplateError):
            # The office can fix a template (Jinja reads a changed file again): the message
            # waits and is retried like a temporary SMTP failure, up to max_age_hours.
            error = TemporaryDeliveryError(claimed.email, None, f"Vorlage fehlerhaft: {exc}")
        else:  # e.g. a line break in a header, an address that cannot be encoded
            error = PermanentDeliveryError(
                claimed.email, None, f"Nachricht nicht erstellbar: {exc}", bounced=personal
            )
        # The traceback once per error, not once for each of thousands of recipients.
        if str(exc) not in self._build_errors:
            if len(self._build_errors) > 64:
                self._build_errors.clear()
            self._build_errors.add(str(exc))
            logger.error(
                "outbox %s: message cannot be built",
                claimed.id,
                exc_info=exc,
                extra={"outbox_id": claimed.id, "item_id": claimed.item_id},
            )
        self._failure(claimed, error, reason=reason)

    # -- sending -----------------------------------------------------------------------------

    async def _worker(self, index: int, transport: SmtpTransport) -> None:
        loop = asyncio.get_running_loop()
        # Commits of this connection's latest outcomes: the next message waits for them.
        unrecorded: collections.deque[asyncio.Future[None]] = collections.deque()
        while True:
            pause = self._smtp.pause(index, loop.time())
            if pause and not self._stopping:
                # This connection could not reach the server; the others carry on.
                await self._pause(pause, self._outage_changed)
                continue
            job = await self._jobs.get()
            try:
                if job is None:
                    return
                if not self._holds(job.claimed):
                    continue  # its lease went to another claim (logged by the keeper)
                if not await self._may_send():
                    self._hand_back(job)
                    continue
                if job.claimed.item_id in self._cancelled:
                    unrecorded.append(
                        self._record(
                            queries.Outcome(
                                job.claimed.id,
                                OutboxState.cancelled,
                                self.clock(),
                                owner=job.claimed.owner,
                            )
                        )
                    )
                    continue
                recorded = await self._send(index, transport, job, unrecorded)
                if recorded is not None:
                    unrecorded.append(recorded)
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

    def _holds(self, claimed: queries.Claimed) -> bool:
        return self._held.get(claimed.id) == claimed.owner

    def _lease_left(self, claimed: queries.Claimed) -> bool:
        """Whether the row's lease has at least half its length to run: even if no renewal
        got through from now on, the send ends before another process could claim the row."""
        until = self._leases.get(claimed.owner)
        if until is None:
            return False
        left = (until - self.clock()).total_seconds()
        return left >= self.delivery.lease_seconds / 2

    def _hand_back(self, job: Job) -> None:
        """Return an unsent message to the outbox (queued again, the attempt not counted)."""
        self._unsent.append((job.claimed.id, job.claimed.owner))
        self._flush_wanted.set()

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

    async def _send(
        self,
        index: int,
        transport: SmtpTransport,
        job: Job,
        unrecorded: collections.deque[asyncio.Future[None]],
    ) -> asyncio.Future[None] | None:
        """Send one message; returns the future of its outcome's commit (None: handed back)."""
        claimed = job.claimed
        assert self._message_ids is not None  # read before the first claim
        assert self._return_path is not None
        message_id = self._message_ids(claimed.id, claimed.subscriber_id)
        data = self._build(job, message_id)
        if data is None:
            return None
        # What this connection sent before is committed (all but the last few) before the next
        # message goes out, so a crash repeats at most that few per connection.
        while len(unrecorded) >= UNRECORDED_PER_CONNECTION:
            await unrecorded.popleft()
        if self._stopping or not self._holds(claimed) or not self._lease_left(claimed):
            if self._holds(claimed):
                self._hand_back(job)
            return None
        loop = asyncio.get_running_loop()
        outage = self._smtp.outage
        if outage is not None and loop.time() < outage.probe_at:
            # The server is unreachable and this is no probe (the last one failed meanwhile).
            reason = SmtpUnavailable(claimed.email, None, outage.reason)
            return self._failure(claimed, reason, quiet=True)
        started = loop.time()
        try:
            reply = await transport.send(data, self._return_path.address(claimed.id), claimed.email)
        except SmtpUnavailable as exc:
            return self._unreachable(index, claimed, exc)
        except DeliveryError as exc:
            self._sent_one(index, loop.time() - started)
            return self._failure(claimed, exc)
        self._sent_one(index, loop.time() - started)
        now = self.clock()
        self._metrics.sent.inc()
        self._metrics.latency.observe(max((now - claimed.created_at).total_seconds(), 0.0))
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "outbox %s sent: %s",
                claimed.id,
                reply,
                extra={"outbox_id": claimed.id, "item_id": claimed.item_id, "smtp_reply": reply},
            )
        return self._record(
            queries.Outcome(
                claimed.id,
                OutboxState.sent,
                now,
                code=250,
                reply=reply,
                message_id=message_id,
                owner=claimed.owner,
            )
        )

    def _sent_one(self, index: int, seconds: float) -> None:
        """A message went through a session: the pace, and the connection works."""
        self._pace = seconds if self._pace is None else 0.8 * self._pace + 0.2 * seconds
        if self._reachable_since is None:
            self._reachable_since = self.clock()
        ended = self._smtp.connection_ok(index)
        if ended is not None:
            self._reachable_since = self.clock()
            logger.warning(
                "SMTP wieder erreichbar (nicht erreichbar seit %s) – der Versand läuft weiter",
                self._local(ended.since),
            )
            self._outage_changed.set()
            self._outage_changed.clear()
            self.wake.set()

    def _unreachable(
        self, index: int, claimed: queries.Claimed, exc: SmtpUnavailable
    ) -> asyncio.Future[None]:
        """The connection could not set up a session: it pauses; with every connection paused,
        the messages waiting here are deferred at once (one statement) and claiming waits."""
        loop = asyncio.get_running_loop()
        self._metrics.smtp_session_errors.labels(_reason_class(exc)).inc()
        recorded = self._failure(claimed, exc, quiet=True)
        started = self._smtp.connection_failed(index, exc.reply, self.clock(), loop.time())
        if started or self._smtp.outage is not None:  # (a probe failed: the same again)
            nones = 0
            while not self._jobs.empty():
                job = self._jobs.get_nowait()
                if job is None:
                    nones += 1  # a stop's end-of-work marker, for a worker
                else:
                    self._failure(job.claimed, exc, quiet=True)
                    self._forget(job)
                self._jobs.task_done()
            for _ in range(nones):
                self._jobs.put_nowait(None)
        if started:
            self._outage_changed.set()
            self._outage_changed.clear()
        return recorded

    def _failure(
        self,
        claimed: queries.Claimed,
        exc: DeliveryError,
        *,
        quiet: bool = False,
        reason: str | None = None,
    ) -> asyncio.Future[None]:
        """Record a failed message: deferred with backoff if temporary and not too old, else
        failed. ``quiet``: no log line of its own (the state of the server is logged once).
        ``reason``: the reason class the metrics count (else taken from the error)."""
        now = self.clock()
        level = logging.DEBUG if quiet else logging.WARNING
        too_old = now - claimed.created_at > timedelta(hours=self.delivery.max_age_hours)
        if isinstance(exc, TemporaryDeliveryError) and not too_old:
            backoff = timedelta(
                seconds=self.delivery.retry_base_seconds * 2 ** max(claimed.attempts - 1, 0)
            )
            backoff = min(backoff, MAX_BACKOFF) * random.uniform(0.8, 1.2)  # noqa: S311
            self._metrics.deferred.labels(reason or _reason_class(exc)).inc()
            if logger.isEnabledFor(level):
                shown, fields = _described(claimed, exc)
                logger.log(
                    level,
                    "outbox %s deferred until %s: %s",
                    claimed.id,
                    (now + backoff).isoformat(timespec="seconds"),
                    shown,
                    extra=fields,
                )
            return self._record(
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
        self._metrics.failed.labels(
            "expired"
            if too_old and isinstance(exc, TemporaryDeliveryError)
            else reason or _reason_class(exc)
        ).inc()
        if logger.isEnabledFor(level):
            shown, fields = _described(claimed, exc)
            logger.log(level, "outbox %s failed: %s", claimed.id, shown, extra=fields)
        hard = isinstance(exc, PermanentDeliveryError) and exc.bounced
        return self._record(
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

    def _local(self, at: datetime) -> str:
        return at.astimezone(self.settings.scheduler.tz).strftime("%d.%m.%Y %H:%M:%S")

    # -- recording ---------------------------------------------------------------------------

    def _record(self, outcome: queries.Outcome) -> asyncio.Future[None]:
        """Queue an outcome for the next write; returns a future done once it is committed."""
        self._outcomes.append(outcome)
        self._flush_wanted.set()
        return self._next_commit()

    def _next_commit(self) -> asyncio.Future[None]:
        if self._recorded is None:
            self._recorded = asyncio.get_running_loop().create_future()
        return self._recorded

    async def _recorder(self) -> None:
        """Write outcomes as they come: one transaction for all that arrived while the last
        one was written (group commit), and growing pauses while the database fails."""
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted.clear()
            try:
                await self._flush()
            except Exception as exc:
                self._flush_wanted.set()
                await asyncio.sleep(self._recording.failed(exc))
            else:
                self._recording.recovered()
                # Leave the database's write lock to the claims (ours and other processes')
                # for a moment: back-to-back writes starved them, and the connections ran dry.
                await asyncio.sleep(FLUSH_GAP_SECONDS)

    async def _flush(self) -> None:
        """Write waiting outcomes (and hand back unsent messages) in one transaction."""
        async with self._flushing:
            outcomes, self._outcomes = self._outcomes, []
            unsent, self._unsent = self._unsent, []
            if not outcomes and not unsent:
                return
            done, self._recorded = self._recorded, None
            bouncing = {o.subscriber_id for o in outcomes if o.subscriber_id is not None}
            now = self.clock()
            threshold = self.delivery.suppress_after_hard_failures

            def record(connection: Connection) -> list[int]:
                lost = queries.record_outcomes(connection, outcomes)
                if bouncing:
                    queries.suppress_bouncing(connection, bouncing, threshold, now)
                queries.release(connection, unsent, now)
                return lost

            try:
                lost = await self.db.write(record, inline=True)
            except BaseException:
                self._outcomes[:0] = outcomes  # kept for the next try
                self._unsent[:0] = unsent
                if done is not None:  # done when the next write gets them through
                    self._next_commit().add_done_callback(functools.partial(_resolve, done))
                raise
            if done is not None:
                _resolve(done)
            if lost:
                logger.error(
                    "Vorfall: %d Ergebnisse verworfen, die Zeilen gehören inzwischen einem "
                    "anderen Versand (Reservierung abgelaufen): outbox %s",
                    len(lost),
                    ", ".join(map(str, lost[:20])),
                )
            for outbox_id, owner in [(o.outbox_id, o.owner) for o in outcomes] + unsent:
                if self._held.get(outbox_id) == owner:
                    del self._held[outbox_id]
            if not self._held:
                self._leases.clear()
            self._room.set()

    # -- keeping leases, cancellations and the status --------------------------------------

    async def _keeper(self) -> None:
        """Renew the leases of the rows held (every quarter lease), see cancellations of the
        items being sent, and keep the sender's SMTP status in the database up to date."""
        loop = asyncio.get_running_loop()
        renew_every = self.delivery.lease_seconds / 4
        tick = min(CANCEL_CHECK_SECONDS, renew_every)
        next_renewal = next_status = loop.time()
        trouble = Trouble("Datenbank (Reservierungen verlängern)")
        while True:
            await asyncio.sleep(tick)
            try:
                if self._queued_items:
                    async with self.db.reading() as session:
                        self._cancelled = await queries.cancelled_items(
                            session, list(self._queued_items)
                        )
                if loop.time() >= next_renewal:
                    await self._renew_leases()
                    next_renewal = loop.time() + renew_every
                if loop.time() >= next_status or self._status_changed():
                    await self._report_status()
                    next_status = loop.time() + STATUS_SECONDS
            except Exception as exc:
                await asyncio.sleep(trouble.failed(exc))
            else:
                trouble.recovered()

    async def _renew_leases(self) -> None:
        """Extend the lease of every row held; rows another claim took over (this process
        could not renew them in time) are given up here, and that is an incident."""
        async with self._flushing:  # no outcome is being written meanwhile
            if not self._held:
                return
            claims = list(self._held.items())
            until = self.clock() + timedelta(seconds=self.delivery.lease_seconds)
            held = await self.db.write(
                lambda connection: queries.renew_leases(connection, claims, until)
            )
            lost = [outbox_id for outbox_id, _ in claims if outbox_id not in held]
            for outbox_id in lost:
                del self._held[outbox_id]
            self._leases = dict.fromkeys(set(self._held.values()), until)
        if lost:
            logger.error(
                "Vorfall: %d reservierte Nachrichten hat inzwischen ein anderer Versand "
                "übernommen (Reservierung abgelaufen); hier werden sie nicht gesendet: outbox %s",
                len(lost),
                ", ".join(map(str, lost[:20])),
            )
            self._room.set()

    def _smtp_state(self) -> tuple[bool, int | None] | None:
        """(reachable, the server's SIZE) as far as known; None before anything is known."""
        if self._smtp.outage is None and self._reachable_since is None:
            return None
        sizes = [t.max_size for t in self._transports if t.max_size is not None]
        return (self._smtp.outage is None, min(sizes) if sizes else None)

    def _status_changed(self) -> bool:
        return self._smtp_state() != self._status_reported

    async def _report_status(self, *, final: bool = False) -> None:
        """Write the sender's SMTP state (when it changed, and every STATUS_SECONDS). ``final``
        (at the stop): written as no longer fresh, so status displays leave the stopped sender
        out at once, while the server's SIZE stays known for a day (announce checks it)."""
        state = self._smtp_state()
        if state is None:
            return
        reachable, max_size = state
        outage = self._smtp.outage
        now = self.clock()
        waiting: int | None = None
        if outage is not None and self._status_reported != state:
            async with self.db.reading() as session:
                waiting = await queries.open_count(session)
            logger.warning(
                "SMTP nicht erreichbar seit %s (%s) – %s Nachrichten warten; neue Versuche mit "
                "wachsenden Pausen",
                self._local(outage.since),
                outage.reason,
                f"{waiting:,}".replace(",", "."),
            )
        since = outage.since if outage is not None else self._reachable_since or now

        def write(connection: Connection) -> None:
            queries.drop_sender_status(connection, older_than=now - STATUS_KEPT)
            queries.set_sender_status(
                connection,
                self._owner,
                reachable=reachable,
                since=since,
                now=now - queries.SENDER_STATUS_FRESH if final else now,
                reason=outage.reason if outage is not None else None,
                waiting=waiting,
                max_size=max_size,
            )

        await self.db.write(write)
        self._status_reported = state
