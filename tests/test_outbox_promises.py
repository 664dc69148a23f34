"""The outbox's promises under a slow, a refusing, an unreachable server and a failing database
(issue 11): real `notifier run` processes and in-process senders against the real recording
SMTP server on loopback, on SQLite files and PostgreSQL. Nothing is mocked."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from notifier.db import Database, queries
from notifier.db.models import OutboxMessage, OutboxState, SenderStatus, Subscriber
from notifier.delivery import Sender, SmtpTransport
from notifier.delivery.sender import UNRECORDED_PER_CONNECTION
from notifier.rendering import Renderer
from notifier.routing import release_due

from .conftest import Project, Running, Web
from .smtpd import RecordingSMTP
from .test_web_office import _login, _start


def people(count: int, domain: str = "langsam.example") -> str:
    rows = "".join(f"p{i}@{domain},Person {i},staff,Bitburg,,immediate\n" for i in range(count))
    return "email,name,role,organisation,topics,rhythm\n" + rows


def note(subject: str) -> str:
    return f'+++\nsubject = "{subject}"\nsend_at = "now"\n+++\nText.\n'


def utcnow() -> datetime:
    return datetime.now(UTC)


def sender_of(project: Project, db: Database, **transport: Any) -> Sender:
    """An in-process sender with the project's settings, on the real clock."""
    settings = project.settings
    return Sender(
        db,
        settings,
        Renderer(settings),
        lambda: SmtpTransport(settings.smtp, **transport),
        utcnow,
    )


async def states(db: Database) -> Counter[OutboxState]:
    async with db.reading() as session:
        return Counter(await session.scalars(select(OutboxMessage.state)))


async def wait_until_final(db: Database, count: int, timeout: float) -> Counter[OutboxState]:
    deadline = time.monotonic() + timeout
    while True:
        counts = await states(db)
        final = sum(counts[s] for s in (OutboxState.sent, OutboxState.failed))
        if final == count:
            return counts
        assert time.monotonic() < deadline, counts
        await asyncio.sleep(0.2)


# -- 1. a slow server: no live process sends a row twice ---------------------------------------


@pytest.mark.parametrize(
    ("database", "processes"),
    [("sqlite", 1), ("sqlite", 2), ("postgresql", 1), ("postgresql", 2)],
)
async def test_a_slow_server_gets_every_message_once(
    project: Project,
    spawn: Callable[..., Running],
    request: pytest.FixtureRequest,
    database: str,
    processes: int,
) -> None:
    """Each message takes the server 0.25 s and the lease is 2 s: a batch of 100 on two
    connections takes 12.5 s, six leases. Before, the rows still waiting in the process when
    their lease ran out were claimed again and sent again (and again)."""
    count = 60
    delivery = {"connections": 2, "batch_size": 100, "lease_seconds": 2}
    config: dict[str, object] = {"delivery": delivery}
    if database == "postgresql":
        config["database"] = {"url": request.getfixturevalue("postgres_url")}
    else:
        delivery["processes"] = processes
    project.write_config(config)
    project.smtp.delay = 0.25
    await asyncio.to_thread(project.seed, project.write("people.csv", people(count)))
    running = [await asyncio.to_thread(spawn, "run")]
    if database == "postgresql" and processes == 2:
        running.append(await asyncio.to_thread(spawn, "run", "--only", "sender"))
    await asyncio.to_thread(project.cli, "announce", project.write("a.md", note("Langsam")))
    async with Database(project.settings.database_url) as db:
        final = await wait_until_final(db, count, timeout=90)
    for process in running:
        assert process.stop() == 0
    assert final == {OutboxState.sent: count}
    received = Counter(project.smtp.recipients())
    assert len(received) == count
    assert [a for a, n in received.items() if n > 1] == []
    for process in running:
        assert "Vorfall" not in process.output, process.output


