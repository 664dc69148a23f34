"""Several `notifier` processes working as one: real `notifier run` processes on a real
PostgreSQL database against a real (and hostile) SMTP server on loopback; and on SQLite, the one
service per file with its helper processes."""

from __future__ import annotations

import asyncio
import bisect
import re
import socket
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select, text

from notifier.db import Database
from notifier.db.models import Item, ItemStatus, OutboxMessage, OutboxState, Subscriber

from .conftest import Project, Running

BERLIN = ZoneInfo("Europe/Berlin")
FINAL = {OutboxState.sent, OutboxState.failed, OutboxState.cancelled}


def people(count: int) -> str:
    rows = "".join(
        f"p{i}@cluster.example,Person {i},staff,Bitburg,,immediate\n" for i in range(count)
    )
    return "email,name,role,organisation,topics,rhythm\n" + rows


def address(i: int) -> str:
    return f"p{i}@cluster.example"


def note(subject: str, send_at: str = "now") -> str:
    return f'+++\nsubject = "{subject}"\nsend_at = "{send_at}"\n+++\nText.\n'


def owner_prefix(running: Running) -> str:
    """The lease owner tokens of a process's claims start with this (see delivery/sender.py)."""
    return f"{socket.gethostname()[:24]}:{running.proc.pid}:"


async def rows_by_email(db: Database) -> dict[tuple[str, int | None], OutboxMessage]:
    async with db.transaction() as session:
        result = await session.execute(
            select(Subscriber.email, OutboxMessage).join(
                Subscriber, Subscriber.id == OutboxMessage.subscriber_id
            )
        )
        return {(email, row.item_id): row for email, row in result.all()}


async def leased_to(db: Database, prefix: str) -> set[str]:
    """Addresses of the messages a process holds claimed and has not recorded."""
    async with db.transaction() as session:
        result = await session.execute(
            select(Subscriber.email)
            .join(OutboxMessage, OutboxMessage.subscriber_id == Subscriber.id)
            .where(
                OutboxMessage.state == OutboxState.sending,
                OutboxMessage.lease_owner.startswith(prefix),
            )
        )
        return set(result.scalars())


# -- three senders on PostgreSQL, one killed mid-send, against a hostile server --------------------

COUNT = 900
BOUNCING = {address(i) for i in (3, 150, 333, 640, 871)}
CLOSING = {address(i) for i in (7, 260, 520, 800)}  # 421 for their first 2 attempts
GREYLISTED = {address(i) for i in (11, 377, 599, 899)}  # 451 for their first 3 attempts
STALLING = {address(i) for i in (20, 450, 780)}  # their first DATA stalls beyond the timeout


async def test_three_senders_share_the_outbox_and_survive_a_sigkill(
    project: Project, postgres_url: str, spawn: Callable[..., Running]
) -> None:
    config = {
        "database": {"url": postgres_url},
        "smtp": {"timeout": 1},
        "delivery": {
            "connections": 4,
            "batch_size": 40,
            "lease_seconds": 2,
            "retry_base_seconds": 0.05,
            "idle_poll_seconds": 0.1,
        },
    }
    project.write_config(config)
    await asyncio.to_thread(project.seed, project.write("people.csv", people(COUNT)))
    smtp = project.smtp
    smtp.turn_hostile(
        bouncing=BOUNCING,
        closing=CLOSING,
        greylisted=GREYLISTED,
        stalling=STALLING,
        drop_rate=0.03,
        seed=4711,
    )
    smtp.delay = 0.005  # about what a real server takes; keeps messages on the wire

    senders = [await asyncio.to_thread(spawn, "run", "--only", "sender") for _ in range(3)]
    await asyncio.to_thread(spawn, "run", "--only", "scheduler")
    started = time.monotonic()
    await asyncio.to_thread(project.cli, "announce", project.write("a.md", note("Verbund")))

    async with Database(postgres_url) as db:
        owners_seen: set[str] = set()
        victim = senders[1]
        prefix = owner_prefix(victim)

        async def look() -> None:
            async with db.transaction() as session:
                owners_seen.update(
                    await session.scalars(
                        select(OutboxMessage.lease_owner).where(
                            OutboxMessage.lease_owner.is_not(None)
                        )
                    )
                )

        # Kill the victim mid-send: a third has arrived and it holds claimed messages.
        while len(smtp.messages()) < COUNT // 3 or not await leased_to(db, prefix):
            assert time.monotonic() - started < 30, f"{len(smtp.messages())} arrived"
            await look()
            await asyncio.sleep(0.05)
        victim.proc.kill()
        victim.proc.wait()
        in_flight = await leased_to(db, prefix)  # claimed, maybe sent, never recorded
        killed_at = time.monotonic()

        deadline = killed_at + 40
        while True:
            rows = await rows_by_email(db)
            if len(rows) == COUNT and all(r.state in FINAL for r in rows.values()):
                break
            assert time.monotonic() < deadline, Counter(r.state for r in rows.values())
            await look()
            await asyncio.sleep(0.1)
    took = time.monotonic() - started
    assert took < 55, took

    # Every sender process claimed work, and the victim died holding some.
    pids = {owner.split(":")[1] for owner in owners_seen}
    assert pids == {str(s.proc.pid) for s in senders}, (pids, owners_seen)
    assert in_flight
    # The server really was hostile.
    assert smtp.drops["RCPT"] + smtp.drops["DATA"] >= 4, smtp.drops
    assert sum(smtp.stalls.values()) == len(STALLING)

    deliverable = {address(i) for i in range(COUNT)} - BOUNCING
    received = Counter(smtp.recipients())
    assert set(received) == deliverable
    duplicates = {a: n for a, n in received.items() if n > 1}
    # Only what the killed process had claimed and not recorded can arrive twice.
    assert set(duplicates) <= in_flight, (duplicates, in_flight)
    assert all(n == 2 for n in duplicates.values()), duplicates
    for a in deliverable:
        assert rows[a, 1].state is OutboxState.sent, (a, rows[a, 1].state)
    for a in BOUNCING:
        row = rows[a, 1]
        assert (row.state, row.last_code, row.last_reply) == (
            OutboxState.failed,
            550,
            "5.1.1 Postfach unbekannt",
        ), a
        # Tried once; twice only if the killed process had claimed it (it may have died before
        # trying: a claimed message can still wait in its queue).
        tries = smtp.attempts[a]
        assert 1 <= tries <= 1 + (a in in_flight), (a, tries, "a permanent failure is not retried")
    for a in CLOSING:
        assert smtp.attempts[a] >= 3, (a, smtp.attempts[a])
    for a in GREYLISTED:
        assert smtp.attempts[a] >= 4, (a, smtp.attempts[a])
    assert all(r.lease_owner is None for r in rows.values())


