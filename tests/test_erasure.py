"""Erasure on request (DSGVO art. 17): an erased person leaves no trace of name, address or IP
in any table (a dump of every table is searched), on SQLite and PostgreSQL; the entry points
(preferences page, office console, API, CLI) and the import's report of erased addresses."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text, update

from notifier import selfservice
from notifier.cli import main
from notifier.config import Settings
from notifier.db import Database, queries
from notifier.db.models import (
    AuditEntry,
    Base,
    Bounce,
    BounceKind,
    BriefingQueue,
    Digest,
    Organisation,
    OutboxMessage,
    OutboxState,
    Rhythm,
    Role,
    Subscriber,
)
from notifier.erasure import CANCELLED_STEP, erase_subscriber
from notifier.links import PERSONAL, Links, LinkTarget
from notifier.routing import release_due

from .browser import assert_accessible, browser_page
from .conftest import Project, Web
from .test_storage_contract import LEASE, T0, note, people, queued, store

__all__ = ["browser_page", "store"]

NAME = "Erika Musterfrau"
EMAIL = "erika.musterfrau@og-bettingen.example"
IP = "198.51.100.77"
NEEDLES = (EMAIL, "erika.musterfrau", NAME, "Musterfrau", IP)
SIGNUP = {
    "email": EMAIL,
    "name": NAME,
    "organisation": "Bettingen (Verbandsgemeinde Bitburger Land)",
    "role": "mayor",
    "topics": ["mobilitaet", "eifelleben"],
    "rhythm": "weekly",
    "consent": "1",
}
USER, PASSWORD = "buero", "ein-langes-passwort"


async def dump_tables(db: Database) -> str:
    """Every row of every table (the models' and Alembic's), as text."""
    out: list[str] = []
    async with db.reading() as session:
        for table in Base.metadata.sorted_tables:
            for row in (await session.execute(select(table))).all():
                out.append(f"{table.name}: {tuple(row)!r}")
        version = await session.scalar(text("SELECT version_num FROM alembic_version"))
        out.append(f"alembic_version: {version}")
    return "\n".join(out)


def traces(dump: str) -> list[str]:
    """The lines of a dump that still hold a needle (case-insensitive)."""
    return [line for line in dump.splitlines() if any(n.lower() in line.lower() for n in NEEDLES)]


# -- every table, both databases -------------------------------------------------------------


async def _build(store: Project, db: Database, settings: Settings) -> int:
    """Erika signs up (consent with IP), confirms, is updated by an import, is told about an
    announcement (one message failed with a reply quoting her address) and has a briefing
    waiting and one built; others are there too."""
    await asyncio.to_thread(store.seed, store.write("people.csv", people(5)))
    now = datetime.now(UTC)
    async with db.transaction() as session:
        org = await session.scalar(select(Organisation).where(Organisation.key == "07232"))
        assert org is not None
        choices = selfservice.Choices(NAME, org, Role.mayor, Rhythm.immediate, ())
        await selfservice.sign_up(session, EMAIL, choices, ip=IP, settings=settings, now=now)
    async with db.transaction() as session:
        sub = await session.scalar(select(Subscriber).where(Subscriber.email == EMAIL))
        assert sub is not None
        await selfservice.confirm(session, LinkTarget(sub.id, 0), ip=IP, settings=settings, now=now)
        subscriber_id = sub.id
    csv = people(5) + f"{EMAIL},{NAME},mayor,07232,mobilitaet,immediate\n"
    await asyncio.to_thread(store.cli, "subscribers", "import", store.write("p2.csv", csv))
    await asyncio.to_thread(store.cli, "announce", store.write("a.md", note("Rundschreiben")))
    assert await release_due(db, datetime.now(UTC))
    async with db.transaction() as session:
        await session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.subscriber_id == subscriber_id, OutboxMessage.item_id == 1)
            .values(
                state=OutboxState.failed,
                last_code=550,
                last_reply=f"5.1.1 <{EMAIL}>: Recipient address rejected",
            )
        )
        digest = Digest(
            subscriber_id=subscriber_id, rhythm=Rhythm.weekly, slot_at=now, created_at=now
        )
        session.add(digest)
        session.add(BriefingQueue(subscriber_id=subscriber_id, item_id=1, queued_at=now))
        # A delivery report matched to her message, and a complaint naming her address that
        # matched nothing; both keep the raw message, which quotes the address.
        row = await session.scalar(
            select(OutboxMessage.id).where(OutboxMessage.subscriber_id == subscriber_id)
        )
        raw = f"Final-Recipient: rfc822; {EMAIL}\r\nStatus: 5.1.1\r\n".encode()
        for kind, matched in ((BounceKind.hard, True), (BounceKind.complaint, False)):
            session.add(
                Bounce(
                    received_at=now,
                    source="cli",
                    kind=kind,
                    address=EMAIL,
                    subscriber_id=subscriber_id if matched else None,
                    outbox_id=row if matched else None,
                    status="5.1.1",
                    diagnostic=f"550 5.1.1 <{EMAIL}>: User unknown",
                    raw=raw,
                )
            )
    return subscriber_id


async def test_an_erased_person_leaves_no_trace_in_any_table(store: Project) -> None:
    settings = store.settings
    db = Database(settings.database_url)
    try:
        subscriber_id = await _build(store, db, settings)
        before = await dump_tables(db)
        # Everything the search looks for is really there before.
        for needle in NEEDLES:
            assert needle.lower() in before.lower(), needle
        async with db.reading() as session:
            rows_before = len((await session.execute(select(OutboxMessage.id))).all())
        async with db.transaction() as session:
            sub = await session.get_one(Subscriber, subscriber_id)
            done = await erase_subscriber(session, sub, actor="office:buero", now=datetime.now(UTC))
        after = await dump_tables(db)
        async with db.reading() as session:
            outbox = (await session.execute(select(OutboxMessage.subscriber_id))).all()
            erased = (
                await session.execute(
                    select(AuditEntry.actor, AuditEntry.entity_id, AuditEntry.details).where(
                        AuditEntry.action == "subscriber.erased"
                    )
                )
            ).all()
            others = len((await session.execute(select(Subscriber.id))).all())
    finally:
        await db.engine.dispose()
    assert traces(after) == []
    assert done.rows["subscribers"] == 1 and done.rows["consents"] == 1
    assert done.rows["bounces"] == 2
    # The statistics keep every message, without its recipient.
    assert len(outbox) == rows_before and outbox.count((None,)) >= 2
    assert erased == [("office:buero", str(subscriber_id), {"reason": "request"})]
    assert others == 5


async def test_an_erasure_that_fails_changes_nothing(store: Project) -> None:
    settings = store.settings
    db = Database(settings.database_url)
    try:
        subscriber_id = await _build(store, db, settings)
        before = await dump_tables(db)
        with pytest.raises(RuntimeError, match="Stromausfall"):
            async with db.transaction() as session:
                sub = await session.get_one(Subscriber, subscriber_id)
                await erase_subscriber(session, sub, actor="cli", now=datetime.now(UTC))
                raise RuntimeError("Stromausfall")
        assert await dump_tables(db) == before
    finally:
        await db.engine.dispose()


# -- the entry points, against a real service ------------------------------------------------


def _db(project: Project) -> sqlite3.Connection:
    return sqlite3.connect(project.root / "var" / "test.db")


def _sqlite_traces(project: Project) -> list[str]:
    with _db(project) as db:
        return traces("\n".join(db.iterdump()))


def _personal_path(project: Project, kind: str, subscriber_id: int) -> str:
    token = Links(project.settings).token(PERSONAL, subscriber_id, 0)
    return f"/{kind}/{token}"


def _id_of(project: Project, email: str) -> int | None:
    with _db(project) as db:
        row = db.execute("SELECT id FROM subscribers WHERE email = ?", (email,)).fetchone()
    return None if row is None else int(row[0])


def test_a_person_signed_up_and_told_erases_themselves_on_the_preferences_page(
    web: Callable[..., Web], project: Project
) -> None:
    site = web()
    # Signed up from a known address (the proxy header is trusted from loopback).
    data = {**SIGNUP, "csrf_token": site.csrf("/anmelden")}
    answer = site.client.post("/anmelden", data=data, headers={"X-Forwarded-For": IP})
    assert answer.status_code == 200, answer.text
    [mail] = project.smtp.wait_for(1)
    confirm = site.link(mail.message.get_body(("plain",)).get_content(), "bestaetigen")
    done = site.client.post(confirm, data={"csrf_token": site.csrf(confirm)})
    assert done.status_code == 200
    # One announcement for everyone at once (she is on a weekly briefing): sent through the
    # real SMTP server; another waits in her briefing queue.
    for subject, important in (("Wichtig: Netzausfall", "true"), ("Neue Sprechstunden", "false")):
        file = project.write(
            "a.md",
            f'+++\nsubject = "{subject}"\nsend_at = "now"\nimportant = {important}\n+++\nText.\n',
        )
        project.cli("announce", file)
    project.smtp.wait_for(1 + 12 + 1)  # confirmation, 12 examples + Erika (important)
    erika = _id_of(project, EMAIL)
    assert erika is not None
    with _db(project) as db:
        for _ in range(100):
            queued = db.execute(
                "SELECT count(*) FROM briefing_queue WHERE subscriber_id = ?", (erika,)
            ).fetchone()
            if queued == (1,):
                break
            db.rollback()
            time.sleep(0.1)
        assert queued == (1,)
        # The SMTP server has the message before the sender has recorded it as sent.
        for _ in range(100):
            sent = db.execute(
                "SELECT count(*) FROM outbox WHERE subscriber_id = ? AND state = 'sent'", (erika,)
            ).fetchone()
            if sent == (2,):
                break
            db.rollback()
            time.sleep(0.1)
    assert sent == (2,)  # the confirmation and the important announcement
    assert _sqlite_traces(project)

    path = _personal_path(project, "einstellungen", erika)
    preferences = site.client.get(path)
    assert "Alle meine Daten löschen" in preferences.text
    # The page links to the erasure with a link of her own (signed with a time stamp, so it is
    # read back rather than made again here).
    linked = re.search(r'href="(/loeschen/[^"]+)"', preferences.text)
    assert linked is not None
    erase = linked.group(1)
    target = Links(project.settings).read(PERSONAL, erase.rsplit("/", 1)[1])
    assert (target.subscriber_id, target.version) == (erika, 0)
    confirm_page = site.client.get(erase)
    assert confirm_page.status_code == 200 and "Endgültig löschen" in confirm_page.text
    assert _id_of(project, EMAIL) == erika  # showing the page erases nothing

    # Without a CSRF token, with a forged link, with another person's link: refused.
    assert site.client.post(erase, data={}).status_code == 403
    forged = site.client.post(
        erase[:-3] + ("AAA" if not erase.endswith("AAA") else "BBB"),
        data={"csrf_token": site.csrf(erase)},
    )
    assert forged.status_code == 404 and "Dieser Link ist nicht gültig" in forged.text
    assert _id_of(project, EMAIL) == erika

    gone = site.client.post(erase, data={"csrf_token": site.csrf(erase)})
    assert gone.status_code == 200, gone.text
    assert "Ihre Daten sind gelöscht" in gone.text
    assert _id_of(project, EMAIL) is None
    assert _sqlite_traces(project) == []
    # The link is dead now: the German page, not an error.
    again = site.client.get(erase)
    assert again.status_code == 404 and "nicht mehr gültig" in again.text
    with _db(project) as db:
        assert db.execute(
            "SELECT actor, details FROM audit_log WHERE action = 'subscriber.erased'"
        ).fetchall() == [("web", '{"reason": "request"}')]
        # The statistics still count what she was sent.
        assert db.execute(
            "SELECT count(*) FROM outbox WHERE subscriber_id IS NULL AND state = 'sent'"
        ).fetchone() == (2,)

    # The office's next import skips her with a German line naming the row and the reason.
    csv = project.write(
        "alt.csv",
        "email,name,role,organisation,topics,rhythm\n"
        "neu@kreis.example,Neue Person,staff,07232,,immediate\n"
        f"{EMAIL.upper()},{NAME},mayor,07232,,weekly\n",
    )
    report = project.cli("subscribers", "import", csv).output
    assert "1 neu" in report
    assert (
        f"Zeile 3: {EMAIL} übersprungen – diese Person hat die Löschung ihrer Daten verlangt."
        in report
    )
    assert _id_of(project, EMAIL) is None and _id_of(project, "neu@kreis.example") is not None

    # Signing up again on her own brings her back, and the import may list her again.
    data = {**SIGNUP, "csrf_token": site.csrf("/anmelden")}
    assert site.client.post("/anmelden", data=data).status_code == 200
    returned = _id_of(project, EMAIL)
    assert returned is not None and returned != erika


def _office_login(site: Web) -> None:
    token = site.csrf("/buero/anmelden")
    answer = site.client.post(
        "/buero/anmelden", data={"name": USER, "password": PASSWORD, "csrf_token": token}
    )
    assert answer.status_code == 303, answer.text


def test_the_office_the_api_and_the_cli_erase(web: Callable[..., Web], project: Project) -> None:
    site = web()
    project.cli("users", "add", USER, "--email", "buero@kreis.example", "--password", PASSWORD)
    _office_login(site)
    peter = _id_of(project, "peter.meyer@bitburg.example")
    assert peter is not None
    page = site.client.get(f"/buero/abonnenten/{peter}")
    assert page.status_code == 200 and f'href="/buero/abonnenten/{peter}/loeschen"' in page.text
    confirm = site.client.get(f"/buero/abonnenten/{peter}/loeschen")
    assert confirm.status_code == 200 and "Peter Meyer" in confirm.text
    assert site.client.post(f"/buero/abonnenten/{peter}/loeschen", data={}).status_code == 403
    assert _id_of(project, "peter.meyer@bitburg.example") == peter
    token = site.csrf(f"/buero/abonnenten/{peter}/loeschen")
    done = site.client.post(f"/buero/abonnenten/{peter}/loeschen", data={"csrf_token": token})
    assert done.status_code == 200 and "Abonnent gelöscht" in done.text
    assert "Peter" not in done.text and "peter.meyer" not in done.text
    assert _id_of(project, "peter.meyer@bitburg.example") is None
    assert site.client.get(f"/buero/abonnenten/{peter}/loeschen").status_code == 404

    # The API: a bearer token is needed; DELETE erases, a second DELETE is 404.
    api_token = project.cli("tokens", "add", "cms").output.splitlines()[0]
    anna = _id_of(project, "anna.schmitz@kreis.example")
    assert anna is not None
    url = f"/api/v1/subscribers/{anna}"
    assert site.client.delete(url).status_code == 401
    auth = {"Authorization": f"Bearer {api_token}"}
    answer = site.client.delete(url, headers=auth)
    assert answer.status_code == 204, answer.text
    assert site.client.delete(url, headers=auth).status_code == 404
    assert site.client.get(url, headers=auth).status_code == 404
    assert _id_of(project, "anna.schmitz@kreis.example") is None

    # The CLI asks first; "n" keeps the person, --yes does not ask.
    kept = CliRunner().invoke(
        main,
        ["--config", str(project.config), "subscribers", "erase", "markus.weber@kreis.example"],
        input="n\n",
    )
    assert kept.exit_code == 0, kept.output
    assert "Alle Daten von markus.weber@kreis.example (Nr. 2, Markus Weber)" in kept.output
    assert "Abgebrochen; nichts gelöscht." in kept.output
    assert _id_of(project, "markus.weber@kreis.example") is not None
    erased = project.cli("subscribers", "erase", "Markus.Weber@kreis.example", "--yes")
    assert "gelöscht" in erased.output
    assert _id_of(project, "markus.weber@kreis.example") is None
    missing = project.cli("subscribers", "erase", "niemand@kreis.example", "--yes", ok=False)
    assert missing.exit_code == 1
    assert "Keinen Abonnenten mit der Adresse niemand@kreis.example gefunden" in missing.output

    with _db(project) as db:
        audit = db.execute(
            "SELECT actor, entity_id FROM audit_log WHERE action = 'subscriber.erased' ORDER BY id"
        ).fetchall()
        dump = "\n".join(db.iterdump()).lower()
    assert [a for a, _ in audit][:2] == ["office:buero", "api:cms"]
    assert audit[2][0].startswith("cli")
    for gone in ("peter.meyer", "anna.schmitz", "markus.weber", "Peter Meyer", "Anna Schmitz"):
        assert gone.lower() not in dump, gone

    # The office's upload reports the skipped rows too.
    token = site.csrf("/buero/abonnenten/import")
    upload = site.client.post(
        "/buero/abonnenten/import",
        data={"csrf_token": token},
        files={
            "file": (
                "liste.csv",
                "email,name,role,organisation,topics,rhythm\n"
                "peter.meyer@bitburg.example,Peter Meyer,staff,07232,,immediate\n",
                "text/csv",
            )
        },
    )
    assert upload.status_code == 200, upload.text
    assert re.search(r"Zeile 2: peter\.meyer@bitburg\.example übersprungen", upload.text)
    assert _id_of(project, "peter.meyer@bitburg.example") is None


def test_the_erasure_pages_pass_axe_core_in_a_browser(
    web: Callable[..., Web], project: Project, browser_page: Any
) -> None:
    page = browser_page
    site = web()
    project.cli("users", "add", USER, "--email", "buero@kreis.example", "--password", PASSWORD)
    peter = _id_of(project, "peter.meyer@bitburg.example")
    anna = _id_of(project, "anna.schmitz@kreis.example")
    assert peter is not None and anna is not None

    # The person: preferences page with the partial, the confirmation, the result.
    page.goto(site.url(_personal_path(project, "einstellungen", peter)))
    assert_accessible(page, "Einstellungen mit Löschen")
    page.get_by_role("link", name="Alle meine Daten löschen …").click()
    assert page.get_by_role("heading", name="Alle meine Daten löschen").is_visible()
    assert_accessible(page, "Löschen bestätigen")
    page.get_by_role("button", name="Endgültig löschen").click()
    assert page.get_by_role("heading", name="Ihre Daten sind gelöscht").is_visible()
    assert_accessible(page, "Gelöscht")
    assert _id_of(project, "peter.meyer@bitburg.example") is None

    # The office: subscriber page, confirmation, result, and the import's report.
    page.goto(site.url("/buero/anmelden"))
    page.get_by_label("Benutzername").fill(USER)
    page.get_by_label("Passwort").fill(PASSWORD)
    page.get_by_role("button", name="Anmelden").click()
    page.goto(site.url(f"/buero/abonnenten/{anna}"))
    assert_accessible(page, "Abonnent mit Löschen")
    page.get_by_role("link", name="Abonnent löschen …").click()
    assert_accessible(page, "Abonnent löschen")
    page.get_by_role("button", name="Endgültig löschen").click()
    assert page.get_by_role("heading", name="Abonnent gelöscht").is_visible()
    assert_accessible(page, "Abonnent gelöscht")
    assert _id_of(project, "anna.schmitz@kreis.example") is None

    csv = project.write(
        "liste.csv",
        "email,name,role,organisation,topics,rhythm\n"
        "anna.schmitz@kreis.example,Anna Schmitz,staff,07232,,immediate\n",
    )
    page.goto(site.url("/buero/abonnenten/import"))
    page.get_by_label("CSV-Datei").set_input_files(str(csv))
    page.get_by_role("button", name="Hochladen und importieren").click()
    assert page.get_by_text("Zeile 2: anna.schmitz@kreis.example übersprungen").is_visible()
    assert_accessible(page, "Import mit übersprungenen Zeilen")


def test_an_expired_link_gets_the_german_410_page_and_erases_nothing(
    web: Callable[..., Web], project: Project
) -> None:
    site = web({"web": {"link_days": 0.00002}})  # 1.7 seconds
    peter = _id_of(project, "peter.meyer@bitburg.example")
    assert peter is not None
    erase = _personal_path(project, "loeschen", peter)
    token = site.csrf(erase)  # still valid: the confirmation page
    time.sleep(2.5)
    page = site.client.get(erase)
    assert page.status_code == 410 and "Dieser Link ist abgelaufen" in page.text
    answer = site.client.post(erase, data={"csrf_token": token})
    assert answer.status_code == 410
    assert _id_of(project, "peter.meyer@bitburg.example") == peter


async def test_a_message_a_sender_holds_is_dropped_when_its_recipient_is_erased(
    store: Project,
) -> None:
    db = await queued(store, 3)
    try:
        claimed = await db.write(lambda c: queries.claim_batch(c, T0, 10, LEASE, "sender:1"))
        assert len(claimed) == 3
        victim = claimed[0]
        async with db.transaction() as session:
            sub = await session.get_one(Subscriber, victim.subscriber_id)
            done = await erase_subscriber(session, sub, actor="cli", now=T0)
        assert done.rows[CANCELLED_STEP] == 1
        # The sender reads its batch after the erasure: the row is not built, the others are.
        async with db.reading() as session:
            batch = await queries.describe_claimed(session, claimed)
        assert sorted(c.id for c in batch) == sorted(c.id for c in claimed[1:])
        # An outcome for it (had it been on the wire already) is refused, not written.
        late = [queries.Outcome(victim.id, OutboxState.sent, T0, owner="sender:1")]
        assert await db.write(lambda c: queries.record_outcomes(c, late)) == [victim.id]
        async with db.reading() as session:
            row = await session.get_one(OutboxMessage, victim.id)
        assert (row.state, row.subscriber_id, row.lease_owner) == (
            OutboxState.cancelled,
            None,
            None,
        )
        # Nor does a later claim take it again.
        later = T0 + LEASE * 2
        again = await db.write(lambda c: queries.claim_batch(c, later, 10, LEASE, "sender:2"))
        assert victim.id not in {c.id for c in again}
    finally:
        await db.engine.dispose()