async def test_leases_are_renewed_while_rows_wait_and_a_lost_row_is_not_sent(
    project: Project, caplog: pytest.LogCaptureFixture
) -> None:
    """An in-process sender with one connection and a server that takes 2 s per message holds
    its first four rows for 8 s with a 3 s lease, renewing them. A row taken from under it
    (here by hand, as another process's claim would after a lease ran out) is not sent by it,
    and that is logged as an incident."""
    project.write_config({"delivery": {"connections": 1, "batch_size": 20, "lease_seconds": 3}})
    project.smtp.delay = 2.0
    project.seed(project.write("people.csv", people(5)))
    project.cli("announce", project.write("a.md", note("Verlängert")))
    settings = project.settings
    async with Database(settings.database_url) as db:
        await release_due(db, utcnow())
        sender = sender_of(project, db)
        task = asyncio.create_task(sender.run())
        deadline = time.monotonic() + 10
        while (await states(db))[OutboxState.sending] < 4:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        # Another process's claim takes the last row held (waiting behind three messages).
        async with db.transaction() as session:
            taken_id = await session.scalar(
                select(func.max(OutboxMessage.id)).where(OutboxMessage.state == OutboxState.sending)
            )
            await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == taken_id)
                .values(lease_owner="elsewhere:1:x:1", lease_until=utcnow() + timedelta(hours=1))
            )
            taken = await session.scalar(
                select(Subscriber.email)
                .join(OutboxMessage, OutboxMessage.subscriber_id == Subscriber.id)
                .where(OutboxMessage.id == taken_id)
            )
        await asyncio.sleep(4.5)  # past the first lease: the rows waiting are still ours
        read_at = utcnow()
        async with db.reading() as session:
            leases = (
                await session.execute(
                    select(OutboxMessage.lease_owner, OutboxMessage.lease_until).where(
                        OutboxMessage.state == OutboxState.sending,
                        OutboxMessage.id != taken_id,
                    )
                )
            ).all()
        await asyncio.to_thread(project.smtp.wait_for, 4, 30)
        await wait_until_final(db, 4, timeout=10)
        sender.stop()
        await task
    assert leases and all(not o.startswith("elsewhere") and u > read_at for o, u in leases)
    received = Counter(project.smtp.recipients())
    assert taken not in received
    assert len(received) == 4 and set(received.values()) == {1}
    assert any("Vorfall" in r.getMessage() for r in caplog.records)


# -- 2. a crash repeats at most a few messages per connection ------------------------------------


def sending_now(project: Project) -> int:
    with sqlite3.connect(project.root / "var" / "test.db") as db:
        return int(db.execute("SELECT count(*) FROM outbox WHERE state = 'sending'").fetchone()[0])


def test_sigkill_repeats_at_most_four_messages_per_connection(
    project: Project, service: Callable[[], Running]
) -> None:
    """Three SIGKILLs during a send on 8 connections: each repeats at most 4 messages per
    connection, UNRECORDED_PER_CONNECTION (before: up to 75 per kill, all that was sent within
    the last 50 ms, whatever the connections)."""
    total, connections = 6000, 8
    project.seed(project.write("many.csv", people(total, "kill.example")))
    # A short lease: the rows a killed process held come back soon (a live one renews them).
    delivery = {"connections": connections, "batch_size": 200, "lease_seconds": 2}
    project.write_config({"delivery": delivery})
    project.cli("announce", project.write("a.md", note("Abbruch")))
    kills = 0
    for wanted in (700, 2200, 3900):
        running = service()
        project.smtp.wait_for(wanted, timeout=60)
        running.proc.kill()
        running.proc.wait()
        running.close()
        kills += 1
    last = service()
    project.smtp.wait_for(total, timeout=120)
    deadline = time.monotonic() + 30
    while sending_now(project):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert last.stop() == 0
    received = Counter(project.smtp.recipients())
    assert len(received) == total
    duplicates = sum(n - 1 for n in received.values())
    print(f"duplicates after {kills} kills on {connections} connections: {duplicates}")
    assert duplicates <= kills * connections * UNRECORDED_PER_CONNECTION, duplicates


# -- 3. a message too large for the server fails for good ----------------------------------------


async def run_once(project: Project, **transport: Any) -> None:
    async with Database(project.settings.database_url) as db:
        await release_due(db, utcnow())
        sender = sender_of(project, db, **transport)
        await sender.run_once()
        await sender.close()


async def outbox_rows(project: Project) -> list[tuple[str, OutboxState, int | None, str, bool]]:
    async with Database(project.settings.database_url) as db, db.reading() as session:
        rows = await session.execute(
            select(
                Subscriber.email,
                OutboxMessage.state,
                OutboxMessage.last_code,
                OutboxMessage.last_reply,
                OutboxMessage.bounced,
            )
            .join(Subscriber, Subscriber.id == OutboxMessage.subscriber_id)
            .order_by(Subscriber.email)
        )
        return [(e, s, c, r or "", b) for e, s, c, r, b in rows.all()]


async def test_a_552_at_mail_from_is_final_and_not_held_against_the_address(
    project: Project,
) -> None:
    project.smtp.refuse_sender = "552 5.3.4 Message size exceeds fixed limit"
    project.seed(project.write("people.csv", people(3)))
    project.cli("announce", project.write("a.md", note("Groß")))
    await run_once(project)
    rows = await outbox_rows(project)
    assert [(s, c, b) for _, s, c, _, b in rows] == [(OutboxState.failed, 552, False)] * 3
    assert all(r.startswith("zu groß für den Mailserver") for _, _, _, r, _ in rows), rows


