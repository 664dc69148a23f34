"""Bounces, complaints and unsubscribe mails that come back later: parsing, the signed envelope
sender, and both ways in (a real Dovecot mailbox polled over IMAP, the SMTP listener of a real
``notifier run``), each ending in the right state."""

from __future__ import annotations

import asyncio
import smtplib
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from notifier.bounces.parsing import classify
from notifier.bounces.verp import ReturnPath
from notifier.db import Database
from notifier.db.models import (
    AuditEntry,
    Bounce,
    BounceKind,
    OutboxMessage,
    Subscriber,
    SubscriberStatus,
)
from notifier.delivery import Sender, SmtpTransport
from notifier.rendering import Renderer
from notifier.routing import release_due

from . import bouncemail
from .conftest import Project, free_port
from .dovecot import Mailbox, dovecot_server, mailbox  # noqa: F401 (fixtures)

PEOPLE = "email,name,role,organisation,topics,rhythm\n" + "".join(
    f"p{i}@vg-arzfeld.example,Person {i},staff,Verbandsgemeinde Arzfeld,,immediate\n"
    for i in range(6)
)
NOTE = '+++\nsubject = "Hinweis"\nsend_at = "now"\n+++\nText.\n'
DOMAIN = "eifelkreis-verbindet.example"
UNSUBSCRIBE = f"abmelden@{DOMAIN}"


def person(i: int) -> str:
    return f"p{i}@vg-arzfeld.example"


# -- parsing ---------------------------------------------------------------------------------------


def test_each_kind_of_message_is_told_apart() -> None:
    to = f"bounces@{DOMAIN}"
    mid = "<1.abc@eifelkreis-verbindet.example>"
    hard = classify(bouncemail.dsn(to, "a@example.org", "5.1.1", mid))
    assert (hard.kind, hard.address, hard.status) == (BounceKind.hard, "a@example.org", "5.1.1")
    assert hard.original_message_id == mid
    assert "User unknown" in (hard.diagnostic or "")
    full = "smtp; 552 5.2.2 Mailbox full"
    assert classify(bouncemail.dsn(to, "a@x.org", "5.2.2", mid, diagnostic=full)).kind == "soft"
    assert classify(bouncemail.dsn(to, "a@x.org", "4.2.2", mid)).kind == BounceKind.soft
    delayed = bouncemail.dsn(to, "a@x.org", "4.4.1", mid, action="delayed")
    assert classify(delayed).kind == BounceKind.ignored
    complaint = classify(bouncemail.arf(to, "c@example.org", mid))
    assert (complaint.kind, complaint.address) == (BounceKind.complaint, "c@example.org")
    assert complaint.original_message_id == mid
    assert classify(bouncemail.out_of_office(to, "o@example.org")).kind == BounceKind.ignored
    asked = classify(bouncemail.unsubscribe_request(UNSUBSCRIBE, "U@Example.org"), [], UNSUBSCRIBE)
    assert (asked.kind, asked.address) == (BounceKind.unsubscribe, "u@example.org")
    # Without the unsubscribe address configured, the same mail is no report at all.
    assert classify(bouncemail.unsubscribe_request(UNSUBSCRIBE, "u@example.org")).kind == (
        BounceKind.unparseable
    )
    assert classify(bouncemail.no_report(to)).kind == BounceKind.unparseable
    assert classify(bouncemail.broken_charset(to)).kind == BounceKind.unparseable
    assert classify(b"\xff\xfe\x00garbage\r\n\r\n\x00").kind == BounceKind.unparseable
    # A non-standard bounce (qmail's format) is found by flufl.bounce's detectors.
    qmail = (
        b"From: MAILER-DAEMON@mx.example.net\r\nTo: bounces@x.org\r\n"
        b"Subject: failure notice\r\n\r\n"
        b"Hi. This is the qmail-send program at mx.example.net.\r\n"
        b"I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
        b"This is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n"
        b"<gone@example.net>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n\r\n"
        b"--- Below this line is a copy of the message.\r\n"
    )
    found = classify(qmail)
    assert (found.kind, found.address) == (BounceKind.hard, "gone@example.net")


