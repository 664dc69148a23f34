"""The public pages over HTTP against a real ``notifier run``: sign-up with double opt-in,
preferences through the personal link, one-click unsubscribe (RFC 8058), and the security of
links and forms."""

from __future__ import annotations

import sqlite3
import time
import tomllib
from collections.abc import Callable
from typing import Any

import httpx
import tomli_w

from notifier.catcher import MailStore

from .conftest import Project, Web, free_port

SIGNUP = {
    "email": "Erika.Musterfrau@og-bettingen.example",
    "name": "Erika Musterfrau",
    "organisation": "Bettingen (Verbandsgemeinde Bitburger Land)",
    "role": "mayor",
    "topics": ["mobilitaet", "eifelleben"],
    "rhythm": "weekly",
    "consent": "1",
}


def _db(project: Project) -> sqlite3.Connection:
    return sqlite3.connect(project.root / "var" / "test.db")


def _sign_up(web: Web, **changes: Any) -> httpx.Response:
    data = {**SIGNUP, **changes, "csrf_token": web.csrf("/anmelden")}
    return web.client.post("/anmelden", data=data)


def test_sign_up_confirm_change_and_unsubscribe(web: Callable[..., Web], project: Project) -> None:
    site = web()
    answer = _sign_up(site)
    assert answer.status_code == 200, answer.text
    assert "Bitte prüfen Sie Ihr Postfach" in answer.text
    with _db(project) as db:
        status, email = db.execute(
            "SELECT status, email FROM subscribers WHERE name = 'Erika Musterfrau'"
        ).fetchone()
        consent = db.execute(
            "SELECT text_version, ip, confirmed_at FROM consents c JOIN subscribers s "
            "ON s.id = c.subscriber_id WHERE s.email = ?",
            (email,),
        ).fetchone()
    assert (status, email) == ("pending", "erika.musterfrau@og-bettingen.example")
    assert consent == ("2026-11", "127.0.0.1", None)

    [mail] = project.smtp.wait_for(1)
    message = mail.message
    assert message["Subject"] == "Bitte bestätigen Sie Ihre Anmeldung bei EIFELKREIS VERBINDET"
    # Transactional, not bulk mail: no list headers at all.
    for name in ("List-Unsubscribe", "List-Unsubscribe-Post", "List-Id", "Precedence"):
        assert message[name] is None, name
    text = message.get_body(("plain",)).get_content()
    confirm = site.link(text, "bestaetigen")
    # The written-out link may break anywhere: it would make the mail wider than a phone.
    html = message.get_body(("html",)).get_content()
    wrapping = '<span style="word-break: break-all; overflow-wrap: anywhere;">'
    assert f"{wrapping}{site.base}{confirm}</span>" in html

    # The link shows a page with a button; only the POST confirms (mail scanners GET links).
    page = site.client.get(confirm)
    assert page.status_code == 200 and "Anmeldung bestätigen" in page.text
    with _db(project) as db:
        assert db.execute(
            "SELECT status FROM subscribers WHERE email = ?", (email,)
        ).fetchone() == ("pending",)
    done = site.client.post(confirm, data={"csrf_token": site.csrf(confirm)})
    assert done.status_code == 200 and "Ihre Anmeldung ist bestätigt" in done.text
    with _db(project) as db:
        assert db.execute(
            "SELECT status FROM subscribers WHERE email = ?", (email,)
        ).fetchone() == ("active",)
        assert db.execute("SELECT confirmed_at IS NOT NULL FROM consents").fetchone() == (1,)


def _status(project: Project, email: str) -> str:
    with _db(project) as db:
        row = db.execute("SELECT status FROM subscribers WHERE email = ?", (email,)).fetchone()
    assert row is not None, email
    status: str = row[0]
    return status


def _announce(project: Project, subject: str = "Neue Sprechstunden der Digitalen Kümmerer") -> None:
    file = project.write(
        "a.md",
        f'+++\nsubject = "{subject}"\nsend_at = "now"\n+++\nDie **Kümmerer** helfen gern.\n',
    )
    project.cli("announce", file)