async def test_a_message_over_the_servers_size_fails_with_its_limit(project: Project) -> None:
    """The server announces SIZE 1500 (these messages have about 3.5 KB): refused before sending,
    as the server would refuse it, and the office reads the limit."""
    small = RecordingSMTP(data_size_limit=1500).start()
    try:
        project.seed(project.write("people.csv", people(2)))
        project.cli("announce", project.write("a.md", note("Zu groß")))
        await run_once(project, port=small.port)
    finally:
        small.stop()
    rows = await outbox_rows(project)
    assert [(s, c) for _, s, c, _, _ in rows] == [(OutboxState.failed, 552)] * 2
    assert rows[0][3].startswith("zu groß für den Mailserver (max. 1 kB)"), rows
    assert small.messages() == []
    # The sender recorded the server's SIZE: the next announcement is refused at once.
    refused = project.cli("announce", project.write("b.md", note("Auch zu groß")), ok=False)
    assert refused.exit_code == 1
    assert "zu groß (höchstens 1 kB)" in refused.output, refused.output


# -- 4. an address that can never be sent fails at once and is suppressed -------------------------


async def test_an_address_with_umlauts_before_the_at_fails_at_once_and_is_suppressed(
    project: Project,
) -> None:
    """An address stored before import refused them (here written into the table directly):
    its message fails for good at the first try, and counts towards suppression."""
    project.write_config({"delivery": {"suppress_after_hard_failures": 1}})
    project.seed(project.write("people.csv", people(2, "kreis.example")))
    async with Database(project.settings.database_url) as db, db.transaction() as session:
        await session.execute(
            text("UPDATE subscribers SET email = 'jürgen@kreis.example' WHERE email = :e"),
            {"e": "p0@kreis.example"},
        )
    project.cli("announce", project.write("a.md", note("Umlaut")))
    await run_once(project)
    rows = await outbox_rows(project)
    assert rows[0][0] == "jürgen@kreis.example"
    assert rows[0][1:3] == (OutboxState.failed, None) and rows[0][4] is True
    assert rows[1][1] is OutboxState.sent
    async with Database(project.settings.database_url) as db, db.reading() as session:
        status = await session.scalar(
            select(Subscriber.status).where(Subscriber.email == "jürgen@kreis.example")
        )
    assert status == "suppressed"
    assert project.smtp.recipients() == ["p1@kreis.example"]


# -- 5. an unreachable server and a failing database: pauses, one line per change ----------------