def test_return_path_tokens_are_signed_and_cheap() -> None:
    paths = ReturnPath(f"bounces+{{token}}@{DOMAIN}", f"newsletter@{DOMAIN}", b"k" * 32)
    address = paths.address(4711)
    assert address.startswith("bounces+4711-") and address.endswith(f"@{DOMAIN}")
    assert paths.find(["someone@else.example", address]) == (4711, True)
    assert paths.find([address.upper()]) == (4711, True)  # servers may change the case
    local, _, domain = address.partition("@")
    tampered = local[:-1] + ("a" if local[-1] != "a" else "b") + "@" + domain
    assert paths.find([tampered]) == (None, True)
    other_row = address.replace("+4711-", "+4712-")
    assert paths.find([other_row]) == (None, True)
    assert paths.find(["bounces@" + DOMAIN]) == (None, False)
    # Another installation's key makes other tokens.
    other = ReturnPath(f"bounces+{{token}}@{DOMAIN}", "", b"j" * 32)
    assert other.find([address]) == (None, True)
    assert ReturnPath("", f"newsletter@{DOMAIN}", b"k" * 32).address(1) == f"newsletter@{DOMAIN}"


# -- both ways in ----------------------------------------------------------------------------------


@dataclass
class Sent:
    mail_from: str
    message_id: str


def configure(project: Project, **bounces: object) -> None:
    project.write_config(
        {
            "mail": {"unsubscribe_mailto": UNSUBSCRIBE},
            "delivery": {"suppress_after_hard_failures": 1},
            "bounces": {"return_path": f"bounces+{{token}}@{DOMAIN}", **bounces},
        }
    )


async def send_announcement(project: Project) -> dict[str, Sent]:
    """Route and send one announcement to p0…p5; what each message's envelope and ID was."""
    project.seed(project.write("people.csv", PEOPLE))
    project.cli("announce", project.write("a.md", NOTE))
    settings = project.settings
    async with Database(settings.database_url) as db:
        assert await release_due(db, datetime.now(UTC)) == [(1, 6)]
        sender = Sender(
            db,
            settings,
            Renderer(settings),
            lambda: SmtpTransport(settings.smtp),
            lambda: datetime.now(UTC),
        )
        assert await sender.run_once() == 6
        await sender.close()
    sent = {
        r.rcpt_tos[0]: Sent(r.mail_from, str(r.message["Message-ID"]))
        for r in project.smtp.received
    }
    assert len(sent) == 6
    assert len({s.mail_from for s in sent.values()}) == 6  # one envelope sender per message
    assert all(s.mail_from.startswith("bounces+") for s in sent.values())
    return sent


def forged(address: str) -> str:
    local, _, domain = address.partition("@")
    return local[:-2] + ("zz" if not local.endswith("zz") else "yy") + "@" + domain


def incoming(sent: dict[str, Sent]) -> dict[str, bytes]:
    """What comes back: hostile messages first, then one of each kind."""
    bounce_box = f"bounces@{DOMAIN}"
    return {
        "no-report": bouncemail.no_report(bounce_box),
        "charset": bouncemail.broken_charset(sent[person(0)].mail_from),
        "forged": bouncemail.dsn(
            forged(sent[person(4)].mail_from), person(4), "5.1.1", sent[person(4)].message_id
        ),
        "hard": bouncemail.dsn(
            sent[person(0)].mail_from, person(0), "5.1.1", sent[person(0)].message_id
        ),
        "soft": bouncemail.dsn(
            sent[person(1)].mail_from,
            person(1),
            "4.2.2",
            sent[person(1)].message_id,
            diagnostic="smtp; 452 4.2.2 Mailbox full",
        ),
        "out-of-office": bouncemail.out_of_office(sent[person(2)].mail_from, person(2)),
        # Feedback loops report to an address of their own, quoting our message (its ID).
        "complaint": bouncemail.arf(f"fbl@{DOMAIN}", person(3), sent[person(3)].message_id),
        "mailto": bouncemail.unsubscribe_request(UNSUBSCRIBE, f"Person 5 <{person(5)}>"),
    }