def test_every_message_carries_working_personal_links(
    web: Callable[..., Web], project: Project
) -> None:
    site = web()
    _announce(project)
    received = project.smtp.wait_for(9)
    by_address = {m.message["To"].addresses[0].addr_spec: m.message for m in received}
    message = by_address["peter.meyer@bitburg.example"]
    header = message["List-Unsubscribe"]
    assert header.startswith(f"<{site.base}/abmelden/") and header.endswith(">")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    preferences = site.link(text, "einstellungen")
    assert preferences in html and site.link(html, "abmelden") == header[1:-1][len(site.base) :]
    # Each recipient's links are their own.
    other = by_address["claudia.wagner@bitburg.example"]["List-Unsubscribe"]
    assert other != header

    page = site.client.get(preferences)
    assert page.status_code == 200 and "peter.meyer@bitburg.example" in page.text
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert page.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'self'" in page.headers["Content-Security-Policy"]
    cookie = page.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()

    # RFC 8058: the mailbox provider POSTs to the URL, without cookies or a form token.
    one_click = httpx.post(
        header[1:-1],
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    )
    assert one_click.status_code == 200, one_click.text
    assert _status(project, "peter.meyer@bitburg.example") == "unsubscribed"
    assert _status(project, "claudia.wagner@bitburg.example") == "active"
    with _db(project) as db:
        action, details = db.execute(
            "SELECT action, details FROM audit_log WHERE action = 'unsubscribe'"
        ).fetchone()
    assert action == "unsubscribe" and '"one-click"' in details
    # The link still answers, now saying so; a second POST changes nothing and still works.
    again = site.client.get(header[1:-1][len(site.base) :])
    assert again.status_code == 200 and "Sie sind abgemeldet" in again.text
    assert httpx.post(header[1:-1], data={"List-Unsubscribe": "One-Click"}).status_code == 200


