"""The public journey in a real browser (Debian's chromium via Playwright): sign up, confirm
with the link from the built-in mail catcher, change preferences, unsubscribe with one click;
every page passes axe-core without serious or critical violations."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from notifier.catcher import MailStore

from .browser import assert_accessible, browser_page
from .conftest import Project, Web

__all__ = ["browser_page"]


def _catcher_mail(project: Project, web: Web, subject: str) -> str:
    store = MailStore(project.root / "var" / "mails")
    for _ in range(200):
        for mail in store.list():
            message = mail.message()
            if message["Subject"] == subject:
                body = message.get_body(("plain",))
                assert body is not None
                text: str = body.get_content()
                return text
        time.sleep(0.05)
    raise AssertionError(f"no mail {subject!r} in the catcher:\n{web.running.output}")


def test_sign_up_to_unsubscribe_in_a_browser(
    web: Callable[..., Web], project: Project, browser_page: Any
) -> None:
    page = browser_page
    site = web({"smtp": {"catcher": True}, "catcher": {"directory": "var/mails"}})
    page.goto(site.url("/anmelden"))
    assert page.locator("html").get_attribute("lang") == "de"
    assert_accessible(page, "Anmeldung")

    # Sent empty: the page names every missing field and stays accessible.
    page.get_by_role("button", name="Anmelden").click()
    assert page.get_by_role("heading", name="Bitte prüfen Sie Ihre Angaben").is_visible()
    assert_accessible(page, "Anmeldung mit Fehlern")

    page.get_by_label("E-Mail-Adresse").fill("erika@og-bettingen.example")
    page.get_by_label("Name", exact=True).fill("Erika Musterfrau")
    page.get_by_label("Organisation").fill("Bettingen (Verbandsgemeinde Bitburger Land)")
    page.get_by_label("Funktion").select_option("mayor")
    page.get_by_label("Mobilität").check()  # the script selects "Nur diese Themen"
    assert page.get_by_label("Nur diese Themen:").is_checked()
    page.get_by_label("wöchentlich", exact=False).check()
    page.locator("#consent").check()
    page.get_by_role("button", name="Anmelden").click()
    assert page.get_by_role(
        "heading", name=re.compile("Bitte prüfen Sie Ihr Postfach")
    ).is_visible()
    assert_accessible(page, "Anmeldung abgeschickt")

    text = _catcher_mail(
        project, site, "Bitte bestätigen Sie Ihre Anmeldung bei EIFELKREIS VERBINDET"
    )
    page.goto(site.url(site.link(text, "bestaetigen")))
    assert_accessible(page, "Bestätigung")
    page.get_by_role("button", name="Anmeldung bestätigen").click()
    assert page.get_by_role("heading", name=re.compile("bestätigt")).is_visible()
    assert_accessible(page, "Bestätigt")

    page.get_by_role("link", name=re.compile("Meine Einstellungen")).click()
    assert page.get_by_role("heading", name="Meine Einstellungen").is_visible()
    assert_accessible(page, "Einstellungen")
    page.get_by_label("Versorgung").check()
    page.get_by_label("täglich", exact=False).check()
    page.get_by_role("button", name="Speichern").click()
    assert page.get_by_role("status").inner_text() == "Ihre Einstellungen sind gespeichert."
    with sqlite3.connect(project.root / "var" / "test.db") as db:
        rhythm, topics = db.execute(
            "SELECT rhythm, group_concat(topic_key) FROM subscribers s "
            "JOIN subscriptions t ON t.subscriber_id = s.id WHERE email = ?",
            ("erika@og-bettingen.example",),
        ).fetchone()
    assert rhythm == "daily" and sorted(topics.split(",")) == ["mobilitaet", "versorgung"]

    # Keyboard only: Tab reaches the skip link first, and it leads to the content.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Zum Inhalt springen"

    page.get_by_role("link", name="Keine E-Mails mehr erhalten").click()
    assert_accessible(page, "Abmelden")
    page.get_by_role("button", name="Jetzt abmelden").click()
    assert page.get_by_role("heading", name="Sie sind abgemeldet").is_visible()
    assert_accessible(page, "Abgemeldet")

    # On a phone: the sign-up form fits the screen (no sideways scrolling) and stays usable.
    page.set_viewport_size({"width": 360, "height": 740})
    page.goto(site.url("/anmelden"))
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    box = page.get_by_label("E-Mail-Adresse").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360
    assert_accessible(page, "Anmeldung auf dem Telefon")
    with sqlite3.connect(project.root / "var" / "test.db") as db:
        assert db.execute(
            "SELECT status FROM subscribers WHERE email = 'erika@og-bettingen.example'"
        ).fetchone() == ("unsubscribed",)