# -- the rate limit holds for the whole cluster ----------------------------------------------------

RATE = 10


async def test_rate_limit_holds_for_three_senders_together(
    project: Project, postgres_url: str, spawn: Callable[..., Running]
) -> None:
    project.write_config({"database": {"url": postgres_url}, "delivery": {"rate_per_second": RATE}})
    await asyncio.to_thread(project.seed, project.write("people.csv", people(300)))
    senders = [await asyncio.to_thread(spawn, "run", "--only", "sender") for _ in range(3)]
    await asyncio.to_thread(spawn, "run")  # scheduler and a fourth sender
    await asyncio.to_thread(project.cli, "announce", project.write("a.md", note("Gedrosselt")))
    await asyncio.to_thread(project.smtp.wait_for, 1, 20)
    first = project.smtp.messages()[0].at
    await asyncio.sleep(first + 6.2 - time.time())
    times = sorted(m.at for m in project.smtp.messages())
    for sender in senders:
        assert sender.stop() == 0
    window = 6.0
    in_window = bisect.bisect_left(times, first + window)
    # A full bucket (RATE / 4) at once, then RATE per second: four processes send no more than
    # one.
    assert in_window <= RATE + RATE * window + 1, in_window
    assert in_window >= 0.8 * RATE * window, in_window
    per_second = [bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times)]
    settled = [n for t, n in zip(times, per_second, strict=True) if t >= first + 2]
    assert max(settled) <= RATE * 1.3 + 1, max(settled)
    recipients = project.smtp.recipients()
    assert len(recipients) == len(set(recipients))


# -- scheduler handover ----------------------------------------------------------------------------


def local(at: datetime) -> str:
    return at.astimezone(BERLIN).strftime("%Y-%m-%dT%H:%M:%S")


async def test_scheduler_handover_fires_due_work_exactly_once(
    project: Project, postgres_url: str, spawn: Callable[..., Running]
) -> None:
    project.write_config({"database": {"url": postgres_url}})
    await asyncio.to_thread(project.seed, project.write("people.csv", people(20)))
    first = await asyncio.to_thread(spawn, "run", "--only", "scheduler")
    await asyncio.to_thread(first.wait_for_line, "Leitung übernommen")
    second = await asyncio.to_thread(spawn, "run", "--only", "scheduler")
    await asyncio.to_thread(second.wait_for_line, "in Bereitschaft")
    await asyncio.to_thread(spawn, "run", "--only", "sender")
    assert "Leitung übernommen" not in second.output

    # Announcements due before, around and after the leader's death.
    base = datetime.now(BERLIN).replace(microsecond=0) + timedelta(seconds=2)
    send_times = [base + timedelta(seconds=s) for s in (0, 2, 3, 4, 6)]
    for n, at in enumerate(send_times, 1):
        file = project.write(f"a{n}.md", note(f"Mitteilung {n}", local(at)))
        await asyncio.to_thread(project.cli, "announce", file)
    await asyncio.to_thread(project.smtp.wait_for, 20, 20)  # the first one went out
    killed = time.time()
    first.proc.kill()
    first.proc.wait()
    await asyncio.to_thread(second.wait_for_line, "Leitung übernommen", 15)
    took_over = time.time() - killed
    await asyncio.to_thread(project.smtp.wait_for, 100, 30)
    await asyncio.sleep(1.5)  # nothing more may arrive

    assert took_over < 5, took_over
    by_subject = Counter(m.message["Subject"] for m in project.smtp.messages())
    assert by_subject == {f"Mitteilung {n}": 20 for n in range(1, 6)}, by_subject
    pairs = Counter((m.message["Subject"], r) for m in project.smtp.messages() for r in m.rcpt_tos)
    assert set(pairs.values()) == {1}
    async with Database(postgres_url) as db, db.transaction() as session:
        items = list(await session.scalars(select(Item).order_by(Item.id)))
    assert [(i.status, i.recipient_count) for i in items] == [(ItemStatus.routed, 20)] * 5
    # Nothing went out before its time, and what fell due during the handover went out late
    # by no more than the takeover.
    for n, at in enumerate(send_times, 1):
        arrivals = [
            m.at for m in project.smtp.messages() if m.message["Subject"] == f"Mitteilung {n}"
        ]
        assert min(arrivals) >= at.timestamp() - 0.01, n
        assert min(arrivals) - max(at.timestamp(), killed) < 6, n


