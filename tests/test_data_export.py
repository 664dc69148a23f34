"""Access and portability (DSGVO art. 15, 20) against a real ``notifier run``: a person's own
export through the personal link (JSON file and page), the office's download for a request by
letter, ``GET /api/v1/subscribers/{id}/export``; and the provenance every way in records."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import httpx
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from notifier.links import secret_key

from .bouncemail import dsn
from .conftest import Project, Web

USER, PASSWORD = "buero", "ein-langes-passwort"
ERIKA = "erika.musterfrau@og-bettingen.example"
SIGNUP = {
    "email": ERIKA,
    "name": "Erika Musterfrau",
    "organisation": "Bettingen (Verbandsgemeinde Bitburger Land)",
    "role": "mayor",
    "topics": ["mobilitaet"],
    "rhythm": "immediate",
    "consent": "1",
}


def _db(project: Project) -> sqlite3.Connection:
    return sqlite3.connect(project.root / "var" / "test.db")


def _wait(check: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _provenance(project: Project, email: str) -> tuple[str, str, str]:
    with _db(project) as db:
        row = db.execute(
            "SELECT basis, source, actor FROM subscribers WHERE email = ?", (email,)
        ).fetchone()
    assert row is not None, email
    return row[0], row[1], row[2]


def _login(site: Web, client: httpx.Client | None = None) -> None:
    client = client or site.client
    token = site.csrf("/buero/anmelden", client)
    done = client.post(
        "/buero/anmelden", data={"name": USER, "password": PASSWORD, "csrf_token": token}
    )
    assert done.status_code == 303, done.text


def _sign_up_and_confirm(site: Web, project: Project) -> str:
    """Erika signs up and confirms; returns the path of her preferences page."""
    answer = site.client.post("/anmelden", data={**SIGNUP, "csrf_token": site.csrf("/anmelden")})
    assert answer.status_code == 200, answer.text
    [mail] = project.smtp.wait_for(1)
    confirm = site.link(mail.message.get_body(("plain",)).get_content(), "bestaetigen")
    done = site.client.post(confirm, data={"csrf_token": site.csrf(confirm)})
    assert done.status_code == 200 and "Ihre Anmeldung ist bestätigt" in done.text
    return site.link(done.text, "einstellungen")


def _old_token(project: Project, subscriber_id: int) -> str:
    """A personal link signed 400 days ago ([web] link_days is 365)."""

    class Old(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - 400 * 86400

    signer = URLSafeTimedSerializer(
        secret_key(project.settings), salt="notifier-personal", signer=Old
    )
    return str(signer.dumps([subscriber_id, 0]))


def test_a_person_sees_and_downloads_everything_stored_about_them(
    web: Callable[..., Web], project: Project
) -> None:
    site = web()
    preferences = _sign_up_and_confirm(site, project)
    announcement = project.write(
        "a.md", '+++\nsubject = "Ladesäulen in Prüm"\nsend_at = "now"\n+++\nZwei neue Säulen.\n'
    )
    project.cli("announce", announcement)
    with _db(project) as db:
        erika = db.execute("SELECT id FROM subscribers WHERE email = ?", (ERIKA,)).fetchone()[0]

    def sent() -> bool:
        with _db(project) as db:
            return db.execute(
                "SELECT state FROM outbox WHERE subscriber_id = ? AND item_id IS NOT NULL",
                (erika,),
            ).fetchone() == ("sent",)

    _wait(sent)
    [told] = [
        m
        for m in project.smtp.messages()
        if ERIKA in m.rcpt_tos and "Ladesäulen" in str(m.message["Subject"])
    ]
    # Her mailbox was full for a while: a delivery report came back (a soft bounce).
    report = dsn(told.mail_from, ERIKA, "4.2.2", str(told.message["Message-ID"]))
    project.cli("bounces", "feed", project.write("voll.eml", report.decode()))

    # The preferences page links to the download and the page (loaded only on demand: the
    # preferences page is what a click storm asks for); the page shows it all.
    page = site.client.get(preferences)
    assert page.status_code == 200
    assert "Ihre gespeicherten Daten" in page.text
    assert f"{preferences}/daten.json" in page.text and f'"{preferences}/daten"' in page.text
    page = site.client.get(f"{preferences}/daten")
    assert page.status_code == 200
    for shown in (
        "Ihre gespeicherten Daten",
        "Einwilligung (Art. 6 Abs. 1 Buchst. a DSGVO)",
        "eigene Anmeldung auf der Website",
        "Ich willige ein, dass der Eifelkreis",
        "127.0.0.1",
        "Mitteilung: Ladesäulen in Prüm",
        "Bestätigung der Anmeldung",
        "versandt",
        "Anmeldung bestätigt",
        "Zurückgekommene Nachrichten",
        "weicher Fehler",
        f"{preferences}/daten.json",
    ):
        assert shown in page.text, shown

    download = site.client.get(f"{preferences}/daten.json")
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/json; charset=utf-8"
    assert download.headers["content-disposition"].startswith(
        f'attachment; filename="daten-{erika}-'
    )
    assert download.headers["cache-control"] == "no-store"
    doc = download.json()
    assert (doc["format"], doc["version"]) == ("notifier-personal-data", 1)
    assert doc["subscriber"]["email"] == ERIKA and doc["subscriber"]["status"] == "active"
    [bounce] = doc["bounces"]
    assert (bounce["kind"], bounce["status"], bounce["address"]) == ("soft", "4.2.2", ERIKA)
    assert doc["subscriber"]["topics"] == [{"key": "mobilitaet", "title": "Mobilität"}]
    assert doc["subscriber"]["organisation"]["name"] == "Bettingen"
    assert doc["provenance"] == {
        "basis": "consent",
        "basis_text": "Einwilligung (Art. 6 Abs. 1 Buchst. a DSGVO)",
        "source": "signup",
        "actor": "web",
    }
    [consent] = doc["consents"]
    assert consent["ip"] == "127.0.0.1" and consent["text_version"] == "2026-11"
    assert consent["confirmed_at"] is not None and consent["requested_at"] is not None
    kinds = {(m["kind"], m["subject"], m["state"]) for m in doc["messages"]}
    assert ("announcement", "Ladesäulen in Prüm", "sent") in kinds
    assert ("confirmation", None, "sent") in kinds
    assert all(m["sent_at"] for m in doc["messages"] if m["state"] == "sent")
    assert [a["action"] for a in doc["audit"]][:2] == ["signup", "confirm"]
    assert doc["briefing_queue"] == []

    html = site.client.get(f"{preferences}/daten")
    assert html.status_code == 200 and "<h1>Meine Daten</h1>" in html.text
    assert "Ladesäulen in Prüm" in html.text and "daten.json" in html.text
    with _db(project) as db:
        exported = db.execute(
            "SELECT actor, details FROM audit_log WHERE action = 'subscriber.exported' "
            "AND entity_id = ? ORDER BY id",
            (str(erika),),
        ).fetchall()
    assert [(a, json.loads(d)["format"]) for a, d in exported] == [
        ("web", "html"),
        ("web", "json"),
        ("web", "html"),
    ]

    # A forged or damaged link: the German 404 page; an old one: 410. No data either way.
    token = preferences.rsplit("/", 1)[1]
    payload, stamp, signature = token.split(".")
    forged = ".".join([payload, stamp, signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")])
    for bad in (forged, "garbage"):
        for suffix in ("/daten", "/daten.json"):
            answer = site.client.get(f"/einstellungen/{bad}{suffix}")
            assert answer.status_code == 404, answer.text
            assert "Dieser Link ist nicht gültig" in answer.text and ERIKA not in answer.text
    old = site.client.get(f"/einstellungen/{_old_token(project, erika)}/daten.json")
    assert old.status_code == 410 and "Dieser Link ist abgelaufen" in old.text

    # The office: consent record on the person's page, the same document as a download.
    project.cli("users", "add", USER, "--email", "buero@kreis.example", "--password", PASSWORD)
    assert site.client.get(f"/buero/abonnenten/{erika}/daten.json").status_code == 303
    _login(site)
    office = site.client.get(f"/buero/abonnenten/{erika}")
    for shown in ("Einwilligung (Fassung 2026-11)", "127.0.0.1", "eigene Anmeldung"):
        assert shown in office.text, shown
    letter = site.client.get(f"/buero/abonnenten/{erika}/daten.json")
    assert letter.status_code == 200
    assert letter.headers["content-disposition"].startswith("attachment; filename=")
    by_office = letter.json()
    assert by_office["subscriber"] == doc["subscriber"] and by_office["consents"] == doc["consents"]
    assert site.client.get("/buero/abonnenten/999999/daten.json").status_code == 404

    # The API gives the same document; unknown and impossible ids as elsewhere.
    token = project.cli("tokens", "add", "crm").output.splitlines()[0]
    with httpx.Client(
        base_url=site.url("/api/v1"), headers={"Authorization": f"Bearer {token}"}, timeout=15
    ) as api:
        by_api = api.get(f"/subscribers/{erika}/export")
        assert by_api.status_code == 200, by_api.text
        assert set(by_api.json()) == set(doc)
        assert by_api.json()["messages"] == doc["messages"]
        missing = api.get("/subscribers/999999/export")
        assert missing.status_code == 404 and "Kein Abonnent Nr. 999999" in missing.text
        assert api.get(f"/subscribers/{'9' * 40}/export").status_code == 404
        assert api.get("/subscribers/abc/export").status_code == 422
    assert httpx.get(site.url(f"/api/v1/subscribers/{erika}/export")).status_code == 401
    with _db(project) as db:
        actors = db.execute(
            "SELECT actor FROM audit_log WHERE action = 'subscriber.exported' ORDER BY id"
        ).fetchall()
    assert actors[3:] == [("office:buero",), ("api:crm",)]


def test_every_way_in_records_where_a_subscriber_came_from(
    web: Callable[..., Web], project: Project
) -> None:
    site = web()  # seeds subscribers/example.csv with `notifier subscribers import`
    basis, source, actor = _provenance(project, "peter.meyer@bitburg.example")
    assert (basis, source) == ("public_task", "import")
    assert actor.startswith("cli") and actor.endswith(" (example.csv)")

    project.cli("users", "add", USER, "--email", "buero@kreis.example", "--password", PASSWORD)
    _login(site)
    csv = "email,name,role,organisation,topics,rhythm\nneu@og.example,Neu,mayor,Speicher,,daily\n"
    upload = site.client.post(
        "/buero/abonnenten/import",
        data={"csrf_token": site.csrf("/buero/abonnenten/import")},
        files={"file": ("liste-speicher.csv", csv.encode())},
    )
    assert upload.status_code == 200 and "1 neu" in upload.text
    assert _provenance(project, "neu@og.example") == (
        "public_task",
        "import",
        "office:buero (liste-speicher.csv)",
    )
    # Without the form's CSRF token nothing is imported.
    refused = site.client.post(
        "/buero/abonnenten/import",
        files={"file": ("x.csv", csv.replace("neu@", "zwei@").encode())},
    )
    assert refused.status_code == 403

    token = project.cli("tokens", "add", "crm").output.splitlines()[0]
    added = httpx.post(
        site.url("/api/v1/subscribers"),
        headers={"Authorization": f"Bearer {token}"},
        json={
            "email": "api@og.example",
            "name": "Per API",
            "organisation": "Prüm",
            "role": "staff",
        },
    )
    assert added.status_code == 201, added.text
    assert _provenance(project, "api@og.example") == ("public_task", "api", "api:crm")

    # The office's page of an imported person names basis, source and who imported.
    with _db(project) as db:
        peter = db.execute(
            "SELECT id FROM subscribers WHERE email = 'peter.meyer@bitburg.example'"
        ).fetchone()[0]
    page = site.client.get(f"/buero/abonnenten/{peter}")
    assert "Wahrnehmung einer Aufgabe im öffentlichen Interesse" in page.text
    assert "Import einer Liste durch das Projektbüro" in page.text
    assert "Import aus example.csv" in page.text and "Keine Einwilligung gespeichert." in page.text

    # Deactivated by the office and signing up again: from now on the person's own consent.
    status = site.client.post(
        f"/buero/abonnenten/{peter}/status",
        data={"status": "unsubscribed", "csrf_token": site.csrf(f"/buero/abonnenten/{peter}")},
    )
    assert status.status_code == 303
    again = {**SIGNUP, "email": "peter.meyer@bitburg.example", "name": "Peter Meyer"}
    with httpx.Client(base_url=site.base, timeout=15) as visitor:
        answer = visitor.post(
            "/anmelden", data={**again, "csrf_token": site.csrf("/anmelden", visitor)}
        )
    assert answer.status_code == 200
    assert _provenance(project, "peter.meyer@bitburg.example") == ("consent", "signup", "web")
