"""The sender against a real SMTP server: retries, permanent failures, cancellation, shutdown."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from notifier.announcements import cancel
from notifier.config import PACKAGED_TEMPLATES
from notifier.db import Database
from notifier.db.models import OutboxMessage, OutboxState
from notifier.delivery import Sender, SmtpTransport
from notifier.rendering import Recipient, Renderer
from notifier.routing import release_due

from .conftest import Project

PEOPLE = "email,name,role,organisation,topics,rhythm\n" + "".join(
    f"p{i}@vg-arzfeld.example,Person {i},staff,Verbandsgemeinde Arzfeld,,immediate\n"
    for i in range(6)
)
NOTE = """+++
subject = "Hinweis"
send_at = "now"
+++
Text.
"""


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def seeded(project: Project) -> Project:
    project.seed(project.write("people.csv", PEOPLE))
    project.cli("announce", project.write("a.md", NOTE))
    return project


async def states(db: Database) -> dict[str, tuple[OutboxState, int | None, str | None]]:
    from notifier.db.models import Subscriber

    async with db.transaction() as session:
        rows = await session.execute(
            select(
                Subscriber.email,
                OutboxMessage.state,
                OutboxMessage.last_code,
                OutboxMessage.last_reply,
            ).join(Subscriber, Subscriber.id == OutboxMessage.subscriber_id)
        )
        return {email: (state, code, reply) for email, state, code, reply in rows.all()}


async def sender_for(
    project: Project, db: Database, clock: Clock, port: int | None = None
) -> Sender:
    settings = project.settings
    return Sender(
        db, settings, Renderer(settings), lambda: SmtpTransport(settings.smtp, port=port), clock
    )


async def test_temporary_failure_is_retried_with_backoff(seeded: Project) -> None:
    seeded.smtp.refuse["p1@vg-arzfeld.example"] = "451 4.7.1 Bitte spaeter"
    clock = Clock()
    async with Database(seeded.settings.database_url) as db:
        assert await release_due(db, clock()) == [(1, 6)]
        sender = await sender_for(seeded, db, clock)
        assert await sender.run_once() == 6
        first = await states(db)
        assert first["p1@vg-arzfeld.example"] == (OutboxState.deferred, 451, "4.7.1 Bitte spaeter")
        assert sum(s is OutboxState.sent for s, _, _ in first.values()) == 5
        async with db.transaction() as session:
            row = (
                await session.scalars(
                    select(OutboxMessage).where(OutboxMessage.state == OutboxState.deferred)
                )
            ).one()
        # retry_base_seconds = 1 in the test config, ±20 % jitter
        assert (
            clock.now + timedelta(seconds=0.7)
            < row.next_attempt_at
            < clock.now + timedelta(seconds=1.3)
        )
        assert await sender.run_once() == 0, "not due yet"
        del seeded.smtp.refuse["p1@vg-arzfeld.example"]
        clock.now += timedelta(seconds=2)
        assert await sender.run_once() == 1
        assert (await states(db))["p1@vg-arzfeld.example"][0] is OutboxState.sent
        await sender.close()
    assert len(seeded.smtp.messages()) == 6


async def send_all(project: Project) -> dict[str, str]:
    """Release and send what is due in ``project``; the Message-ID each recipient got."""
    clock = Clock()
    before = len(project.smtp.messages())
    async with Database(project.settings.database_url) as db:
        await release_due(db, clock())
        sender = await sender_for(project, db, clock)
        handled = await sender.run_once()
        await sender.close()
    sent = project.smtp.messages()[before:]
    assert handled == len(sent) == 6
    return {m.rcpt_tos[0]: str(m.message["Message-ID"]) for m in sent}


async def test_message_ids_differ_between_databases_and_repeat_for_a_row(
    seeded: Project, tmp_path: Path
) -> None:
    # A second installation with the same people and announcement: the same outbox ids.
    (tmp_path / "zwei").mkdir()
    other = Project(tmp_path / "zwei", seeded.smtp)
    other.seed(other.write("people.csv", PEOPLE))
    other.cli("announce", other.write("a.md", NOTE))
    database = seeded.root / "var" / "test.db"
    shutil.copyfile(database, tmp_path / "before.db")

    first = await send_all(seeded)
    second = await send_all(other)
    assert sorted(i.split(".")[0] for i in first.values()) == [f"<{n}" for n in range(1, 7)]
    assert sorted(i.split(".")[0] for i in second.values()) == [f"<{n}" for n in range(1, 7)]
    assert not set(first.values()) & set(second.values())
    # The same rows sent again from a restored copy (as after a crash before their outcome was
    # written): each keeps its Message-ID.
    shutil.copyfile(tmp_path / "before.db", database)
    assert await send_all(seeded) == first


async def test_permanent_failure_fails_only_that_recipient(seeded: Project) -> None:
    seeded.smtp.refuse["p2@vg-arzfeld.example"] = "550 5.1.1 Empfaenger unbekannt"
    clock = Clock()
    async with Database(seeded.settings.database_url) as db:
        await release_due(db, clock())
        sender = await sender_for(seeded, db, clock)
        await sender.run_once()
        result = await states(db)
        await sender.close()
    assert result["p2@vg-arzfeld.example"][:2] == (OutboxState.failed, 550)
    assert "unbekannt" in (result["p2@vg-arzfeld.example"][2] or "")
    assert sorted(seeded.smtp.recipients()) == [f"p{i}@vg-arzfeld.example" for i in (0, 1, 3, 4, 5)]


async def test_template_error_defers_until_the_template_is_fixed(
    seeded: Project, caplog: pytest.LogCaptureFixture
) -> None:
    # A template edited into an error after the announcement was scheduled: its messages wait
    # with the error as their reply, nothing stays claimed, and once the office has fixed the
    # file the retries go out. The office's folder holds that one file: the packaged templates
    # serve the rest (base.html, which it extends, among them).
    templates = seeded.root / "templates"
    edited = templates / "email" / "announcement.html"
    edited.parent.mkdir(parents=True)
    good = (PACKAGED_TEMPLATES / "email" / "announcement.html").read_text("utf-8")
    broken = good.replace("{{ body_html }}", "{{ body_html }}{{ nicht_definiert }}")
    assert broken != good
    edited.write_text(broken, "utf-8")
    seeded.write_config({"paths": {"templates": str(templates)}})
    clock = Clock()
    async with Database(seeded.settings.database_url) as db:
        await release_due(db, clock())
        sender = await sender_for(seeded, db, clock)
        assert await sender.run_once() == 6
        result = await states(db)
        assert {state for state, _, _ in result.values()} == {OutboxState.deferred}
        for _, code, reply in result.values():
            assert code is None
            assert reply == "Vorlage fehlerhaft: 'nicht_definiert' is undefined"
        assert seeded.smtp.messages() == []
        tracebacks = [r for r in caplog.records if r.exc_info is not None]
        assert len(tracebacks) == 1, "the error's traceback is logged once, not per recipient"
        assert "cannot be built" in tracebacks[0].getMessage()

        edited.write_text(good, "utf-8")
        clock.now += timedelta(seconds=2)  # past the first retry (retry_base_seconds = 1)
        assert await sender.run_once() == 6
        await sender.close()
        result = await states(db)
    assert {state for state, _, _ in result.values()} == {OutboxState.sent}
    assert sorted(seeded.smtp.recipients()) == [f"p{i}@vg-arzfeld.example" for i in range(6)]
    assert {m.message["Subject"] for m in seeded.smtp.messages()} == {"Hinweis"}


async def test_recipient_data_that_cannot_make_a_message_fails_only_that_one(
    seeded: Project,
) -> None:
    # A name with a line break in the database (written around the importer, which refuses
    # it): that message fails for good, nothing is injected, the others go out.
    with sqlite3.connect(seeded.root / "var" / "test.db") as connection:
        connection.execute(
            "UPDATE subscribers SET name = ? WHERE email = ?",
            ("Eve\r\nBcc: victim@example.org", "p3@vg-arzfeld.example"),
        )
    clock = Clock()
    async with Database(seeded.settings.database_url) as db:
        await release_due(db, clock())
        sender = await sender_for(seeded, db, clock)
        assert await sender.run_once() == 6
        await sender.close()
        result = await states(db)
    state, code, reply = result["p3@vg-arzfeld.example"]
    assert (state, code) == (OutboxState.failed, None)
    assert reply is not None and reply.startswith("Nachricht nicht erstellbar:")
    assert "CR or LF" in reply
    assert sorted(seeded.smtp.recipients()) == [f"p{i}@vg-arzfeld.example" for i in (0, 1, 2, 4, 5)]
    assert all(b"victim" not in m.data for m in seeded.smtp.messages())


async def test_a_message_this_version_cannot_make_fails_and_the_batch_goes_on(
    seeded: Project,
) -> None:
    # A service message of a kind this version does not know (queued by a newer version during
    # an upgrade), first in the batch: it fails with the reason instead of breaking the batch
    # and staying claimed until its lease runs out, again and again.
    from notifier.db.models import Subscriber

    clock = Clock()
    async with Database(seeded.settings.database_url) as db:
        async with db.transaction() as session:
            subscriber_id = await session.scalar(
                select(Subscriber.id).where(Subscriber.email == "p0@vg-arzfeld.example")
            )
            assert subscriber_id is not None
            session.add(
                OutboxMessage(
                    notice="kuenftig",
                    subscriber_id=subscriber_id,
                    created_at=clock(),
                    updated_at=clock(),
                    next_attempt_at=clock(),
                )
            )
        await release_due(db, clock())
        sender = await sender_for(seeded, db, clock)
        assert await sender.run_once() == 7
        await sender.close()
        async with db.transaction() as session:
            rows = (await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))).all()
    unknown, *routed = rows
    assert (unknown.notice, unknown.state, unknown.lease_owner) == (
        "kuenftig",
        OutboxState.failed,
        None,
    )
    assert unknown.last_reply == "Nachricht nicht erstellbar: unknown service message 'kuenftig'"
    assert [r.state for r in routed] == [OutboxState.sent] * 6
    assert sorted(seeded.smtp.recipients()) == [f"p{i}@vg-arzfeld.example" for i in range(6)]


async def test_unreachable_server_defers_and_gives_up_after_max_age(seeded: Project) -> None:
    clock = Clock()
    closed_port = 1  # nothing listens on 127.0.0.1:1
    async with Database(seeded.settings.database_url) as db:
        await release_due(db, clock())
        sender = await sender_for(seeded, db, clock, port=closed_port)
        await sender.run_once()
        assert {s for s, _, _ in (await states(db)).values()} == {OutboxState.deferred}
        assert all("Verbindung" in (r or "") for _, _, r in (await states(db)).values())
        clock.now += timedelta(hours=seeded.settings.delivery.max_age_hours, minutes=1)
        await sender.run_once()
        assert {s for s, _, _ in (await states(db)).values()} == {OutboxState.failed}
    assert seeded.smtp.messages() == []


async def test_cancel_stops_a_running_send(seeded: Project) -> None:
    seeded.smtp.delay = 0.3
    seeded.write_config({"delivery": {"batch_size": 2, "connections": 1}})
    clock = Clock()
    async with Database(seeded.settings.database_url) as db:
        await release_due(db, clock())
        sender = await sender_for(seeded, db, clock)
        task = asyncio.create_task(sender.run())
        while len(seeded.smtp.messages()) < 1:
            await asyncio.sleep(0.05)
        async with db.transaction() as session:
            stopped = await cancel(session, 1, actor="test", now=clock())
        await asyncio.sleep(1.5)
        sender.stop()
        await task
        await sender.close()
        final = await states(db)
    delivered = len(seeded.smtp.messages())
    # The message on the wire finishes, and at most one more starts before the sender sees
    # the cancellation (it checks every CANCEL_CHECK_SECONDS); everything else is cancelled,
    # whether still in the outbox or already claimed.
    assert delivered <= 3
    assert stopped <= 6 - delivered
    assert sum(s is OutboxState.cancelled for s, _, _ in final.values()) == 6 - delivered


async def test_stop_returns_claimed_messages_to_the_queue(seeded: Project) -> None:
    seeded.smtp.delay = 0.3
    clock = Clock()
    async with Database(seeded.settings.database_url) as db:
        await release_due(db, clock())
        sender = await sender_for(seeded, db, clock)
        task = asyncio.create_task(sender.run())
        while len(seeded.smtp.messages()) < 1:
            await asyncio.sleep(0.05)
        sender.stop()
        await asyncio.wait_for(task, 5)
        await sender.close()
        final = await states(db)
    sent = sum(s is OutboxState.sent for s, _, _ in final.values())
    queued = sum(s is OutboxState.queued for s, _, _ in final.values())
    assert sent >= 1 and sent + queued == 6, final


def test_header_injection_is_refused(project: Project) -> None:
    renderer = Renderer(project.settings)
    from notifier.db.models import Item, ItemKind

    item = Item(
        id=1,
        kind=ItemKind.announcement,
        subject="Hallo",
        body="Text",
        topics=[],
        scope=[],
        roles=[],
        send_at=datetime.now(UTC),
    )
    prepared = renderer.prepare(item)
    evil = Recipient("x@example.org", "Eve\r\nBcc: victim@example.org", "Bitburg", [])
    with pytest.raises(ValueError, match=r"linefeed|carriage|CR or LF"):
        renderer.build(prepared, evil, message_id="<1@x>", date=datetime.now(UTC))
    item.subject = "Hallo\nBcc: victim@example.org"
    with pytest.raises(ValueError, match=r"linefeed|carriage|CR or LF"):
        renderer.build(
            renderer.prepare(item),
            Recipient("x@example.org", "X", "Bitburg", []),
            message_id="<1@x>",
            date=datetime.now(UTC),
        )


def test_announcement_subject_with_newline_is_refused(project: Project) -> None:
    project.seed(None)
    file = project.write(
        "a.md", '+++\nsubject = "Hallo\\nBcc: x@example.org"\nsend_at = "now"\n+++\nText\n'
    )
    result = project.cli("announce", file, ok=False)
    assert result.exit_code == 1
    assert "Zeile 2, Spalte 'subject'" in result.output