LEADER_SQL = (
    "SELECT a.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
    "WHERE l.locktype = 'advisory' AND l.classid = 1852798057 AND l.objid = 3 AND l.granted"
)


async def test_leader_whose_lock_session_ends_steps_down_and_one_leads_again(
    project: Project, postgres_url: str, spawn: Callable[..., Running]
) -> None:
    """The server ends the leader's lock session (a restart, a failover, an administrator): the
    leader notices, stops its jobs, and within seconds exactly one process leads again."""
    project.write_config({"database": {"url": postgres_url}})
    await asyncio.to_thread(project.seed, project.write("people.csv", people(5)))
    first = await asyncio.to_thread(spawn, "run", "--only", "scheduler")
    await asyncio.to_thread(first.wait_for_line, "Leitung übernommen")
    second = await asyncio.to_thread(spawn, "run", "--only", "scheduler")
    await asyncio.to_thread(second.wait_for_line, "in Bereitschaft")
    async with Database(postgres_url) as db:
        async with db.engine.connect() as connection:
            holders = (await connection.execute(text(LEADER_SQL))).all()
            assert [name for _, name in holders] == [
                f"notifier scheduler {socket.gethostname()}:{first.proc.pid}"[:63]
            ]
            await connection.execute(
                text("SELECT pg_terminate_backend(:pid)"), {"pid": holders[0][0]}
            )
            await connection.commit()
        await asyncio.to_thread(first.wait_for_line, "Leitung verloren", 10)
        deadline = time.monotonic() + 6
        while True:
            async with db.engine.connect() as connection:
                holders = (await connection.execute(text(LEADER_SQL))).all()
            if holders:
                break
            assert time.monotonic() < deadline, "nobody leads"
            await asyncio.sleep(0.2)
        assert len(holders) == 1
        # The new leader (either process) does the work that falls due.
        await asyncio.to_thread(spawn, "run", "--only", "sender")
        await asyncio.to_thread(project.cli, "announce", project.write("a.md", note("Danach")))
        await asyncio.to_thread(project.smtp.wait_for, 5, 15)
        await asyncio.sleep(1)
    assert sorted(project.smtp.recipients()) == sorted(address(i) for i in range(5))
    assert first.proc.poll() is None and second.proc.poll() is None


# -- SQLite: one service per file ------------------------------------------------------------------


def test_second_service_on_one_sqlite_file_is_refused_in_german(
    project: Project, spawn: Callable[..., Running]
) -> None:
    project.seed(None)
    running = spawn("run")
    for args in (("run",), ("run", "--only", "sender"), ("run", "--only", "scheduler")):
        second = spawn(*args, ready=None)
        assert second.proc.wait(30) == 1, second.output
        second.close()
        assert "wird schon von einem laufenden notifier-Dienst benutzt" in second.output
        assert f"(Prozess {running.proc.pid})" in second.output
        assert "brauchen PostgreSQL" in second.output
        assert "Traceback" not in second.output
    assert running.proc.poll() is None
    assert running.stop() == 0
    # Once the service has ended, the next one starts.
    assert spawn("run").stop() == 0


def test_helper_processes_share_one_sqlite_file_and_its_rate_limit(
    project: Project, spawn: Callable[..., Running]
) -> None:
    rate = 20
    project.write_config({"delivery": {"processes": 3, "rate_per_second": rate}})
    project.seed(project.write("people.csv", people(140)))
    running = spawn("run")
    running.wait_for_line("started 2 more sender processes")
    project.cli("announce", project.write("a.md", note("Mit Helfern")))
    messages = project.smtp.wait_for(140, 30)
    took = max(m.at for m in messages) - min(m.at for m in messages)
    assert running.stop() == 0
    recipients = project.smtp.recipients()
    assert sorted(recipients) == sorted(address(i) for i in range(140))
    # A full bucket of 5, then 20 per second for all three processes together: about 6.75 s
    # (three limits of their own would be done in about 2).
    assert took >= (140 - rate) / rate - 0.5, took
    times = sorted(m.at for m in messages)
    per_second = [bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times)]
    assert max(per_second) <= 2 * rate + 1
    assert re.search(r"notifier running \(sender, scheduler[,)]", running.output)
