"""One-click unsubscribes written together: a group commit.

In the minutes after a big announcement, thousands press unsubscribe while the same service
sends. Written one transaction per click, SQLite's single write lock was held by unsubscribes
for 40 % of the time (about 5 ms each on a busy process, 60 a second), and the sender
processes' commits queued behind them: sending fell to a third of its rate. Here a click joins
the batch being collected while the previous one is written; each batch is one transaction
with one statement of each kind (:func:`notifier.db.selfservice.unsubscribe_many`). A click is
answered only after its batch has committed, so "Abgemeldet." still means its messages are
cancelled; a click that comes alone is written at once, without waiting for company.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from ..db import Database
from ..db.selfservice import PersonalRow, Unsubscribe, unsubscribe_many

# The most unsubscribes one transaction writes (its statements stay short).
MOST_PER_BATCH = 200

_Waiting = tuple[Unsubscribe, "asyncio.Future[tuple[PersonalRow | None, bool]]"]


class Unsubscribes:
    """The group commit of one process's unsubscribes by personal link."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._waiting: list[_Waiting] = []
        self._writer: asyncio.Task[None] | None = None

    async def unsubscribe(self, request: Unsubscribe) -> tuple[PersonalRow | None, bool]:
        """The subscriber as they were (None: unknown) and whether this request unsubscribed
        them, once the batch holding it has committed; a failed batch raises its error."""
        future: asyncio.Future[tuple[PersonalRow | None, bool]] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiting.append((request, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="unsubscribes")
        # A client that goes away does not stop the batch: its unsubscribe is still written.
        return await asyncio.shield(future)

    async def _write(self) -> None:
        while self._waiting:
            batch = self._waiting[:MOST_PER_BATCH]
            del self._waiting[:MOST_PER_BATCH]
            requests = [request for request, _ in batch]
            try:
                results = await self.db.write(
                    partial(unsubscribe_many, requests=requests), inline=True
                )
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise  # cancelled (the service stops): the waiting clients got the error
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


def unsubscribes_of(extra: dict[str, Any], db: Database) -> Unsubscribes:
    """The process's group commit, kept in the web context's ``extra``."""
    found = extra.get("unsubscribes")
    if not isinstance(found, Unsubscribes):
        found = extra["unsubscribes"] = Unsubscribes(db)
    return found