def test_unsubscribing_stops_messages_not_yet_sent(
    web: Callable[..., Web], project: Project
) -> None:
    address = "peter.meyer@bitburg.example"
    project.smtp.transient[address] = ("451 4.7.1 Try again later", 1000)
    site = web()
    _announce(project)
    project.smtp.wait_for(8)
    with _db(project) as db:
        for _ in range(100):
            row = db.execute(
                "SELECT o.state FROM outbox o JOIN subscribers s ON s.id = o.subscriber_id "
                "WHERE s.email = ?",
                (address,),
            ).fetchone()
            if row == ("deferred",):
                break
            time.sleep(0.1)
    assert row == ("deferred",)
    message_links = site.client.get("/anmelden")  # any page: the service is responsive
    assert message_links.status_code == 200
    with _db(project) as db:
        sub_id, version = db.execute(
            "SELECT id, token_version FROM subscribers WHERE email = ?", (address,)
        ).fetchone()
    token = _personal_token(project, sub_id, version)
    answer = site.client.post(f"/abmelden/{token}", data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200
    with _db(project) as db:
        state, reply = db.execute(
            "SELECT state, last_reply FROM outbox o JOIN subscribers s ON s.id = o.subscriber_id "
            "WHERE s.email = ?",
            (address,),
        ).fetchone()
    assert (state, reply) == ("cancelled", "abgemeldet")


def _preferences_of(project: Project, email: str) -> tuple[int, str]:
    """A subscriber's id and the path of their preferences page."""
    with _db(project) as db:
        subscriber_id: int = db.execute(
            "SELECT id FROM subscribers WHERE email = ?", (email,)
        ).fetchone()[0]
    return subscriber_id, f"/einstellungen/{_personal_token(project, subscriber_id, 0)}"


def _personal_token(project: Project, subscriber_id: int, version: int) -> str:
    from notifier.links import PERSONAL, Links

    return Links(project.settings).token(PERSONAL, subscriber_id, version)


def test_repeated_sign_up_neither_duplicates_nor_reveals(
    web: Callable[..., Web], project: Project
) -> None:
    site = web()
    new = _sign_up(site)
    again = _sign_up(site, name="Erika M.")
    known = _sign_up(site, email="Peter.Meyer@bitburg.example", name="Someone Else")
    assert new.status_code == again.status_code == known.status_code == 200

    def main_part(response: httpx.Response) -> str:
        return response.text.split("<main", 1)[1].split("</main>", 1)[0]

    assert main_part(new) == main_part(again) == main_part(known)
    with _db(project) as db:
        rows = db.execute(
            "SELECT name, status FROM subscribers WHERE email IN (?, ?) ORDER BY email",
            ("erika.musterfrau@og-bettingen.example", "peter.meyer@bitburg.example"),
        ).fetchall()
        consents = db.execute("SELECT count(*) FROM consents").fetchone()
    # The unconfirmed sign-up takes the latest details; the subscribed address keeps its own.
    assert rows == [("Erika M.", "pending"), ("Peter Meyer", "active")]
    assert consents == (2,)
    mails = project.smtp.wait_for(2)
    subjects = sorted(m.message["Subject"] for m in mails)
    assert subjects == [
        "Bitte bestätigen Sie Ihre Anmeldung bei EIFELKREIS VERBINDET",
        "Ihr persönlicher Link zu EIFELKREIS VERBINDET",
    ]
    # At most one such e-mail per address in ten minutes: the form cannot flood a mailbox.
    _sign_up(site, email="peter.meyer@bitburg.example")
    with _db(project) as db:
        service_mails = db.execute(
            "SELECT count(*) FROM outbox WHERE item_id IS NULL AND digest_id IS NULL"
        ).fetchone()
    assert service_mails == (2,)
    links_mail = next(m for m in mails if m.message["Subject"].startswith("Ihr persönlicher"))
    text = links_mail.message.get_body(("plain",)).get_content()
    assert "peter.meyer@bitburg.example" in site.client.get(site.link(text, "einstellungen")).text


def test_addresses_outside_the_allowed_domains_wait_for_the_office(
    web: Callable[..., Web], project: Project
) -> None:
    site = web({"web": {"allowed_domains": ["vg-pruem.example"]}})
    _sign_up(site, email="mayor@og-bettingen.example")
    _sign_up(site, email="staff@verwaltung.vg-pruem.example")
    for mail in project.smtp.wait_for(2):
        path = site.link(mail.message.get_body(("plain",)).get_content(), "bestaetigen")
        done = site.client.post(path, data={"csrf_token": site.csrf(path)})
        assert done.status_code == 200
        if mail.message["To"].addresses[0].addr_spec.startswith("mayor@"):
            assert "Das Projektbüro gibt Ihre Anmeldung frei" in done.text
    assert _status(project, "mayor@og-bettingen.example") == "held"
    assert _status(project, "staff@verwaltung.vg-pruem.example") == "active"


def test_broken_foreign_expired_and_revoked_links_get_a_clear_page(
    web: Callable[..., Web], project: Project
) -> None:
    site = web({"web": {"confirm_hours": 1 / 3600}})
    with _db(project) as db:
        peter, claudia = (
            db.execute("SELECT id FROM subscribers WHERE email = ?", (e,)).fetchone()[0]
            for e in ("peter.meyer@bitburg.example", "claudia.wagner@bitburg.example")
        )
    token = _personal_token(project, peter, 0)
    payload, stamp, signature = token.split(".")
    # Another subscriber's id under Peter's signature, and a changed signature.
    foreign = ".".join([_personal_token(project, claudia, 0).split(".")[0], stamp, signature])
    flipped = ".".join(
        [payload, stamp, signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")]
    )
    for bad in (foreign, flipped, "garbage", token[:-10]):
        for path in (f"/einstellungen/{bad}", f"/abmelden/{bad}", f"/bestaetigen/{bad}"):
            page = site.client.get(path)
            assert page.status_code == 404, (path, page.text)
            assert "Dieser Link ist nicht gültig" in page.text and "Traceback" not in page.text
        post = site.client.post(f"/abmelden/{bad}", data={"List-Unsubscribe": "One-Click"})
        assert post.status_code == 404
    assert _status(project, "claudia.wagner@bitburg.example") == "active"
    # A confirmation link from another purpose does not confirm anything.
    assert site.client.get(f"/bestaetigen/{token}").status_code == 404

    _sign_up(site)
    [mail] = project.smtp.wait_for(1)
    confirm = site.link(mail.message.get_body(("plain",)).get_content(), "bestaetigen")
    time.sleep(2.2)
    expired = site.client.get(confirm)
    assert expired.status_code == 410 and "Dieser Link ist abgelaufen" in expired.text

    # Revoked: a new token_version makes every earlier link invalid.
    assert site.client.get(f"/einstellungen/{token}").status_code == 200
    with _db(project) as db:
        db.execute("UPDATE subscribers SET token_version = 1 WHERE id = ?", (peter,))
    revoked = site.client.get(f"/einstellungen/{token}")
    assert revoked.status_code == 404 and "nicht mehr gültig" in revoked.text
    assert (
        site.client.get(f"/einstellungen/{_personal_token(project, peter, 1)}").status_code == 200
    )


def test_forms_refuse_missing_or_wrong_csrf_tokens(
    web: Callable[..., Web], project: Project
) -> None:
    site = web()
    without = site.client.post("/anmelden", data=SIGNUP)
    wrong = site.client.post("/anmelden", data={**SIGNUP, "csrf_token": "x" * 43})
    # A token from another visitor's session does not fit this session either.
    stranger = httpx.Client(base_url=site.base)
    foreign = site.client.post(
        "/anmelden", data={**SIGNUP, "csrf_token": site.csrf("/anmelden", stranger)}
    )
    stranger.close()
    for answer in (without, wrong):
        assert answer.status_code == 403 and "Formular ist abgelaufen" in answer.text
    with _db(project) as db:
        assert db.execute(
            "SELECT count(*) FROM subscribers WHERE email LIKE 'erika%'"
        ).fetchone() == (0,)
    assert foreign.status_code == 403

    peter, path = _preferences_of(project, "peter.meyer@bitburg.example")
    change = {
        "name": "Hacked",
        "organisation": "Bitburg",
        "role": "mayor",
        "rhythm": "daily",
        "all_topics": "1",
        "action": "save",
    }
    assert site.client.post(path, data=change).status_code == 403
    assert site.client.post(path, data={**change, "action": "pause"}).status_code == 403
    with _db(project) as db:
        assert db.execute(
            "SELECT name, status FROM subscribers WHERE id = ?", (peter,)
        ).fetchone() == ("Peter Meyer", "active")
    saved = site.client.post(
        path, data={**change, "name": "Peter Meyer-Schmitt", "csrf_token": site.csrf(path)}
    )
    assert saved.status_code == 200 and "gespeichert" in saved.text
    with _db(project) as db:
        assert db.execute(
            "SELECT name, rhythm FROM subscribers WHERE id = ?", (peter,)
        ).fetchone() == ("Peter Meyer-Schmitt", "daily")


def test_line_breaks_in_any_field_that_reaches_a_message_are_refused(
    web: Callable[..., Web], project: Project
) -> None:
    site = web()
    for field, value in (
        ("name", "Eve\r\nBcc: victim@example.org"),
        ("name", "Eve\nSubject: x"),
        ("email", "eve@example.org\r\nBcc: victim@example.org"),
        ("organisation", "Bitburg\r\nX: y"),
    ):
        answer = _sign_up(site, **{field: value})
        assert answer.status_code == 422, (field, answer.text)
        assert (
            'aria-invalid="true"' in answer.text and "Bitte prüfen Sie Ihre Angaben" in answer.text
        )
    with _db(project) as db:
        assert db.execute(
            "SELECT count(*) FROM subscribers WHERE status = 'pending'"
        ).fetchone() == (0,)
    _, path = _preferences_of(project, "peter.meyer@bitburg.example")
    evil = {
        "name": "Peter\r\nBcc: victim@example.org",
        "organisation": "Bitburg",
        "role": "mayor",
        "rhythm": "daily",
        "all_topics": "1",
        "action": "save",
        "csrf_token": site.csrf(path),
    }
    answer = site.client.post(path, data=evil)
    assert answer.status_code == 422 and "Zeilenumbrüche" in answer.text
    assert _status(project, "peter.meyer@bitburg.example") == "active"


def test_a_paused_subscriber_receives_nothing_until_resumed(
    web: Callable[..., Web], project: Project
) -> None:
    site = web()
    _, path = _preferences_of(project, "peter.meyer@bitburg.example")
    paused = site.client.post(path, data={"action": "pause", "csrf_token": site.csrf(path)})
    assert paused.status_code == 200 and "Der Empfang ist pausiert" in paused.text
    _announce(project, "Erste Mitteilung")
    first = project.smtp.wait_for(8)
    resumed = site.client.post(path, data={"action": "resume", "csrf_token": site.csrf(path)})
    assert "Der Empfang ist fortgesetzt" in resumed.text
    _announce(project, "Zweite Mitteilung")
    second = project.smtp.wait_for(17)
    peters = [
        m.message["Subject"] for m in second if "peter.meyer@bitburg.example" in m.message["To"]
    ]
    assert peters == ["Zweite Mitteilung"]
    assert all("peter.meyer" not in m.message["To"] for m in first)


def test_a_web_only_process_runs_beside_the_sqlite_service(
    web: Callable[..., Web], project: Project
) -> None:
    """On SQLite one service sends and schedules; ``run --only web`` may run beside it (its own
    port, no second mail catcher), and what it queues is sent by the service."""
    site = web({"smtp": {"catcher": True}, "catcher": {"directory": "var/mails"}})
    data = tomllib.loads(project.config.read_text("utf-8"))
    port = free_port()
    data["web"]["port"] = port
    data["mail"]["public_base_url"] = f"http://127.0.0.1:{port}"
    other = project.root / "web.toml"
    other.write_text(tomli_w.dumps(data), "utf-8")
    running = project.spawn("run", "--only", "web", config=other)
    try:
        running.wait_for_line("Beenden mit Strg+C")
        beside = Web(project, running, f"http://127.0.0.1:{port}")
        answer = _sign_up(beside)
        assert answer.status_code == 200 and "Bitte prüfen Sie Ihr Postfach" in answer.text
        store = MailStore(project.root / "var" / "mails")
        for _ in range(100):
            if store.list():
                break
            time.sleep(0.1)
        [mail] = store.list()
        text = mail.message().get_body(("plain",)).get_content()
        # Sent by the service, so its links lead to the service's own web application.
        confirm = site.link(text, "bestaetigen")
        done = site.client.post(confirm, data={"csrf_token": site.csrf(confirm)})
        assert done.status_code == 200 and "Ihre Anmeldung ist bestätigt" in done.text
        assert beside.client.get("/healthz").json() == {"status": "ok"}
        assert "mail catcher listening" not in running.output
    finally:
        assert running.stop() == 0
        beside.client.close()
