"""The retention periods of ``[retention]``: the purge removes exactly what its dry run listed
(time from an injected clock), on SQLite and PostgreSQL; the CLI's German report; a purge
killed (SIGKILL) at any moment leaves every person whole or gone; the daily job runs in the
service; the privacy notice names the configured periods."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from notifier import selfservice
from notifier.catcher import MailStore
from notifier.config import Settings
from notifier.db import Database
from notifier.db.erasure import erased_among
from notifier.db.models import (
    AuditEntry,
    Consent,
    Organisation,
    OutboxMessage,
    OutboxState,
    Rhythm,
    Role,
    Subscriber,
    SubscriberStatus,
)
from notifier.errors import ConfigError
from notifier.legal import load_legal_pages
from notifier.links import LinkTarget
from notifier.retention import plan, purge
from notifier.routing import release_due

from .conftest import Project, Web
from .test_storage_contract import note, people, store

__all__ = ["store"]

DAY = timedelta(days=1)


async def _sign_up(
    db: Database, settings: Settings, email: str, name: str, now: datetime, ip: str = "192.0.2.1"
) -> int:
    async with db.transaction() as session:
        org = await session.scalar(select(Organisation).where(Organisation.key == "07232"))
        assert org is not None
        choices = selfservice.Choices(name, org, Role.staff, Rhythm.immediate, ())
        await selfservice.sign_up(session, email, choices, ip=ip, settings=settings, now=now)
        sub = await session.scalar(select(Subscriber).where(Subscriber.email == email))
        assert sub is not None
        return sub.id


async def _unsubscribe(db: Database, email: str, now: datetime) -> None:
    async with db.transaction() as session:
        sub = await session.scalar(select(Subscriber).where(Subscriber.email == email))
        assert sub is not None
        await selfservice.unsubscribe(session, sub, how="page", ip="192.0.2.9", now=now)


async def test_the_purge_removes_exactly_what_its_dry_run_listed(store: Project) -> None:
    settings = store.settings
    await asyncio.to_thread(store.seed, store.write("people.csv", people(4)))
    t0 = datetime.now(UTC)
    db = Database(settings.database_url)
    try:
        pending = await _sign_up(db, settings, "offen@kreis.example", "Olga Offen", t0)
        proof = await _sign_up(db, settings, "ex@kreis.example", "Emil Ex", t0)
        async with db.transaction() as session:
            await selfservice.confirm(
                session, LinkTarget(proof, 0), ip="192.0.2.1", settings=settings, now=t0
            )
        await _unsubscribe(db, "ex@kreis.example", t0)
        await _unsubscribe(db, "p1@contract.example", t0)  # imported: no consent record
        await asyncio.to_thread(store.cli, "announce", store.write("a.md", note("Rundschreiben")))
        assert await release_due(db, datetime.now(UTC)) == [(1, 3)]
        async with db.transaction() as session:
            await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.item_id == 1)
                .values(state=OutboxState.sent, sent_at=t0, updated_at=t0)
            )
            p1 = await session.scalar(
                select(Subscriber.id).where(Subscriber.email == "p1@contract.example")
            )

        # Nothing is due yet.
        assert not any((await plan(db, settings, t0 + DAY)).counts().values())

        # 200 days later: unconfirmed, unsubscribed (two kinds), outbox recipients, IPs.
        now = t0 + 200 * DAY
        due = await plan(db, settings, now)
        assert (due.unconfirmed, due.unsubscribed, due.unsubscribed_gone) == (
            [pending],
            [proof],
            [p1],
        )
        assert due.outbox_rows == 3  # the announcement's (the confirmation mails never went)
        assert due.consent_ips == 2 and due.audit_ips >= 4 and due.audit_entries == 0
        listed = due.counts()
        done = await purge(db, settings, now)
        assert done.counts() == listed and done.skipped == 0
        # Whatever was listed is gone: the same dry run now finds nothing.
        assert not any((await plan(db, settings, now)).counts().values())
        async with db.reading() as session:
            ids = set(await session.scalars(select(Subscriber.id)))
            reduced = await session.get_one(Subscriber, proof)
            consents = list(await session.scalars(select(Consent)))
            named_rows = await session.scalar(
                select(func.count())
                .select_from(OutboxMessage)
                .where(OutboxMessage.subscriber_id.is_not(None))
            )
            all_rows = await session.scalar(select(func.count()).select_from(OutboxMessage))
            hashes = await erased_among(
                session, ["offen@kreis.example", "p1@contract.example", "ex@kreis.example"]
            )
        assert pending not in ids and p1 not in ids and proof in ids
        assert reduced.name == "" and reduced.email == "ex@kreis.example"
        assert reduced.status is SubscriberStatus.unsubscribed
        assert [(c.subscriber_id, c.ip) for c in consents] == [(proof, "")]
        assert consents[0].confirmed_at is not None  # the proof itself is kept
        assert named_rows == 0 and all_rows == 5  # counted still, recipients gone
        # An unconfirmed sign-up never became a subscriber: no hash keeps it from an import.
        assert hashes == {"p1@contract.example": "retention"}

        # After the proof period and the audit period: the proof goes, and the old audit log.
        later = t0 + (30 + 1095 + 1) * DAY
        due = await plan(db, settings, later)
        assert due.proof_expired == [proof] and due.audit_entries > 0
        listed = due.counts()
        assert (await purge(db, settings, later)).counts() == listed
        assert not any((await plan(db, settings, later)).counts().values())
        async with db.reading() as session:
            assert await session.get(Subscriber, proof) is None
            assert not list(await session.scalars(select(Consent)))
            actions = list(await session.scalars(select(AuditEntry.action)))
        assert "privacy.purge" in actions and "signup" not in actions
    finally:
        await db.engine.dispose()


def _db(project: Project) -> sqlite3.Connection:
    return sqlite3.connect(project.root / "var" / "test.db")


async def _many_pending(project: Project, count: int, days_ago: float) -> list[int]:
    settings = project.settings
    db = Database(settings.database_url)
    then = datetime.now(UTC) - days_ago * DAY
    try:
        async with db.transaction() as session:
            org = await session.scalar(select(Organisation).where(Organisation.key == "07232"))
            assert org is not None
            for i in range(count):
                choices = selfservice.Choices(
                    f"Person Nummer {i}", org, Role.staff, Rhythm.immediate, ()
                )
                await selfservice.sign_up(
                    session,
                    f"k{i}@kill.example",
                    choices,
                    ip=f"203.0.113.{i % 250}",
                    settings=settings,
                    now=then,
                )
        async with db.reading() as session:
            return list(
                await session.scalars(
                    select(Subscriber.id).where(Subscriber.status == SubscriberStatus.pending)
                )
            )
    finally:
        await db.engine.dispose()


def test_the_cli_reports_per_kind_and_removes_what_the_dry_run_said(project: Project) -> None:
    project.seed(None)
    asyncio.run(_many_pending(project, 3, days_ago=10))
    # Two mails in the built-in catcher's store, one of them 15 days old.
    store = MailStore(project.root / "var" / "mails")
    mail = b"Subject: Test\r\nTo: k0@kill.example\r\n\r\nHallo\r\n"
    old, new = (
        store.save("a@b.example", ["k0@kill.example"], mail),
        store.save("a@b", ["x@y"], mail),
    )
    meta = store.directory / f"{old:06d}.json"
    data = json.loads(meta.read_text("utf-8"))
    data["received_at"] = (datetime.now(UTC) - 15 * DAY).isoformat()
    meta.write_text(json.dumps(data), "utf-8")
    dry = project.cli("privacy", "purge", "--dry-run").output
    assert "Probelauf – würde entfernen:" in dry
    assert "Unbestätigte Anmeldungen (älter als 48 Std. + 7 Tage), gelöscht: 3" in dry
    assert "Mail-Catcher: E-Mails älter als 14 Tage: 1" in dry
    assert len(store.list()) == 2
    with _db(project) as db:
        assert db.execute("SELECT count(*) FROM subscribers").fetchone() == (3,)
    done = project.cli("privacy", "purge").output
    assert "Entfernt:" in done
    listed = [line for line in dry.splitlines() if ": " in line and line.startswith("  ")]
    removed = [line for line in done.splitlines() if ": " in line and line.startswith("  ")]
    assert listed == removed
    with _db(project) as db:
        assert db.execute("SELECT count(*) FROM subscribers").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM consents").fetchone() == (0,)
    assert [m.number for m in store.list()] == [new]
    assert not meta.exists()
    again = project.cli("privacy", "purge", "--dry-run").output
    assert "nichts zu entfernen" in again


def _state(project: Project, ids: list[int]) -> tuple[set[int], set[int]]:
    """The people that are whole and those that are gone; fails on anyone half-erased."""
    whole: set[int] = set()
    gone: set[int] = set()
    with _db(project) as db:
        subs = dict(db.execute("SELECT id, name FROM subscribers").fetchall())
        consents = dict(
            db.execute("SELECT subscriber_id, count(*) FROM consents GROUP BY 1").fetchall()
        )
        outbox = dict(
            db.execute(
                "SELECT subscriber_id, count(*) FROM outbox WHERE subscriber_id IS NOT NULL "
                "GROUP BY 1"
            ).fetchall()
        )
        audit: dict[str, list[tuple[str, str]]] = {}
        for entity_id, action, details in db.execute(
            "SELECT entity_id, action, details FROM audit_log WHERE entity = 'subscriber'"
        ):
            audit.setdefault(entity_id, []).append((action, details))
        dump = "\n".join(db.iterdump())
    for sid in ids:
        email = f"k{sid - ids[0]}@kill.example"
        entries = audit.get(str(sid), [])
        if sid in subs:
            assert subs[sid].startswith("Person Nummer"), sid
            assert consents.get(sid) == 1 and outbox.get(sid) == 1, sid
            assert [a for a, _ in entries] == ["signup"] and '"ip"' in entries[0][1], sid
            whole.add(sid)
        else:
            assert sid not in consents and sid not in outbox, sid
            assert sorted(a for a, _ in entries) == ["signup", "subscriber.erased"], sid
            assert all('"ip"' not in d for _, d in entries), sid
            assert not re.search(rf"\b{re.escape(email)}", dump), email
            gone.add(sid)
    return whole, gone


def test_a_purge_killed_at_any_moment_leaves_each_person_whole_or_gone(
    project: Project,
) -> None:
    project.seed(None)
    count = 400
    ids = asyncio.run(_many_pending(project, count, days_ago=30))
    assert len(ids) == count and ids == list(range(ids[0], ids[0] + count))
    kills = 0
    for _ in range(8):
        running = project.spawn("privacy", "purge")
        # Kill as soon as the purge is under way: some people gone, others not yet.
        deadline = time.monotonic() + 60
        killed = False
        while running.proc.poll() is None and time.monotonic() < deadline:
            with _db(project) as db:
                left = db.execute(
                    "SELECT count(*) FROM subscribers WHERE status = 'pending'"
                ).fetchone()[0]
            if 0 < left < count:
                time.sleep(0.01 * (kills % 4))  # a little later each time
                running.proc.send_signal(signal.SIGKILL)
                killed = True
                break
            time.sleep(0.005)
        running.proc.wait(30)
        running.close()
        whole, gone = _state(project, ids)
        assert len(whole) + len(gone) == count
        if not killed:
            assert running.proc.returncode == 0, running.output
            assert not whole
            break
        kills += 1
        assert running.proc.returncode == -signal.SIGKILL
    else:
        finished = project.cli("privacy", "purge")
        assert "Entfernt:" in finished.output or "Nichts zu entfernen" in finished.output
        whole, gone = _state(project, ids)
        assert not whole
    assert kills >= 2, "the purge ended before it could be killed twice"


@pytest.mark.parametrize("outbox_days", [123])
def test_the_service_purges_daily_and_the_privacy_notice_names_the_periods(
    web: Callable[..., Web], project: Project, outbox_days: int
) -> None:
    project.write_config({"retention": {"outbox_days": outbox_days, "ip_days": 45}})
    project.seed()
    asyncio.run(_many_pending(project, 2, days_ago=30))
    site = web({"retention": {"outbox_days": outbox_days, "ip_days": 45}}, seed=False)
    # The scheduler's leader runs the purge at its start (and then daily).
    for _ in range(100):
        with _db(project) as db:
            left = db.execute("SELECT count(*) FROM subscribers WHERE status = 'pending'")
            if left.fetchone() == (0,):
                break
        time.sleep(0.1)
    else:
        raise AssertionError(site.running.output)
    # Logged once the purge's last transaction is committed, a moment after the people went.
    site.running.wait_for_line("Löschfristen: unconfirmed=2")
    notice = site.client.get("/datenschutz")
    assert notice.status_code == 200
    text = re.sub(r"\s+", " ", notice.text)
    assert f"nach {outbox_days} Tagen, an wen sie gingen" in text
    assert (
        "IP-Adressen (bei der Anmeldung und im Änderungsprotokoll) löschen wir nach 45 Tagen"
        in text
    )
    assert "weitere 1.095 Tage" in text and "48 Stunden" in text
    assert "{retention." not in text


def test_an_unknown_placeholder_in_the_privacy_notice_stops_the_start(project: Project) -> None:
    notice = project.write("datenschutz.md", "Wir löschen nach {retention.outbox_tage} Tagen.\n")
    project.write_config({"legal": {"privacy_file": str(notice)}})
    with pytest.raises(ConfigError) as caught:
        load_legal_pages(project.settings)
    assert caught.value.key == "legal.privacy_file"
    assert "unbekannter Platzhalter {retention.outbox_tage}" in str(caught.value)
    assert "{retention.outbox_days}" in str(caught.value)
    project.write("datenschutz.md", "Nach {retention.outbox_days} Tagen; {web.confirm_hours} h.\n")
    assert "Nach 180 Tagen; 48 h." in load_legal_pages(project.settings).privacy
