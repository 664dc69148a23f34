"""Rate limits that hold for every sender process together.

``[delivery] rate_per_second`` and ``rate_per_hour`` are token buckets stored in the database
(table ``rate_buckets``), so three sender processes on two machines send no more than one would.
A bucket holds up to a quarter of ``rate_per_second`` tokens, or ``rate_per_hour`` (the burst
after a quiet time), and refills continuously at the rate.

Each process takes a few tokens at a time (about 5 % of the smaller bucket, never more than it
has messages waiting for), so a message costs a database round trip only under a low limit; with
no limit configured nothing of this runs at all.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from .. import metrics
from ..config import DeliverySettings
from ..db import Database, queries

logger = logging.getLogger(__name__)

# Longest sleep before asking the database again while the buckets are empty: tokens another
# process hands back (at its stop) are seen within this time.
MAX_WAIT_SECONDS = 1.0
# Share of the smaller bucket a process takes at once.
CHUNK_SHARE = 0.05


def buckets_for(delivery: DeliverySettings) -> list[queries.Bucket]:
    """The configured limits as buckets (none when no limit is set)."""
    buckets = []
    if delivery.rate_per_second:
        rate = delivery.rate_per_second
        # A burst of a quarter second's allowance: any one second then carries at most about
        # 1.25 x the limit (a bucket of a whole second's would allow twice the limit).
        buckets.append(queries.Bucket("per_second", max(rate / 4, 1.0), rate))
    if delivery.rate_per_hour:
        rate = delivery.rate_per_hour
        buckets.append(queries.Bucket("per_hour", max(rate, 1.0), rate / 3600))
    return buckets


class SharedRateLimiter:
    """Hands out permissions to send one message each, within the limits of the whole cluster.

    ``demand`` says how many messages this process has waiting (so it takes no more tokens than
    it can use). :meth:`close` returns tokens taken but not used.
    """

    def __init__(
        self,
        db: Database,
        delivery: DeliverySettings,
        demand: Callable[[], int] = lambda: 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.buckets = buckets_for(delivery)
        self.demand = demand
        self.clock = clock
        smallest = min((b.size for b in self.buckets), default=1.0)
        self.chunk = max(1, math.floor(smallest * CHUNK_SHARE))
        self._tokens = 0  # taken from the buckets, not used yet
        self._empty_until = 0.0  # loop time before which the buckets are known to be empty
        self._lock = asyncio.Lock()

    @property
    def active(self) -> bool:
        return bool(self.buckets)

    def has_capacity(self) -> bool:
        """True unless the buckets were empty at the last look and cannot have refilled yet."""
        return self._tokens > 0 or asyncio.get_running_loop().time() >= self._empty_until

    async def acquire(self) -> None:
        """Wait until one message may go out (cancel the call to give up waiting)."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            while self._tokens == 0:
                wait = self._empty_until - loop.time()
                if wait > 0:
                    counted = metrics.current()
                    counted.rate_limit_waits.inc()
                    started = loop.time()
                    try:
                        await asyncio.sleep(min(wait, MAX_WAIT_SECONDS))
                    finally:
                        counted.rate_limit_wait_seconds.inc(loop.time() - started)
                    continue
                want = max(1, min(self.chunk, self.demand()))
                # Shielded: a caller that gives up waiting (a stop) must not cancel the
                # transaction half-way, which could leave the connection inside it (and, on
                # SQLite, the database's write lock held).
                await asyncio.shield(self._take(want))
            self._tokens -= 1

    async def _take(self, want: int) -> None:
        async with self.db.transaction() as session:
            granted, wait = await queries.take_tokens(session, self.buckets, want, self.clock())
        self._tokens += granted  # kept even if the caller was cancelled meanwhile
        if not granted:
            self._empty_until = asyncio.get_running_loop().time() + wait

    async def close(self) -> None:
        """Give the unused tokens back to the buckets."""
        tokens, self._tokens = self._tokens, 0
        if tokens and self.buckets:
            try:
                async with self.db.transaction() as session:
                    await queries.give_back_tokens(session, self.buckets, tokens, self.clock())
            except Exception:
                # Lost tokens only make the limit stricter for a moment.
                logger.warning("Ratenbegrenzung: %d ungenutzte Sendeerlaubnisse verfallen", tokens)
