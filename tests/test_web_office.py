"""The project office's console over HTTP against a real ``notifier run``: login and throttling,
the dashboard, announcements from compose to delivery, subscribers, the mail catcher, and the
security of every form (CSRF, header injection)."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from notifier.catcher import MailStore

from .conftest import REPO, Project, Web

USER, PASSWORD, EMAIL = "buero", "ein-langes-passwort", "buero@kreis.example"
BERLIN = ZoneInfo("Europe/Berlin")


def _db(project: Project) -> sqlite3.Connection:
    return sqlite3.connect(project.root / "var" / "test.db")


def _start(web: Callable[..., Web], project: Project, config: dict[str, Any] | None = None) -> Web:
    site = web(config)
    project.cli("users", "add", USER, "--email", EMAIL, "--password", PASSWORD)
    return site


def _login(site: Web, password: str = PASSWORD, **extra: str) -> httpx.Response:
    token = site.csrf("/buero/anmelden")
    data = {"name": USER, "password": password, "csrf_token": token, **extra}
    return site.client.post("/buero/anmelden", data=data)


def _later(days: int = 1) -> str:
    return (datetime.now(BERLIN) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M")


ANNOUNCEMENT = {
    "subject": "Digitale Kümmerer: neue Sprechstunden",
    "body": "Ab **Montag** beraten die Kümmerer auch in Prüm.\n\n- dienstags\n- donnerstags",
    "topics": ["mobilitaet"],
    "send_at": "",
}


def _post(site: Web, path: str, data: dict[str, Any], form: str | None = None) -> httpx.Response:
    token = site.csrf(form or path)
    return site.client.post(path, data={**data, "csrf_token": token})


def _audit(project: Project, action: str) -> list[tuple[str, str | None]]:
    with _db(project) as db:
        return db.execute(
            "SELECT actor, entity_id FROM audit_log WHERE action = ? ORDER BY id", (action,)
        ).fetchall()


def test_login_dashboard_catcher_and_logout(web: Callable[..., Web], project: Project) -> None:
    feeds = [
        {"name": "projekt-news", "url": str(REPO / "examples" / "news.xml")},
        {"name": "kaputt", "url": "fehlt.xml"},
    ]
    site = _start(
        web,
        project,
        {
            "smtp": {"catcher": True},
            "catcher": {"directory": "var/mails"},
            "sources": {"feed": feeds},
        },
    )
    # Every page of the console sends a visitor without login to the login page.
    for path in ("/buero", "/buero/mitteilungen", "/buero/abonnenten", "/buero/mails/1/html"):
        answer = site.client.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/buero/anmelden?weiter=")
    before = site.csrf("/buero/anmelden")

    wrong = _login(site, "falsch-falsch-falsch")
    assert wrong.status_code == 401
    assert "Name oder Passwort ist nicht richtig." in wrong.text
    assert "falsch-falsch-falsch" not in wrong.text

    # After login the session is new: the token of the anonymous session no longer counts.
    answer = _login(site, next="https://angreifer.example/buero")
    assert answer.status_code == 303 and answer.headers["location"] == "/buero"
    assert site.client.post("/buero/abmelden", data={"csrf_token": before}).status_code == 403
    cookie = answer.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        dashboard = site.client.get("/buero")
        if "Digitale Hochwassermelder" in dashboard.text and "Fehler:" in dashboard.text:
            break
        time.sleep(0.2)
    assert dashboard.status_code == 200
    # Source health: the broken source shows its error, the other its items (only recorded).
    assert re.search(r"<td>kaputt</td><td>Feed</td><td>0</td>.*?Fehler: ", dashboard.text, re.S)
    assert re.search(
        r"<td>projekt-news</td><td>Feed</td><td>2</td>.*?in Ordnung", dashboard.text, re.S
    )
    assert "Digitale Hochwassermelder: alle 32 Sensoren melden" in dashboard.text
    for heading in (
        "Geplante Mitteilungen",
        "Versand der letzten 7 Tage",
        "Neues aus den Quellen",
        "Letzte Überblicke",
        "Quellen",
        "Angemeldet als </span>buero",  # the label hides between 64rem and 80rem
    ):
        assert heading in dashboard.text, heading
    assert dashboard.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in dashboard.headers["content-security-policy"]

    # A test to oneself goes through the service's SMTP: here the built-in catcher.
    sent = _post(site, "/buero/mitteilungen/neu", {**ANNOUNCEMENT, "action": "test"})
    assert sent.status_code == 200, sent.text
    assert f"Die Test-E-Mail ist an {EMAIL} verschickt." in sent.text
    store = MailStore(project.root / "var" / "mails")
    assert [m.rcpt_tos for m in store.list()] == [[EMAIL]]
    listing = site.client.get("/buero/mails")
    assert "[Test] Digitale Kümmerer: neue Sprechstunden" in listing.text
    number = store.list()[0].number
    shown = site.client.get(f"/buero/mails/{number}")
    assert shown.status_code == 200 and "Ab Montag beraten" in shown.text  # Markdown as text
    assert f'src="/buero/mails/{number}/html" sandbox' in shown.text
    frame = site.client.get(f"/buero/mails/{number}/html")
    assert frame.headers["content-security-policy"].startswith(
        "default-src 'none'; style-src 'unsafe-inline'"
    )
    assert "<strong>Montag</strong>" in frame.text and 'style="' in frame.text
    assert site.client.get("/buero/mails/999").status_code == 404
    with _db(project) as db:
        assert db.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
    assert _audit(project, "announcement.test_sent") == [("office:buero", None)]

    # Logout ends the session, and every copy of its cookie (a stolen one too); a login
    # remembers where the visitor wanted to go.
    copy = httpx.Client(base_url=site.base, cookies=dict(site.client.cookies))
    assert copy.get("/buero").status_code == 200
    out = site.client.post("/buero/abmelden", data={"csrf_token": site.csrf("/buero")})
    assert out.status_code == 303
    assert site.client.get("/buero").status_code == 303
    assert copy.get("/buero").status_code == 303
    copy.close()
    token = site.csrf("/buero/anmelden")
    late = site.client.post(
        "/buero/mitteilungen/neu", data={**ANNOUNCEMENT, "action": "planen", "csrf_token": token}
    )
    assert (late.status_code, late.headers["location"]) == (303, "/buero/anmelden")
    with _db(project) as db:
        assert db.execute("SELECT count(*) FROM items WHERE kind = 'announcement'").fetchone() == (
            0,
        )
    again = _login(site, next="/buero/abonnenten?status=held")
    assert again.headers["location"] == "/buero/abonnenten?status=held"
    assert len(_audit(project, "login")) == 2


def _client_from(site: Web, address: str) -> httpx.Client:
    """A client whose connections come from another loopback address (another office PC)."""
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=site.base, transport=transport, follow_redirects=False)


def _login_as(site: Web, client: httpx.Client, name: str, password: str) -> httpx.Response:
    token = site.csrf("/buero/anmelden", client)
    data = {"name": name, "password": password, "csrf_token": token}
    return client.post("/buero/anmelden", data=data)


def test_guessing_is_throttled_per_address_and_never_locks_the_office_out(
    web: Callable[..., Web], project: Project
) -> None:
    # A first wait of 5 s (2 s by default): long enough that the next attempt comes within it
    # on a busy machine, short enough to wait out below.
    site = _start(web, project, {"web": {"login_max_failures": 3, "login_first_wait_seconds": 5}})
    statuses = [_login(site, f"falsch-{i}-falsch").status_code for i in range(3)]
    assert statuses == [401, 401, 401]
    # The guesser's address now waits (5 s after the third failure): the right password is not
    # even checked from there, and no session is made.
    throttled = _login(site)
    assert throttled.status_code == 429, throttled.text
    assert "Zu viele fehlgeschlagene Anmeldungen" in throttled.text
    assert 1 <= int(throttled.headers["retry-after"]) <= 5
    assert site.client.get("/buero").status_code == 303
    # The office, at another address, logs in at once: nobody can keep it out by guessing.
    with _client_from(site, "127.0.0.2") as office:
        assert _login_as(site, office, USER, PASSWORD).status_code == 303
        assert office.get("/buero").status_code == 200
    # After the wait the right password works from the guesser's address too, and resets it.
    time.sleep(5.1)
    assert _login(site).status_code == 303
    with _db(project) as db:
        stored = db.execute("SELECT key FROM login_throttle").fetchall()
    # Hashes only: neither the address nor the name typed is stored.
    assert stored and all(re.fullmatch(r"[0-9a-f]{64}", key) for (key,) in stored)


def test_unknown_names_are_answered_and_throttled_like_real_ones(
    web: Callable[..., Web], project: Project
) -> None:
    # A first wait of a minute: the third attempt comes within it however slow the machine is.
    site = _start(web, project, {"web": {"login_max_failures": 2, "login_first_wait_seconds": 60}})
    answers: dict[str, list[tuple[int, str]]] = {}
    for name, address in ((USER, "127.0.0.3"), ("niemand", "127.0.0.4")):
        with _client_from(site, address) as client:
            answers[name] = []
            for i in range(3):
                reply = _login_as(site, client, name, f"falsch-{i}-falsch")
                error = re.search(r'id="fehler">.*?<p>(.*?)</p>', reply.text, re.S)
                text = re.sub(r"\d\d:\d\d:\d\d", "…", error.group(1) if error else "")
                answers[name].append((reply.status_code, text.strip()))
    assert [status for status, _ in answers[USER]] == [401, 401, 429]
    assert answers["niemand"] == answers[USER]
    assert answers[USER][0][1] == "Name oder Passwort ist nicht richtig."


def test_announcement_compose_preview_schedule_edit_deliver_cancel(
    web: Callable[..., Web], project: Project
) -> None:
    project.smtp.refuse["maria.lenz@og-pruem.example"] = "550 5.1.1 Postfach unbekannt"
    site = _start(web, project)
    _login(site)
    form = "/buero/mitteilungen/neu"

    preview = _post(site, form, {**ANNOUNCEMENT, "action": "vorschau"})
    assert preview.status_code == 200, preview.text
    # The audience, as `notifier announce --dry-run` counts it.
    file = project.write(
        "kuemmerer.md",
        '+++\nsubject = "Kümmerer"\ntopics = ["mobilitaet"]\nsend_at = "now"\n+++\nText\n',
    )
    dry = project.cli("announce", file, "--dry-run").output
    total = re.search(r"Empfänger: (\d+)", dry)
    assert total is not None and total.group(1) == "6"
    assert "<strong>6</strong> Personen erhalten diese Mitteilung" in preview.text
    assert "<td>Bürgermeister/innen</td><td>3</td>" in preview.text
    assert "<td>Ortsgemeinde</td><td>2</td>" in preview.text
    frame = re.search(r'src="(/buero/vorschau/[^"]+)" sandbox', preview.text)
    assert frame is not None
    html = site.client.get(frame.group(1))
    assert html.status_code == 200
    assert html.headers["content-security-policy"].startswith("default-src 'none'")
    assert "Digitale Kümmerer: neue Sprechstunden" in html.text
    assert "<strong>Montag</strong>" in html.text
    # The text part: the Markdown as readable text (issue 15, item 8).
    assert "Ab Montag beraten die Kümmerer auch in Prüm." in preview.text
    # The frame belongs to the session that made it.
    assert httpx.get(site.url(frame.group(1))).status_code == 303
    with _db(project) as db:
        assert db.execute("SELECT count(*) FROM items").fetchone() == (0,)
    # A test the server refuses is reported with its reply.
    project.smtp.refuse[EMAIL] = "550 5.7.1 Nicht erlaubt"
    refused = _post(site, form, {**ANNOUNCEMENT, "action": "test"})
    assert "Die Test-E-Mail wurde nicht angenommen: 550 5.7.1 Nicht erlaubt" in refused.text
    assert project.smtp.messages() == []

    scheduled = _post(
        site, form, {**ANNOUNCEMENT, "send_at": _later(), "important": "1", "action": "planen"}
    )
    assert scheduled.status_code == 303
    detail_path = scheduled.headers["location"].split("?")[0]
    item_id = int(detail_path.rsplit("/", 1)[1])
    detail = site.client.get(scheduled.headers["location"])
    assert "Die Mitteilung ist geplant" in detail.text and ">geplant<" in detail.text
    assert "<dd>der ganze Kreis</dd>" in detail.text
    stored = site.client.get(f"{detail_path}/email")
    assert stored.status_code == 200, stored.text
    assert stored.headers["content-security-policy"].startswith("default-src 'none'")
    assert "Digitale Kümmerer: neue Sprechstunden" in stored.text
    assert f'src="{detail_path}/email" sandbox' in detail.text
    assert "<strong>6</strong> Personen erhalten" in detail.text
    with _db(project) as db:
        assert db.execute(
            "SELECT status, created_by, important FROM items WHERE id = ?", (item_id,)
        ).fetchone() == ("scheduled", "office:buero", 1)

    # Edit until sent: a new subject, and "now" (empty time) releases it.
    edit = f"{detail_path}/bearbeiten"
    page = site.client.get(edit)
    assert page.status_code == 200 and "Digitale Kümmerer: neue Sprechstunden" in page.text
    changed = _post(
        site,
        edit,
        {
            **ANNOUNCEMENT,
            "subject": "Kümmerer: Sprechstunden ab Montag",
            "important": "1",
            "action": "planen",
        },
    )
    assert changed.status_code == 303
    messages = project.smtp.wait_for(5)
    assert {m.message["Subject"] for m in messages} == {"Kümmerer: Sprechstunden ab Montag"}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        state = site.client.get(detail_path)
        if (
            "<strong>1</strong> fehlgeschlagen" in state.text
            and "<strong>5</strong> versandt" in state.text
        ):
            break
        time.sleep(0.2)
    assert "<strong>5</strong> versandt" in state.text, state.text
    assert "550 Postfach unbekannt" in state.text or "550 5.1.1 Postfach unbekannt" in state.text
    assert "maria.lenz@og-pruem.example" in state.text
    assert ">versendet<" in state.text
    assert site.client.get(edit).status_code == 409
    late = _post(site, edit, {**ANNOUNCEMENT, "action": "planen"}, form=detail_path)
    assert late.status_code == 409 and "kann nicht mehr geändert werden" in late.text

    # Cancel another one before it is sent; cancelling again is refused.
    other = _post(site, form, {**ANNOUNCEMENT, "send_at": _later(2), "action": "planen"})
    other_path = other.headers["location"].split("?")[0]
    cancelled = _post(site, f"{other_path}/absagen", {}, form=other_path)
    assert cancelled.status_code == 303
    assert ">abgesagt<" in site.client.get(other_path).text
    assert _post(site, f"{other_path}/absagen", {}, form=other_path).status_code == 409

    listing = site.client.get("/buero/mitteilungen")
    assert "Kümmerer: Sprechstunden ab Montag" in listing.text and "versandt 5" in listing.text
    assert _audit(project, "announcement.scheduled") == [
        ("office:buero", str(item_id)),
        ("office:buero", other_path.rsplit("/", 1)[1]),
    ]
    assert _audit(project, "announcement.edited") == [("office:buero", str(item_id))]
    assert _audit(project, "announcement.cancelled") == [
        ("office:buero", other_path.rsplit("/", 1)[1])
    ]


def test_office_forms_refuse_forgery_and_header_injection(
    web: Callable[..., Web], project: Project
) -> None:
    site = _start(web, project)
    # The login form itself needs its token.
    assert (
        site.client.post("/buero/anmelden", data={"name": USER, "password": PASSWORD}).status_code
        == 403
    )
    _login(site)
    form = "/buero/mitteilungen/neu"
    with _db(project) as db:
        sub_id, name = db.execute(
            "SELECT id, name FROM subscribers WHERE email = 'peter.meyer@bitburg.example'"
        ).fetchone()
    planned = _post(site, form, {**ANNOUNCEMENT, "send_at": _later(), "action": "planen"})
    item_path = planned.headers["location"].split("?")[0]

    # No token, or a wrong one: 403 and nothing changes.
    forged = [
        (form, {**ANNOUNCEMENT, "action": "planen"}),
        (f"{item_path}/bearbeiten", {**ANNOUNCEMENT, "subject": "Gefälscht", "action": "planen"}),
        (f"{item_path}/absagen", {}),
        (f"/buero/abonnenten/{sub_id}", {"name": "Gefälscht"}),
        (f"/buero/abonnenten/{sub_id}/status", {"status": "unsubscribed"}),
        ("/buero/abmelden", {}),
    ]
    for path, data in forged:
        for token in ({}, {"csrf_token": "falsch"}):
            answer = site.client.post(path, data={**data, **token})
            assert answer.status_code == 403, path
            assert "Das Formular ist abgelaufen" in answer.text
    upload = site.client.post(
        "/buero/abonnenten/import",
        files={"file": ("a.csv", b"email,name,role,organisation,topics,rhythm\n")},
    )
    assert upload.status_code == 403
    with _db(project) as db:
        assert db.execute("SELECT count(*), min(subject), min(status) FROM items").fetchone() == (
            1,
            ANNOUNCEMENT["subject"],
            "scheduled",
        )
        assert db.execute(
            "SELECT name, status FROM subscribers WHERE id = ?", (sub_id,)
        ).fetchone() == (name, "active")
    assert site.client.get("/buero").status_code == 200  # still logged in

    # Line breaks in anything that reaches a header are refused with a German field error.
    for subject in (
        "Hallo\r\nBcc: alle@example.org",
        "Hallo\nBcc: x@example.org",
        "A\rB",
        "A\x00B",
    ):
        for action in ("vorschau", "test", "planen"):
            answer = _post(site, form, {**ANNOUNCEMENT, "subject": subject, "action": action})
            assert answer.status_code == 422, (subject, action)
            assert "Betreff: Darf keine Zeilenumbrüche oder Steuerzeichen enthalten." in answer.text
    edited = _post(
        site,
        f"{item_path}/bearbeiten",
        {**ANNOUNCEMENT, "subject": "X\r\nBcc: y@example.org", "action": "planen"},
    )
    assert edited.status_code == 422
    subscriber_form = {
        "email": "peter.meyer@bitburg.example",
        "name": name,
        "organisation": "Bitburg",
        "role": "mayor",
        "rhythm": "immediate",
        "all_topics": "1",
    }
    for change, label in (
        ({"name": "Peter\r\nBcc: alle@example.org"}, "Name: Darf keine Zeilenumbrüche"),
        ({"email": "p@bitburg.example\r\nBcc: x@example.org"}, "E-Mail-Adresse: Die E-Mail"),
        ({"email": "kein-at-zeichen"}, "E-Mail-Adresse: Keine gültige E-Mail-Adresse"),
        ({"organisation": "Atlantis"}, "Organisation: Keine Einheit heißt „Atlantis“"),
        ({"all_topics": "", "topics": ["unbekannt"]}, "Themen: Unbekannte Themen: unbekannt"),
    ):
        path = f"/buero/abonnenten/{sub_id}"
        answer = _post(site, path, {**subscriber_form, **change})
        assert answer.status_code == 422, change
        assert label in answer.text, answer.text
    with _db(project) as db:
        assert db.execute("SELECT subject FROM items").fetchall() == [(ANNOUNCEMENT["subject"],)]
        assert db.execute(
            "SELECT name, email FROM subscribers WHERE id = ?", (sub_id,)
        ).fetchone() == (name, "peter.meyer@bitburg.example")
    assert project.smtp.messages() == []
    # Other fields are checked too, each named.
    bad = _post(
        site,
        form,
        {
            **ANNOUNCEMENT,
            "subject": "",
            "body": "",
            "topics": ["gibt-es-nicht"],
            "scope": ["99999"],
            "roles": ["king"],
            "send_at": "gestern",
            "action": "vorschau",
        },
    )
    assert bad.status_code == 422
    for text in (
        "Betreff: Bitte ausfüllen.",
        "Text: Bitte einen Text schreiben.",
        "Themen: Unbekannte Themen: gibt-es-nicht",
        "Empfängerkreis: Unbekannte Einheiten: 99999",
        "Funktionen: Unbekannte Funktionen: king",
        "Versandzeitpunkt: Bitte Datum und Uhrzeit angeben",
    ):
        assert text in bad.text, text
    past = _post(site, form, {**ANNOUNCEMENT, "send_at": "2020-01-01T09:00", "action": "planen"})
    assert "Versandzeitpunkt: Der Zeitpunkt liegt in der Vergangenheit." in past.text


def test_subscribers_search_edit_approve_deactivate_import_export(
    web: Callable[..., Web], project: Project
) -> None:
    site = _start(web, project)
    _login(site)
    with _db(project) as db:
        db.execute(
            "UPDATE subscribers SET status = 'held' "
            "WHERE email = 'josef.thiel@og-schoenecken.example'"
        )
        ids = dict(db.execute("SELECT email, id FROM subscribers").fetchall())

    def listed(**query: str) -> set[str]:
        answer = site.client.get("/buero/abonnenten", params=query)
        assert answer.status_code == 200
        return set(re.findall(r'/buero/abonnenten/\d+">([^<]+)</a>', answer.text))

    assert listed(q="BITBURG.example") == {
        "peter.meyer@bitburg.example",
        "claudia.wagner@bitburg.example",
    }
    assert listed(organisation="Verbandsgemeinde Prüm") == {
        "thomas.becker@vg-pruem.example",
        "josef.thiel@og-schoenecken.example",
        "maria.lenz@og-pruem.example",
    }
    assert listed(organisation="Verbandsgemeinde Prüm", role="mayor") == {
        "thomas.becker@vg-pruem.example",
        "josef.thiel@og-schoenecken.example",
    }
    assert "maria.lenz@og-pruem.example" in listed(topic="mobilitaet")
    assert "julia.hoffmann@vg-arzfeld.example" not in listed(topic="mobilitaet")
    assert listed(status="held") == {"josef.thiel@og-schoenecken.example"}
    assert listed(q="%") == set()  # a wildcard is searched for literally
    assert "1 Anmeldung wartet auf Freigabe" in site.client.get("/buero").text

    # Approve the held one from the list; pause, resume and deactivate another.
    josef = ids["josef.thiel@og-schoenecken.example"]
    approved = _post(
        site,
        f"/buero/abonnenten/{josef}/status",
        {"status": "active", "back": "liste"},
        form="/buero/abonnenten?status=held",
    )
    assert approved.status_code == 303
    peter = ids["peter.meyer@bitburg.example"]
    path = f"/buero/abonnenten/{peter}"
    for status in ("paused", "active", "unsubscribed"):
        assert _post(site, f"{path}/status", {"status": status}, form=path).status_code == 303
    refused = _post(site, f"{path}/status", {"status": "paused"}, form=path)
    assert refused.status_code == 409 and "kann nicht zu" in refused.text
    with _db(project) as db:
        assert db.execute(
            "SELECT email, status FROM subscribers WHERE id IN (?, ?) ORDER BY email",
            (josef, peter),
        ).fetchall() == [
            ("josef.thiel@og-schoenecken.example", "active"),
            ("peter.meyer@bitburg.example", "unsubscribed"),
        ]
    assert [a for a, _ in _audit(project, "subscriber.approved")] == ["office:buero"]
    assert _audit(project, "subscriber.deactivated") == [("office:buero", str(peter))]

    # Edit: name, organisation, role, topics, rhythm.
    maria = ids["maria.lenz@og-pruem.example"]
    saved = _post(
        site,
        f"/buero/abonnenten/{maria}",
        {
            "email": "Maria.Lenz@og-pruem.example",
            "name": "Maria Lenz-Schmitt",
            "organisation": "Schönecken (Verbandsgemeinde Prüm)",
            "role": "mayor",
            "rhythm": "weekly",
            "topics": ["versorgung", "mobilitaet"],
        },
    )
    assert saved.status_code == 303
    assert "Die Änderungen sind gespeichert." in site.client.get(saved.headers["location"]).text
    with _db(project) as db:
        row = db.execute(
            "SELECT s.email, s.name, o.name, s.role, s.rhythm, s.all_topics, "
            "group_concat(t.topic_key) FROM subscribers s JOIN organisations o "
            "ON o.id = s.organisation_id JOIN subscriptions t ON t.subscriber_id = s.id "
            "WHERE s.id = ? GROUP BY s.id",
            (maria,),
        ).fetchone()
    assert row[:6] == (
        "maria.lenz@og-pruem.example",
        "Maria Lenz-Schmitt",
        "Schönecken",
        "mayor",
        "weekly",
        0,
    )
    assert sorted(row[6].split(",")) == ["mobilitaet", "versorgung"]
    taken = _post(
        site,
        f"/buero/abonnenten/{maria}",
        {
            "email": "thomas.becker@vg-pruem.example",
            "name": "Maria",
            "organisation": "Prüm (Verbandsgemeinde Prüm)",
            "role": "mayor",
            "rhythm": "weekly",
            "all_topics": "1",
        },
    )
    assert taken.status_code == 422 and "Diese Adresse hat schon ein anderer Eintrag." in taken.text

    # Import by upload: the same checks and row-by-row report as the command line.
    bad = (
        "email,name,role,organisation,topics,rhythm\n"
        "neu@og.example,Neu,mayor,Speicher,,immediate\n"
        "kaputt,Ohne Adresse,mayor,Speicher,,immediate\n"
        "zwei@og.example,Zwei,kaiser,Atlantis,,sometimes\n"
        'drei@og.example,"Eve\nBcc: alle@example.org",mayor,Speicher,,immediate\n'
    )
    file = project.write("schlecht.csv", bad)
    cli = project.cli("subscribers", "import", file, ok=False)
    assert cli.exit_code == 1
    reasons = re.findall(r"Zeile (\d+), Spalte '(\w+)': (.+)", cli.output)
    assert len(reasons) == 5
    answer = site.client.post(
        "/buero/abonnenten/import",
        data={"csrf_token": site.csrf("/buero/abonnenten/import")},
        files={"file": ("schlecht.csv", bad.encode())},
    )
    assert answer.status_code == 422
    assert "5 Fehler in schlecht.csv: nichts wurde gespeichert." in answer.text
    for line, column, reason in reasons:
        escaped = reason.replace("'", "&#39;").replace('"', "&#34;")
        assert f"<td>{line}</td><td>{column}</td><td>{escaped}</td>" in answer.text, reason
    good = "email,name,role,organisation,topics,rhythm\nneu@og.example,Neu,mayor,Speicher,,daily\n"
    for dry_run, expected in (("1", 0), ("", 1)):
        token = site.csrf("/buero/abonnenten/import")
        done = site.client.post(
            "/buero/abonnenten/import",
            data={"csrf_token": token, "dry_run": dry_run},
            files={"file": ("gut.csv", good.encode("cp1252"))},
        )
        assert done.status_code == 200 and "1 neu" in done.text
        with _db(project) as db:
            assert db.execute(
                "SELECT count(*) FROM subscribers WHERE email = 'neu@og.example'"
            ).fetchone() == (expected,)
    assert _audit(project, "subscriber.imported")[-1][0] == "office:buero"

    export = site.client.get("/buero/abonnenten/export.csv")
    assert export.status_code == 200
    assert export.headers["content-type"] == "text/csv; charset=utf-8"
    assert export.headers["content-disposition"].startswith('attachment; filename="abonnenten-')
    lines = export.text.splitlines()
    assert lines[0] == "email,name,role,organisation,topics,rhythm"
    assert any(
        line.startswith("neu@og.example,Neu,mayor,") and line.endswith(",,daily") for line in lines
    )
    assert not any(line.startswith("peter.meyer@") for line in lines)  # deactivated

    # Formulas are neutralised (OWASP), in both forms; the Excel form is ;-separated with a BOM.
    with _db(project) as db:
        db.execute(
            "UPDATE subscribers SET name = '=HYPERLINK(\"x\")' WHERE email = 'neu@og.example'"
        )
    listing = site.client.get("/buero/abonnenten").text
    assert 'href="/buero/abonnenten/export.csv?excel=1">Für Excel herunterladen</a>' in listing
    plain = site.client.get("/buero/abonnenten/export.csv").text
    assert 'neu@og.example,"\'=HYPERLINK(""x"")",mayor,' in plain
    excel = site.client.get("/buero/abonnenten/export.csv", params={"excel": "1"})
    assert excel.status_code == 200
    assert "-excel.csv" in excel.headers["content-disposition"]
    assert excel.content.startswith(b"\xef\xbb\xbfemail;name;role;organisation;topics;rhythm\r\n")
    assert '\r\nneu@og.example;"\'=HYPERLINK(""x"")";mayor;' in excel.content.decode("utf-8-sig")


def test_umlauts_before_the_at_are_refused_everywhere_and_domains_shown_in_unicode(
    web: Callable[..., Web], project: Project
) -> None:
    """Sign-up form, JSON API, the office's upload and form refuse an address that cannot be
    sent without SMTPUTF8, with a German reason; an international domain is stored IDNA-encoded
    and shown in Unicode."""
    site = _start(web, project)
    umlaut = "Umlaute und andere Sonderzeichen sind vor dem @ nicht möglich (ü)"
    domain = "bürgermeister.de".encode("idna").decode("ascii")

    signup = site.client.post(
        "/anmelden",
        data={
            "email": "jürgen@og-bettingen.example",
            "name": "Jürgen Weber",
            "organisation": "Bettingen (Verbandsgemeinde Bitburger Land)",
            "role": "mayor",
            "rhythm": "weekly",
            "all_topics": "1",
            "consent": "1",
            "csrf_token": site.csrf("/anmelden"),
        },
    )
    assert signup.status_code == 422
    assert f"E-Mail-Adresse: {umlaut}" in signup.text
    assert "z. B. juergen@og-bettingen.example" in signup.text

    token = project.cli("tokens", "add", "crm").output.splitlines()[0]
    with httpx.Client(
        base_url=site.url("/api/v1"), headers={"Authorization": f"Bearer {token}"}, timeout=15
    ) as api:
        person = {"name": "Jürgen", "organisation": "Speicher", "role": "mayor"}
        refused = api.post("/subscribers", json={**person, "email": "jürgen@og.example"})
        assert refused.status_code == 422, refused.text
        [error] = refused.json()["detail"]
        assert error["loc"][-1] == "email" and error["msg"].startswith(umlaut)
        without_at = api.post("/subscribers", json={**person, "email": "jürgen"})
        assert without_at.json()["detail"][0]["msg"] == (
            "Keine gültige E-Mail-Adresse: das @-Zeichen fehlt."
        )
        added = api.post("/subscribers", json={**person, "email": "Info@Bürgermeister.de"})
        assert added.status_code == 201, added.text
        assert added.json()["email"] == f"info@{domain}"
        sub_id = added.json()["id"]

    _login(site)
    listed = site.client.get("/buero/abonnenten", params={"q": "info@"})
    assert f'/buero/abonnenten/{sub_id}">info@bürgermeister.de</a>' in listed.text
    detail = site.client.get(f"/buero/abonnenten/{sub_id}")
    assert "<p>info@bürgermeister.de · Status" in detail.text
    assert 'value="info@bürgermeister.de"' in detail.text
    form = {
        "email": "jürgen@bürgermeister.de",
        "name": "Jürgen",
        "organisation": "Bitburg",
        "role": "mayor",
        "rhythm": "immediate",
        "all_topics": "1",
    }
    edited = _post(site, f"/buero/abonnenten/{sub_id}", form)
    assert edited.status_code == 422 and f"E-Mail-Adresse: {umlaut}" in edited.text
    # Saving the form as shown keeps the stored IDNA form.
    saved = _post(site, f"/buero/abonnenten/{sub_id}", {**form, "email": "info@bürgermeister.de"})
    assert saved.status_code == 303

    upload = site.client.post(
        "/buero/abonnenten/import",
        data={"csrf_token": site.csrf("/buero/abonnenten/import")},
        files={
            "file": (
                "umlaute.csv",
                "email,name,role,organisation,topics,rhythm\n"
                "neu@og.example,Neu,mayor,Speicher,,daily\n"
                "jürgen@og.example,Jürgen,mayor,Speicher,,daily\n".encode(),
            )
        },
    )
    assert upload.status_code == 422
    assert "1 Fehler in umlaute.csv: nichts wurde gespeichert." in upload.text
    assert f"<td>3</td><td>email</td><td>&#39;jürgen@og.example&#39;: {umlaut}" in upload.text
    with _db(project) as db:
        emails = dict(db.execute("SELECT id, email FROM subscribers").fetchall())
    assert emails[sub_id] == f"info@{domain}"
    assert all(e.isascii() and not e.endswith("@og.example") for e in emails.values())