async def check_states(project: Project, source: str) -> None:
    async with Database(project.settings.database_url) as db, db.reading() as session:
        status = dict((await session.execute(select(Subscriber.email, Subscriber.status))).all())
        bounced = dict(
            (
                await session.execute(
                    select(Subscriber.email, OutboxMessage.bounced).join(
                        Subscriber, Subscriber.id == OutboxMessage.subscriber_id
                    )
                )
            ).all()
        )
        rows = list(await session.scalars(select(Bounce).order_by(Bounce.id)))
        audit = [
            (a.action, a.entity_id, a.details)
            for a in await session.scalars(select(AuditEntry).where(AuditEntry.actor == "bounces"))
        ]
        ids = dict((await session.execute(select(Subscriber.email, Subscriber.id))).all())
    assert status[person(0)] is SubscriberStatus.suppressed  # hard bounce: like a 5xx
    assert bounced[person(0)] is True
    assert status[person(1)] is SubscriberStatus.active  # soft: counted, 1 of 5
    assert status[person(2)] is SubscriberStatus.active  # out of office: not a bounce
    assert status[person(3)] is SubscriberStatus.unsubscribed  # complaint
    assert status[person(4)] is SubscriberStatus.active  # forged token: nothing changes
    assert bounced[person(4)] is False
    assert status[person(5)] is SubscriberStatus.unsubscribed  # mail to unsubscribe_mailto
    assert all(r.source == source for r in rows)
    by_address = {(r.kind, r.address): r for r in rows}
    soft = by_address[(BounceKind.soft, person(1))]
    assert soft.status == "4.2.2" and soft.action.startswith("gezählt (1 von 5")
    assert by_address[(BounceKind.hard, person(0))].outbox_id is not None
    assert by_address[(BounceKind.complaint, person(3))].subscriber_id == ids[person(3)]
    # Tied to the person (erasure removes it with them), nothing done.
    assert by_address[(BounceKind.ignored, person(2))].subscriber_id == ids[person(2)]
    unparseable = [r for r in rows if r.kind is BounceKind.unparseable]
    assert len(unparseable) >= 3  # no report, a broken charset, a forged token
    forged_row = next(r for r in unparseable if "gefälscht" in r.action)
    # About p4 (erasing p4 removes it), but tied to no message and acted on not at all.
    assert forged_row.subscriber_id == ids[person(4)] and forged_row.outbox_id is None
    assert ("unsubscribe", str(ids[person(3)]), {"how": "complaint", "ip": "", "cancelled": 0}) in (
        audit
    )
    assert any(a[0] == "unsubscribe" and a[2]["how"] == "mailto" for a in audit)
    assert any(a[0] == "subscriber.suppressed" and a[1] == str(ids[person(0)]) for a in audit)


async def test_imap_mailbox_bounces_end_in_the_right_state(
    project: Project,
    mailbox: Mailbox,  # noqa: F811
) -> None:
    configure(
        project,
        imap={
            "host": mailbox.host,
            "port": mailbox.port,
            "tls": "none",
            "user": mailbox.user,
            "password": mailbox.password,
            "processed_folder": "Verarbeitet",
        },
    )
    sent = await send_announcement(project)
    messages = incoming(sent)
    messages = {"huge": bouncemail.huge(f"bounces@{DOMAIN}", 20), **messages}
    for raw in messages.values():
        await asyncio.to_thread(mailbox.deliver, raw)
    result = await asyncio.to_thread(project.cli, "bounces", "poll")
    assert "9 Nachrichten angesehen, 4 verarbeitet und verschoben, 5 liegen gelassen" in (
        result.output
    )
    await check_states(project, "imap")
    processed = await asyncio.to_thread(mailbox.messages, "Verarbeitet")
    left = await asyncio.to_thread(mailbox.messages, "INBOX")
    assert len(processed) == 4 and len(left) == 5
    # What is left stays unread, marked as looked at; nothing was deleted.
    assert all(b"\\Seen" not in flags and b"NotifierChecked" in flags for flags, _ in left)
    assert any(b"Abwesenheitsnotiz" in raw for _, raw in left)
    # The huge message was recorded from its headers, never read whole.
    async with Database(project.settings.database_url) as db, db.reading() as session:
        huge = (await session.scalars(select(Bounce).where(Bounce.size > 10_000_000))).one()
    assert huge.kind is BounceKind.unparseable and "zu groß" in (huge.diagnostic or "")
    assert huge.raw is not None and len(huge.raw) <= 64 * 1024
    # A second poll passes by what it left; the states stay.
    again = await asyncio.to_thread(project.cli, "bounces", "poll")
    assert "0 Nachrichten angesehen" in again.output
    await check_states(project, "imap")
    listed = await asyncio.to_thread(project.cli, "bounces", "list")
    assert person(0) in listed.output and "harter Fehler" in listed.output
    shown = await asyncio.to_thread(project.cli, "bounces", "show", str(huge.id))
    assert "nicht auswertbar" in shown.output


