"""The reliability floor of the delivery engine (issue 4), against a real SMTP server on loopback
and a real SQLite file: rate limits, a hostile server, suppression after hard failures, and the
classes of temporary failure. Everything runs in real time; nothing is mocked."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import re
import socket
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from notifier.db import Database
from notifier.db.models import (
    AuditEntry,
    OutboxMessage,
    OutboxState,
    Subscriber,
    SubscriberStatus,
)
from notifier.delivery import Sender, SmtpTransport
from notifier.rendering import Renderer
from notifier.routing import release_due

from .conftest import Project
from .smtpd import RecordingSMTP

ORGANISATIONS = (
    "Verbandsgemeinde Arzfeld",
    "Verbandsgemeinde Prüm",
    "Verbandsgemeinde Speicher",
    "Bitburg",
)
FINAL = {OutboxState.sent, OutboxState.failed, OutboxState.cancelled}


def people(count: int) -> str:
    """A subscriber CSV: ``count`` people on "immediate", spread over a few organisations."""
    rows = "".join(
        f"p{i}@rel.example,Person {i},staff,{ORGANISATIONS[i % len(ORGANISATIONS)]},,immediate\n"
        for i in range(count)
    )
    return "email,name,role,organisation,topics,rhythm\n" + rows


def address(i: int) -> str:
    return f"p{i}@rel.example"


def note(subject: str) -> str:
    return f'+++\nsubject = "{subject}"\nsend_at = "now"\n+++\nText.\n'


def utcnow() -> datetime:
    return datetime.now(UTC)


def make_sender(project: Project, db: Database, *, port: int | None = None) -> Sender:
    settings = project.settings
    return Sender(
        db, settings, Renderer(settings), lambda: SmtpTransport(settings.smtp, port=port), utcnow
    )


def prepare(project: Project, count: int, subject: str, config: dict[str, Any]) -> None:
    """Write the config, load the organisations and ``count`` subscribers, and announce one
    item to everyone, all through the CLI (synchronous: from async tests via a thread)."""
    project.write_config(config)
    project.seed(project.write("people.csv", people(count)))
    project.cli("announce", project.write("a.md", note(subject)))


@dataclass(frozen=True)
class Row:
    item_id: int | None
    state: OutboxState
    attempts: int
    code: int | None
    reply: str | None
    next_attempt_at: datetime


async def outbox(db: Database) -> dict[tuple[str, int | None], Row]:
    """Every outbox row by (recipient address, item id)."""
    async with db.transaction() as session:
        result = await session.execute(
            select(
                Subscriber.email,
                OutboxMessage.item_id,
                OutboxMessage.state,
                OutboxMessage.attempts,
                OutboxMessage.last_code,
                OutboxMessage.last_reply,
                OutboxMessage.next_attempt_at,
            ).join(Subscriber, Subscriber.id == OutboxMessage.subscriber_id)
        )
        return {(email, item): Row(item, *rest) for email, item, *rest in result.all()}


async def arrivals(smtp: RecordingSMTP, count: int, timeout: float) -> None:
    """Wait (without blocking the event loop) until the server holds ``count`` messages."""
    deadline = time.monotonic() + timeout
    while len(smtp.messages()) < count:
        assert time.monotonic() < deadline, f"{len(smtp.messages())} of {count} arrived"
        await asyncio.sleep(0.01)


async def shutdown(sender: Sender, task: asyncio.Task[None], timeout: float) -> float | None:
    """Stop a running sender; returns the seconds the stop took, or None if it did not end
    within ``timeout`` and had to be taken down by force."""
    started = time.monotonic()
    sender.stop()
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if done:
        task.result()
        await sender.close()
        return time.monotonic() - started
    # Stuck (workers waiting for the rate limiter while holding claimed messages): only here,
    # to end the test cleanly, reach into the sender: cancel its connections' tasks and empty
    # its job queue so that the producer and close() can finish.
    for worker in sender._workers:
        worker.cancel()
    while not task.done():
        while not sender._jobs.empty():
            sender._jobs.get_nowait()
        await asyncio.sleep(0.01)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await sender.close()
    return None


class LagProbe:
    """Measures how late the event loop runs a short sleep: the service's responsiveness."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.max_lag = 0.0
        self.ticks = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.interval)
            self.max_lag = max(self.max_lag, loop.time() - before - self.interval)
            self.ticks += 1


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- rate and concurrency ------------------------------------------------------------------------

RATE = 20
WINDOW = 60.0