class ClosingListener:
    """A loopback port that accepts connections and closes them at once (a server that is
    down behind its load balancer): every SMTP session fails at its greeting. Counts them."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)  # (a blocked accept() would keep the port after close())
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self.times: list[float] = []
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            self.times.append(time.monotonic())
            conn.close()

    def close(self) -> None:
        self._closing.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[ClosingListener]:
    down = ClosingListener()
    yield down
    down.close()


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("notifier") and r.levelno >= logging.WARNING
    ]


async def test_an_unreachable_server_pauses_sending_and_says_so_once(
    project: Project, listener: ClosingListener, caplog: pytest.LogCaptureFixture
) -> None:
    """2,000 messages, 4 connections, a server that closes every connection: a handful of
    connection attempts, one log line, the state in `notifier status` and on the dashboard;
    when the server is back on the same port, everything goes out once. (Before: a connection
    attempt and a WARNING per message.)"""
    count = 2000
    project.write_config({"smtp": {"port": listener.port}, "delivery": {"batch_size": 200}})
    project.seed(project.write("people.csv", people(count, "weg.example")))
    project.cli("announce", project.write("a.md", note("Unerreichbar")))
    settings = project.settings
    caplog.set_level(logging.INFO, logger="notifier")
    async with Database(settings.database_url) as db:
        await release_due(db, utcnow())
        sender = sender_of(project, db)
        task = asyncio.create_task(sender.run())
        await asyncio.sleep(4)
        attempts = listener.accepted
        down = warnings_of(caplog)
        async with db.reading() as session:
            record = (await session.scalars(select(SenderStatus))).one()
        status = await asyncio.to_thread(project.cli, "status")
        counts = await states(db)
        # The server comes back on the same port.
        listener.close()
        server = RecordingSMTP(port=listener.port).start()
        try:
            await wait_until_final(db, count, timeout=90)
            sender.stop()
            await task
        finally:
            server.stop()
    # 4 connections warm up and fail, their first messages try once more, then a probe after
    # 2 s (and perhaps 4 s later) on each connection: a few attempts, not one per message.
    assert attempts <= 16, str([round(t - listener.times[0], 3) for t in listener.times])
    assert len(down) == 1, down
    assert down[0].startswith("SMTP nicht erreichbar seit "), down
    assert "2.000 Nachrichten warten" in down[0], down
    assert record.reachable is False and record.waiting == count
    assert "SMTP nicht erreichbar seit" in status.output, status.output
    assert "2.000 Nachrichten warteten da" in status.output, status.output
    assert counts[OutboxState.failed] == 0 and counts[OutboxState.sent] == 0, counts
    assert sum(counts.values()) == count
    assert any(m.startswith("SMTP wieder erreichbar") for m in warnings_of(caplog))
    received = Counter(server.recipients())
    assert len(received) == count and set(received.values()) == {1}


async def test_a_failing_database_is_logged_once_and_sending_goes_on_after_it(
    project: Project, caplog: pytest.LogCaptureFixture
) -> None:
    """The outbox table disappears for 3 s in the middle of a send (renamed by another
    connection: every claim, renewal and outcome write fails): one error line per operation,
    not one every 50 ms, and once it is back every message arrives exactly once."""
    count = 300
    project.write_config({"delivery": {"connections": 2, "batch_size": 50}})
    project.smtp.delay = 0.02
    project.seed(project.write("people.csv", people(count, "platte.example")))
    project.cli("announce", project.write("a.md", note("Datenbank")))
    settings = project.settings
    async with Database(settings.database_url) as db:
        await release_due(db, utcnow())
        sender = sender_of(project, db)
        task = asyncio.create_task(sender.run())
        await asyncio.to_thread(project.smtp.wait_for, 30, 20)
        path = project.root / "var" / "test.db"
        with sqlite3.connect(path, timeout=10) as other:
            other.execute("ALTER TABLE outbox RENAME TO outbox_away")
        await asyncio.sleep(3)
        errors = [
            r
            for r in caplog.records
            if r.name.startswith("notifier") and r.levelno >= logging.ERROR
        ]
        with sqlite3.connect(path, timeout=10) as other:
            other.execute("ALTER TABLE outbox_away RENAME TO outbox")
        final = await wait_until_final(db, count, timeout=60)
        sender.stop()
        await task
    assert 1 <= len(errors) <= 3, [r.getMessage() for r in errors]
    assert all("gestört" in r.getMessage() for r in errors), [r.getMessage() for r in errors]
    assert any("wieder in Ordnung" in m for m in warnings_of(caplog))
    assert final == {OutboxState.sent: count}
    received = Counter(project.smtp.recipients())
    assert len(received) == count
    # At most the messages on the wire when the table went away come twice: their outcomes
    # could not be written, and their rows came back when the lease ran out (not here: 300 s).
    assert set(received.values()) == {1}


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_an_outcome_for_a_row_another_claim_took_changes_nothing_and_is_reported(
    project: Project, request: pytest.FixtureRequest, database: str
) -> None:
    """record_outcomes writes the outcomes of the rows a claim still holds and returns the
    others (SQLite: found by the changed-row count; PostgreSQL: checked and locked first)."""
    if database == "postgresql":
        project.write_config({"database": {"url": request.getfixturevalue("postgres_url")}})
    project.seed(project.write("people.csv", people(4)))
    project.cli("announce", project.write("a.md", note("Verloren")))
    async with Database(project.settings.database_url) as db:
        now = utcnow()
        await release_due(db, now)
        rows = await db.write(
            lambda c: queries.claim_batch(c, now, 10, timedelta(seconds=60), "mine:1:a:1")
        )
        taken = rows[1].id
        await db.write(
            lambda c: c.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == taken)
                .values(lease_owner="other:2:b:1")
            )
        )
        outcomes = [
            queries.Outcome(r.id, OutboxState.sent, now, code=250, reply="ok", owner=r.owner)
            for r in rows
        ]
        lost = await db.write(lambda c: queries.record_outcomes(c, outcomes))
        async with db.reading() as session:
            result = dict(
                (await session.execute(select(OutboxMessage.id, OutboxMessage.state))).all()
            )
    assert lost == [taken]
    assert result == {r.id: OutboxState.sent for r in rows} | {taken: OutboxState.sending}


def test_the_dashboard_shows_an_unreachable_server(
    project: Project, web: Callable[..., Web]
) -> None:
    """A sender's record of an unreachable server (as the keeper writes it) shows on the
    office's dashboard as an alert, with the reason and how many messages were waiting."""
    site = _start(web, project)
    now = utcnow()
    with sqlite3.connect(project.root / "var" / "test.db") as db:
        db.execute(
            "INSERT INTO sender_status (owner, reachable, since, reason, waiting, max_size,"
            " updated_at) VALUES ('host:4711:abc', 0, ?, 'Verbindung abgelehnt', 20000, NULL, ?)",
            (now.isoformat(sep=" "), now.isoformat(sep=" ")),
        )
    assert _login(site).status_code == 303
    page = site.client.get("/buero").text
    alert = re.search(r'<div class="error-summary" role="alert">(.*?)</div>', page, re.S)
    assert alert, page
    assert "SMTP nicht erreichbar seit" in alert.group(1)
    assert "(Verbindung abgelehnt) – 20.000 Nachrichten warteten da" in alert.group(1)