async def test_wrong_imap_password_is_one_clear_line(
    project: Project,
    mailbox: Mailbox,  # noqa: F811
) -> None:
    configure(
        project,
        imap={
            "host": mailbox.host,
            "port": mailbox.port,
            "tls": "none",
            "user": mailbox.user,
            "password": "falsch",
        },
    )
    result = await asyncio.to_thread(project.cli, "bounces", "poll", ok=False)
    assert result.exit_code == 1
    assert f"Anmeldung als {mailbox.user} abgelehnt" in result.output
    assert "falsch" not in result.output


async def test_listener_of_the_running_service_acts_on_bounces(
    project: Project, spawn: object
) -> None:
    port = free_port()
    configure(project, listen=f"127.0.0.1:{port}")
    sent = await send_announcement(project)
    running = spawn("run")  # type: ignore[operator]
    running.wait_for_line(f"bounce listener on 127.0.0.1:{port}")

    def deliver() -> list[str]:
        replies = []
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            for raw in incoming(sent).values():
                recipient = "bounces@" + DOMAIN
                for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
                    if line.startswith(b"To: "):
                        recipient = line[4:].decode().strip().strip("<>").split("<")[-1]
                client.sendmail("", [recipient.rstrip(">")], raw)
                replies.append(client.noop()[1].decode())
            # Over the size limit: refused before it is read whole.
            with pytest.raises(smtplib.SMTPException):
                client.sendmail("", ["bounces@" + DOMAIN], bouncemail.huge("x@y.org", 11))
        return replies

    await asyncio.to_thread(deliver)
    await check_states(project, "smtp")


# -- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "key", "words"),
    [
        ({"return_path": "bounces@example.org"}, "bounces.return_path", "{token} once"),
        ({"return_path": "bounces+{token}"}, "bounces.return_path", "{token} once"),
        ({"listen": "2526"}, "bounces.listen", "HOST:PORT"),
        ({"imap": {"host": "imap.example.org", "tls": "none"}}, "bounces.imap", 'tls = "none"'),
        ({"imap": {"folder": 'IN"BOX'}}, "bounces.imap.folder", "quotes"),
        ({"suppress_after_soft_bounces": 0}, "bounces.suppress_after_soft_bounces", "1"),
    ],
)
def test_bad_bounce_settings_are_named(
    project: Project, changes: dict[str, object], key: str, words: str
) -> None:
    from notifier.config import load_settings
    from notifier.errors import ConfigError

    project.write_config({"bounces": changes})
    with pytest.raises(ConfigError) as info:
        load_settings(project.config, environ={})
    assert info.value.key == key and words in str(info.value)


def test_imap_password_comes_from_the_environment(project: Project) -> None:
    from notifier.config import load_settings

    project.write_config({"bounces": {"imap": {"host": "imap.example.org"}}})
    settings = load_settings(project.config, environ={"NOTIFIER_BOUNCES__IMAP__PASSWORD": "geheim"})
    assert settings.bounces.imap.password.get_secret_value() == "geheim"
    assert "geheim" not in repr(settings)
    assert settings.bounces.imap.tls == "tls" and settings.bounces.imap.port == 993


# -- the scheduler polls the mailbox -----------------------------------------------------------