@pytest.fixture
def crowd(project: Project) -> Project:
    """1,300 subscribers on "immediate" and one announcement to all of them."""
    prepare(
        project, 1300, "Rundschreiben", {"delivery": {"rate_per_second": RATE, "connections": 4}}
    )
    return project


async def test_rate_per_second_is_honoured_within_5_percent_over_a_minute(crowd: Project) -> None:
    async with Database(crowd.settings.database_url) as db:
        assert await release_due(db, utcnow()) == [(1, 1300)]
        sender = make_sender(crowd, db)
        task = asyncio.create_task(sender.run())
        await arrivals(crowd.smtp, 1, timeout=10)
        first = crowd.smtp.messages()[0].at
        await asyncio.sleep(first + WINDOW + 0.5 - time.time())
        assert await shutdown(sender, task, timeout=10) is not None
        rows = await outbox(db)
    times = sorted(m.at for m in crowd.smtp.messages())
    assert times[0] == first
    in_window = bisect.bisect_left(times, first + WINDOW)
    nominal = RATE * WINDOW
    # The token bucket starts full: it lets a burst of RATE / 4 through at once and then RATE
    # per second, so the first minute carries less than RATE + RATE * 60 = 1,220 (+1 for a
    # message taken just before the window closes and stored just after).
    assert in_window <= RATE + nominal + 1, in_window
    assert 0.95 * nominal <= in_window <= 1.05 * nominal, in_window
    # No second carries far more than the rate: at most the burst (RATE / 4) and one second's
    # worth, also after the bucket refilled a little while the sender fetched its next batch.
    per_second = [bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times)]
    assert max(per_second) <= 2 * RATE + 1, max(per_second)
    settled = [n for t, n in zip(times, per_second, strict=True) if first + 2 <= t < first + 59]
    assert max(settled) <= RATE * 1.25 + 1, max(settled)
    # Every message went to a different subscriber, once; the stop handed the rest back.
    recipients = crowd.smtp.recipients()
    assert len(recipients) == len(set(recipients))
    states = Counter(r.state for r in rows.values())
    assert states == {OutboxState.sent: len(times), OutboxState.queued: 1300 - len(times)}, states


async def test_rate_per_hour_lets_its_burst_through_then_holds(project: Project) -> None:
    config = {"delivery": {"rate_per_hour": 30, "rate_per_second": 0}}
    await asyncio.to_thread(prepare, project, 100, "Stuendlich", config)
    async with Database(project.settings.database_url) as db:
        assert await release_due(db, utcnow()) == [(1, 100)]
        sender = make_sender(project, db)
        started = time.monotonic()
        task = asyncio.create_task(sender.run())
        # The hourly bucket starts full with 30 tokens and admits them at once; the 31st needs
        # a token to come back, i.e. 3600 / 30 = 120 s.
        await arrivals(project.smtp, 30, timeout=5)
        assert time.monotonic() - started < 5
        await asyncio.sleep(3)
        assert len(project.smtp.messages()) == 30
        await asyncio.sleep(0.3)  # let the recorder write the outcomes
        rows = await outbox(db)
        await shutdown(sender, task, timeout=1)  # see the next test for a stop that hangs
    assert sum(r.state is OutboxState.sent for r in rows.values()) == 30
    assert len(set(project.smtp.recipients())) == 30


async def test_stop_while_rate_limited_returns_within_seconds(project: Project) -> None:
    """Shutdown must not wait for the rate limiter: with a provider's hourly limit the
    connections would otherwise hold their claimed messages for minutes."""
    config = {"delivery": {"rate_per_hour": 2, "connections": 2}}
    await asyncio.to_thread(prepare, project, 10, "Gebremst", config)
    async with Database(project.settings.database_url) as db:
        await release_due(db, utcnow())
        sender = make_sender(project, db)
        task = asyncio.create_task(sender.run())
        await arrivals(project.smtp, 2, timeout=5)
        await asyncio.sleep(0.5)
        took = await shutdown(sender, task, timeout=3)
        rows = await outbox(db)
    states = Counter(r.state for r in rows.values())
    assert took is not None, f"stop() did not return within 3 s; outbox {dict(states)}"
    # The two sent messages are recorded; the others are handed back, none stays "sending".
    assert states == {OutboxState.sent: 2, OutboxState.queued: 8}, states


# -- a hostile server ----------------------------------------------------------------------------

HOSTILE_COUNT = 200
BOUNCING = {address(i) for i in (3, 50, 97, 144, 191)}
CLOSING = {address(i) for i in (7, 60, 120, 180)}  # 421 for their first 2 attempts
GREYLISTED = {address(i) for i in (11, 77, 133, 199)}  # 451 for their first 3 attempts
STALLING = {address(i) for i in (20, 90, 160)}  # their first DATA stalls beyond the timeout


