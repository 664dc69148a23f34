"""The public pages over HTTP against a real ``notifier run``: sign-up with double opt-in,
preferences through the personal link, one-click unsubscribe (RFC 8058), and the security of
links and forms."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import httpx

from .conftest import Project, Web

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
    assert message["List-Unsubscribe"] is None  # not subscribed yet
    text = message.get_body(("plain",)).get_content()
    confirm = site.link(text, "bestaetigen")

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