async def test_running_service_polls_the_mailbox(
    project: Project,
    mailbox: Mailbox,  # noqa: F811
    spawn: object,
) -> None:
    configure(
        project,
        imap={
            "host": mailbox.host,
            "port": mailbox.port,
            "tls": "none",
            "user": mailbox.user,
            "password": mailbox.password,
            "poll_minutes": 0.01,
        },
    )
    sent = await send_announcement(project)
    running = spawn("run")  # type: ignore[operator]
    raw = bouncemail.dsn(sent[person(0)].mail_from, person(0), "5.1.1", sent[person(0)].message_id)
    await asyncio.to_thread(mailbox.deliver, raw)
    async with Database(project.settings.database_url) as db:
        for _ in range(100):
            async with db.reading() as session:
                status = await session.scalar(
                    select(Subscriber.status).where(Subscriber.email == person(0))
                )
            if status is SubscriberStatus.suppressed:
                break
            await asyncio.sleep(0.1)
    assert status is SubscriberStatus.suppressed, running.output[-3000:]  # type: ignore[attr-defined]
    assert len(await asyncio.to_thread(mailbox.messages, "Verarbeitet")) == 1


# -- counting, matching without VERP, keeping the raw message -------------------------------------


async def _status(project: Project, email: str) -> SubscriberStatus:
    async with Database(project.settings.database_url) as db, db.reading() as session:
        status = await session.scalar(select(Subscriber.status).where(Subscriber.email == email))
    assert status is not None
    return status


async def test_the_same_message_bouncing_twice_counts_once_and_soft_bounces_add_up(
    project: Project,
) -> None:
    project.write_config(
        {
            "delivery": {"suppress_after_hard_failures": 2},
            "bounces": {
                "return_path": f"bounces+{{token}}@{DOMAIN}",
                "suppress_after_soft_bounces": 2,
            },
        }
    )
    sent = await send_announcement(project)
    hard = project.write(
        "hard.eml",
        bouncemail.dsn(
            sent[person(0)].mail_from, person(0), "5.1.1", sent[person(0)].message_id
        ).decode(),
    )
    for _ in range(2):
        out = await asyncio.to_thread(project.cli, "bounces", "feed", hard)
        assert "harter Fehler, gezählt (1 von 2 harten Fehlern)" in out.output
    assert await _status(project, person(0)) is SubscriberStatus.active
    soft = project.write(
        "soft.eml",
        bouncemail.dsn(
            sent[person(1)].mail_from, person(1), "4.2.2", sent[person(1)].message_id
        ).decode(),
    )
    first = await asyncio.to_thread(project.cli, "bounces", "feed", soft)
    assert "gezählt (1 von 2 weichen Fehlern)" in first.output
    second = await asyncio.to_thread(project.cli, "bounces", "feed", soft)
    assert "gesperrt (2 weiche Fehler)" in second.output
    assert await _status(project, person(1)) is SubscriberStatus.suppressed


async def test_without_return_path_reports_are_matched_by_message_id_or_address(
    project: Project,
) -> None:
    project.write_config({"bounces": {"return_path": ""}})
    project.seed(project.write("people.csv", PEOPLE))
    project.cli("announce", project.write("a.md", NOTE))
    settings = project.settings
    async with Database(settings.database_url) as db:
        await release_due(db, datetime.now(UTC))
        sender = Sender(
            db,
            settings,
            Renderer(settings),
            lambda: SmtpTransport(settings.smtp),
            lambda: datetime.now(UTC),
        )
        await sender.run_once()
        await sender.close()
    sent = {r.rcpt_tos[0]: r for r in project.smtp.received}
    assert {r.mail_from for r in sent.values()} == {f"newsletter@{DOMAIN}"}
    box = f"newsletter@{DOMAIN}"
    by_id = bouncemail.arf(box, person(2), str(sent[person(2)].message["Message-ID"]))
    by_address = bouncemail.arf(box, person(3), "<unbekannt@example.net>")
    for name, raw in (("a.eml", by_id), ("b.eml", by_address)):
        await asyncio.to_thread(project.cli, "bounces", "feed", project.write(name, raw.decode()))
    assert await _status(project, person(2)) is SubscriberStatus.unsubscribed
    assert await _status(project, person(3)) is SubscriberStatus.unsubscribed