@pytest.fixture
def hostile(project: Project) -> Project:
    config = {
        "delivery": {"connections": 4, "retry_base_seconds": 0.05, "idle_poll_seconds": 0.1},
        "smtp": {"timeout": 1},
    }
    prepare(project, HOSTILE_COUNT, "Unter Beschuss", config)
    project.smtp.turn_hostile(
        bouncing=BOUNCING,
        closing=CLOSING,
        greylisted=GREYLISTED,
        stalling=STALLING,
        drop_rate=0.05,
        seed=20240604,
    )
    return project


async def test_hostile_server_delivers_every_deliverable_message_once(hostile: Project) -> None:
    smtp = hostile.smtp
    probe = LagProbe()
    ticker = asyncio.create_task(probe.run())
    async with Database(hostile.settings.database_url) as db:
        assert await release_due(db, utcnow()) == [(1, HOSTILE_COUNT)]
        sender = make_sender(hostile, db)
        task = asyncio.create_task(sender.run())
        deadline = time.monotonic() + 40
        while True:
            rows = await outbox(db)
            if all(r.state in FINAL for r in rows.values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        took = await shutdown(sender, task, timeout=5)
    ticker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ticker
    states = Counter(r.state for r in rows.values())
    assert all(r.state in FINAL for r in rows.values()), f"not final after 40 s: {states}"
    assert took is not None and took < 5

    # The server really was hostile.
    assert smtp.drops["RCPT"] >= 2 and smtp.drops["DATA"] >= 2, smtp.drops
    assert sum(smtp.stalls.values()) == len(STALLING)

    deliverable = {address(i) for i in range(HOSTILE_COUNT)} - BOUNCING
    received = Counter(smtp.recipients())
    assert set(received) == deliverable
    duplicates = {a: n for a, n in received.items() if n > 1}
    assert not duplicates, duplicates
    for a in deliverable:
        assert rows[a, 1].state is OutboxState.sent, (a, rows[a, 1])
    for a in BOUNCING:
        row = rows[a, 1]
        assert (row.state, row.code, row.reply) == (
            OutboxState.failed,
            550,
            "5.1.1 Postfach unbekannt",
        ), (a, row)
        assert smtp.attempts[a] == 1, "a permanent failure is not retried"
    for a in CLOSING:
        assert smtp.attempts[a] >= 3 and rows[a, 1].attempts >= 3, (a, smtp.attempts[a])
    for a in GREYLISTED:
        assert smtp.attempts[a] >= 4 and rows[a, 1].attempts >= 4, (a, smtp.attempts[a])
    for a in STALLING:
        assert rows[a, 1].attempts >= 2, (a, rows[a, 1])
    # The service stayed responsive throughout.
    assert probe.ticks > 50
    assert probe.max_lag < 0.5, probe.max_lag


# -- permanent failures and suppression -----------------------------------------------------------


async def test_three_hard_failures_suppress_the_address(project: Project) -> None:
    await asyncio.to_thread(project.seed, project.write("people.csv", people(3)))
    bouncer = address(1)
    project.smtp.refuse[bouncer] = "550 5.1.1 Postfach unbekannt"
    assert project.settings.delivery.suppress_after_hard_failures == 3
    async with Database(project.settings.database_url) as db:
        sender = make_sender(project, db)
        for n in (1, 2, 3):
            await asyncio.to_thread(
                project.cli, "announce", project.write(f"a{n}.md", note(f"Mitteilung {n}"))
            )
            assert await release_due(db, utcnow()) == [(n, 3)]
            assert await sender.run_once() == 3
            row = (await outbox(db))[bouncer, n]
            assert (row.state, row.code, row.reply) == (
                OutboxState.failed,
                550,
                "5.1.1 Postfach unbekannt",
            )
            async with db.transaction() as session:
                status = await session.scalar(
                    select(Subscriber.status).where(Subscriber.email == bouncer)
                )
                audits = list(
                    await session.scalars(
                        select(AuditEntry).where(AuditEntry.action == "subscriber.suppressed")
                    )
                )
            expected = SubscriberStatus.suppressed if n == 3 else SubscriberStatus.active
            assert status is expected, (n, status)
            assert len(audits) == (1 if n == 3 else 0)
        await sender.close()
        async with db.transaction() as session:
            bouncer_id = await session.scalar(
                select(Subscriber.id).where(Subscriber.email == bouncer)
            )
        assert audits[0].entity == "subscriber" and audits[0].entity_id == str(bouncer_id)

        fourth = project.write("a4.md", note("Mitteilung 4"))
        dry = await asyncio.to_thread(project.cli, "announce", "--dry-run", fourth)
        assert "Empfänger: 2\n" in dry.output
        await asyncio.to_thread(project.cli, "announce", fourth)
        assert await release_due(db, utcnow()) == [(4, 2)]
        routed = {email for email, item in await outbox(db) if item == 4}
    assert routed == {address(0), address(2)}
    assert project.smtp.recipients().count(address(0)) == 3
    assert bouncer not in project.smtp.recipients()


async def test_refused_sender_does_not_suppress_the_recipients(project: Project) -> None:
    """A 5xx reply to MAIL FROM says nothing about the recipient's address (the server refuses
    our sender: a configuration or reputation problem); it must not count as the recipient's
    hard failure, or one wrong sender address suppresses every subscriber."""
    # Retries an hour apart: the deferred messages of one round are not due in the next.
    project.write_config({"delivery": {"retry_base_seconds": 3600}})
    await asyncio.to_thread(project.seed, project.write("people.csv", people(3)))
    project.smtp.refuse_sender = "553 5.7.1 Absender nicht erlaubt"
    async with Database(project.settings.database_url) as db:
        sender = make_sender(project, db)
        for n in (1, 2, 3):
            await asyncio.to_thread(
                project.cli, "announce", project.write(f"a{n}.md", note(f"Mitteilung {n}"))
            )
            await release_due(db, utcnow())
            assert await sender.run_once() == 3
        await sender.close()
        rows = await outbox(db)
        async with db.transaction() as session:
            statuses = Counter(await session.scalars(select(Subscriber.status)))
    assert project.smtp.messages() == []
    assert all(r.state is not OutboxState.sent for r in rows.values())
    assert all("Absender nicht erlaubt" in (r.reply or "") for r in rows.values())
    assert statuses == {SubscriberStatus.active: 3}, statuses


# -- temporary failure classes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "code", "reply"),
    [
        ("refused", None, r"^Verbindung zu 127\.0\.0\.1:\d+: .*(refused|failed)"),
        ("reset", None, r"EOF|[Cc]onnection|[Rr]eset|[Ll]ost"),
        ("421", 421, r"^4\.3\.2 Dienst wird beendet$"),
        ("451", 451, r"^4\.7\.1 Greylisting, bitte spaeter$"),
        ("452", 452, r"^4\.2\.2 Postfach voll$"),
        ("timeout", None, r"[Tt]imed out"),
        ("tls", None, r"^Verbindung zu 127\.0\.0\.1:\d+: .*(SSL|TLS)"),
        ("starttls", None, r"^Verbindung zu 127\.0\.0\.1:\d+: .*STARTTLS"),
    ],
)
async def test_temporary_failure_is_deferred_with_next_attempt_and_reply(
    project: Project, case: str, code: int | None, reply: str
) -> None:
    base = 60.0
    changes: dict[str, Any] = {"delivery": {"retry_base_seconds": base}}
    port: int | None = None
    target = address(0)
    smtp = project.smtp
    if case == "refused":
        port = closed_port()
    elif case == "reset":
        smtp.drop_rate = 1.0
    elif case == "421":
        smtp.transient[target] = ("421 4.3.2 Dienst wird beendet", 1)
    elif case == "451":
        smtp.transient[target] = ("451 4.7.1 Greylisting, bitte spaeter", 1)
    elif case == "452":
        smtp.transient[target] = ("452 4.2.2 Postfach voll", 1)
    elif case == "timeout":
        smtp.stall[target] = 1
        smtp.stall_seconds = 3
        changes["smtp"] = {"timeout": 1}
    else:
        # Implicit TLS, or STARTTLS, against a plain server that offers neither.
        changes["smtp"] = {"tls": case}
    await asyncio.to_thread(prepare, project, 1, "Vorsicht", changes)
    async with Database(project.settings.database_url) as db:
        await release_due(db, utcnow())
        sender = make_sender(project, db, port=port)
        before = utcnow()
        assert await sender.run_once() == 1
        after = utcnow()
        await sender.close()
        row = (await outbox(db))[target, 1]
    assert row.state is OutboxState.deferred, row
    assert row.attempts == 1
    assert row.code == code, row
    assert row.reply and re.search(reply, row.reply), row.reply
    # First retry after retry_base_seconds, ±20 % jitter: in the future.
    assert before + timedelta(seconds=0.8 * base) <= row.next_attempt_at
    assert row.next_attempt_at <= after + timedelta(seconds=1.2 * base)
    assert row.next_attempt_at > utcnow()
    assert smtp.messages() == []