async def test_raw_messages_are_forgotten_after_keep_raw_days(project: Project) -> None:
    from datetime import timedelta

    from notifier.bounces.intake import BounceIntake

    project.write_config({"bounces": {"keep_raw_days": 2}})
    await asyncio.to_thread(project.cli, "migrate")
    now = datetime.now(UTC)
    async with Database(project.settings.database_url) as db:
        early = BounceIntake(db, project.settings, lambda: now - timedelta(days=3))
        late = BounceIntake(db, project.settings, lambda: now)
        old = await early.handle(bouncemail.no_report("x@example.org"), source="smtp")
        new = await late.handle(bouncemail.no_report("x@example.org"), source="smtp")
        assert await late.clean() == 1
        async with db.reading() as session:
            kept = dict((await session.execute(select(Bounce.id, Bounce.raw))).all())
    assert kept[old.bounce_id] is None and kept[new.bounce_id] is not None
    shown = await asyncio.to_thread(
        project.cli, "bounces", "show", str(old.bounce_id), "--raw", ok=False
    )
    assert shown.exit_code == 1 and "nicht mehr aufbewahrt" in shown.output


async def test_imap_over_tls_checks_the_certificate(
    project: Project,
    mailbox: Mailbox,  # noqa: F811
) -> None:
    imap = {
        "host": "127.0.0.1",
        "port": mailbox.tls_port,
        "tls": "tls",
        "user": mailbox.user,
        "password": mailbox.password,
    }
    # Self-signed, not trusted by the system: refused before the password is sent.
    configure(project, imap=imap)
    refused = await asyncio.to_thread(project.cli, "bounces", "poll", ok=False)
    assert refused.exit_code == 1 and "CERTIFICATE_VERIFY_FAILED" in refused.output
    assert mailbox.password not in refused.output
    configure(project, imap={**imap, "ca_file": str(mailbox.cert)})
    await asyncio.to_thread(mailbox.deliver, bouncemail.out_of_office("x@example.org", person(1)))
    result = await asyncio.to_thread(project.cli, "bounces", "poll")
    assert "1 Nachrichten angesehen, 0 verarbeitet und verschoben, 1 liegen gelassen" in (
        result.output
    )


async def test_intake_works_on_each_backend(project: Project, backend: str) -> None:
    """The intake's queries on SQLite and PostgreSQL: a hard bounce suppresses, a complaint
    unsubscribes, a forged token changes nothing."""
    project.write_config(
        {
            "database": {"url": backend},
            "delivery": {"suppress_after_hard_failures": 1},
            "bounces": {"return_path": f"bounces+{{token}}@{DOMAIN}"},
        }
    )
    sent = await send_announcement(project)
    messages = {
        "hard.eml": bouncemail.dsn(
            sent[person(0)].mail_from, person(0), "5.1.1", sent[person(0)].message_id
        ),
        "complaint.eml": bouncemail.arf(f"fbl@{DOMAIN}", person(3), sent[person(3)].message_id),
        "forged.eml": bouncemail.dsn(
            forged(sent[person(4)].mail_from), person(4), "5.1.1", sent[person(4)].message_id
        ),
    }
    for name, raw in messages.items():
        await asyncio.to_thread(project.cli, "bounces", "feed", project.write(name, raw.decode()))
    assert await _status(project, person(0)) is SubscriberStatus.suppressed
    assert await _status(project, person(3)) is SubscriberStatus.unsubscribed
    assert await _status(project, person(4)) is SubscriberStatus.active
    listed = await asyncio.to_thread(project.cli, "bounces", "list")
    assert listed.output.count("\n") == 3 and "Beschwerde" in listed.output


@pytest.mark.parametrize("limit", [{"max_per_poll": 2}, {"poll_seconds_max": 0.001}])
async def test_a_poll_takes_no_more_than_its_share(
    project: Project,
    mailbox: Mailbox,  # noqa: F811
    limit: dict[str, float],
) -> None:
    configure(
        project,
        imap={
            "host": mailbox.host,
            "port": mailbox.port,
            "tls": "none",
            "user": mailbox.user,
            "password": mailbox.password,
        },
        **limit,
    )
    await asyncio.to_thread(project.cli, "migrate")
    for i in range(3):
        raw = bouncemail.out_of_office(f"bounces@{DOMAIN}", person(i))
        await asyncio.to_thread(mailbox.deliver, raw)
    looked = []
    for _ in range(4):
        out = (await asyncio.to_thread(project.cli, "bounces", "poll")).output
        looked.append(int(out.split(" Nachrichten angesehen")[0]))
        if "Weitere Nachrichten warten" not in out:
            break
    assert sum(looked) == 3 and len(looked) >= 2 and looked[-1] <= 2
