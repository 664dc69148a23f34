"""The office console in a real browser (Debian's chromium via Playwright): login, compose,
preview, audience, schedule, delivery to the test SMTP server, the state on the page; every
office page passes axe-core without serious or critical violations."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from .browser import assert_accessible, browser_page
from .conftest import Project, Web

__all__ = ["browser_page"]

USER, PASSWORD, EMAIL = "buero", "ein-langes-passwort", "buero@kreis.example"


def _log_in(page: Any, site: Web, password: str = PASSWORD) -> None:
    page.get_by_label("Benutzername").fill(USER)
    page.get_by_label("Passwort").fill(password)
    page.get_by_role("button", name="Anmelden").click()


def test_office_compose_preview_schedule_and_follow_in_a_browser(
    web: Callable[..., Web], project: Project, browser_page: Any
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    site = web()
    project.cli("users", "add", USER, "--email", EMAIL, "--password", PASSWORD)

    page.goto(site.url("/buero"))
    expect(page.get_by_role("heading", name="Anmeldung für das Projektbüro")).to_be_visible()
    assert page.locator("html").get_attribute("lang") == "de"
    assert_accessible(page, "Anmeldung")
    _log_in(page, site, "falsches-passwort")
    expect(page.get_by_role("alert")).to_contain_text("Name oder Passwort ist nicht richtig.")
    assert_accessible(page, "Anmeldung fehlgeschlagen")
    _log_in(page, site)
    expect(page.get_by_role("heading", name="Übersicht", exact=True)).to_be_visible()
    assert_accessible(page, "Übersicht")

    page.get_by_role("link", name="Neue Mitteilung schreiben").click()
    assert_accessible(page, "Neue Mitteilung")
    page.get_by_role("button", name="Planen").click()
    expect(page.get_by_role("heading", name="Bitte prüfen Sie Ihre Angaben")).to_be_visible()
    assert_accessible(page, "Neue Mitteilung mit Fehlern")

    page.get_by_label("Betreff").fill("Digitale Kümmerer: neue Sprechstunden")
    page.get_by_label("Text (Markdown)").fill(
        "Ab **Montag** beraten die Kümmerer auch in Prüm.\n\n- dienstags\n- donnerstags"
    )
    page.get_by_label("Mobilität").check()
    # The Kreis ticked in the tree, and the VG Prüm inside it typed: counted once.
    page.locator("#scope-baum > summary").click()
    page.get_by_label("Eifelkreis Bitburg-Prüm (der ganze Kreis)").check()
    page.get_by_label("Empfängerkreis (Organisationen)").fill("VG Prüm")
    page.get_by_label("Wichtig").check()
    page.get_by_role("button", name="Vorschau und Empfänger anzeigen").click()
    expect(page.get_by_role("heading", name="Vorschau")).to_be_visible()
    assert "6 Personen erhalten diese Mitteilung" in page.locator(".preview").inner_text()
    by_role = page.get_by_role("table", name="Nach Funktion")
    expect(by_role.get_by_role("row", name="Bürgermeister/innen 3")).to_be_visible()
    mail = page.frame_locator("iframe.mail")
    expect(mail.get_by_text("Digitale Kümmerer: neue Sprechstunden").first).to_be_visible()
    expect(mail.locator("strong", has_text="Montag")).to_be_visible()
    page.get_by_text("Textfassung der E-Mail").click()
    # The text part shows the Markdown as plain text, without its asterisks.
    assert "Ab Montag beraten" in page.locator("pre.mail").inner_text()
    assert_accessible(page, "Vorschau")

    page.get_by_role("button", name="Planen").click()
    expect(page.get_by_role("status")).to_contain_text("Die Mitteilung ist geplant")
    assert_accessible(page, "Mitteilung geplant")

    received = project.smtp.wait_for(6)
    assert {m.message["Subject"] for m in received} == {"Digitale Kümmerer: neue Sprechstunden"}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        page.reload()
        if page.locator("#zustand").inner_text() == "versendet" and "6 versandt" in re.sub(
            r"\s+", " ", page.locator(".figures").inner_text()
        ):
            break
        time.sleep(0.3)
    figures = re.sub(r"\s+", " ", page.locator(".figures").inner_text())
    assert "6 versandt" in figures, figures
    recipients = page.get_by_role("table", name=re.compile("Empfänger und Zustand"))
    assert recipients.get_by_role(
        "row", name=re.compile("maria.lenz@og-pruem.example")
    ).is_visible()
    assert_accessible(page, "Versandstand")

    for link, heading in (
        ("Mitteilungen", "Mitteilungen"),
        ("Abonnenten", "Abonnenten"),
    ):
        page.get_by_role("navigation", name="Projektbüro").get_by_role("link", name=link).click()
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        assert_accessible(page, heading)
    page.get_by_label("Organisation (mit allen Einheiten darunter)").fill("Verbandsgemeinde Prüm")
    page.get_by_label("Funktion").select_option("mayor")
    page.get_by_role("button", name="Suchen").click()
    expect(page.get_by_role("status")).to_have_text("2 Einträge")
    page.get_by_role("link", name="thomas.becker@vg-pruem.example").click()
    expect(page.get_by_role("heading", name="Abonnent bearbeiten")).to_be_visible()
    assert_accessible(page, "Abonnent bearbeiten")
    page.get_by_label("Name", exact=True).fill("Thomas Becker-Klein")
    page.get_by_role("button", name="Speichern").click()
    expect(page.get_by_role("status")).to_have_text("Die Änderungen sind gespeichert.")
    page.goto(site.url("/buero/abonnenten/import"))
    assert_accessible(page, "Import")
    bad = b"email,name,role,organisation,topics,rhythm\nkaputt,Ohne Adresse,mayor,Speicher,,daily\n"
    page.get_by_label("CSV-Datei").set_input_files(
        files=[{"name": "liste.csv", "mimeType": "text/csv", "buffer": bad}]
    )
    page.get_by_role("button", name="Hochladen und importieren").click()
    errors = page.get_by_role("table", name="Fehler in liste.csv")
    expect(errors.get_by_role("row", name=re.compile("^2 email "))).to_be_visible()
    assert_accessible(page, "Import mit Fehlern")

    # Keyboard only: the skip link comes first; logout ends the session.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Zum Inhalt springen"
    page.get_by_role("button", name="Abmelden").click()
    expect(page.get_by_role("status")).to_have_text("Sie sind abgemeldet.")
    page.goto(site.url("/buero/mitteilungen"))
    expect(page.get_by_role("heading", name="Anmeldung für das Projektbüro")).to_be_visible()


LONG_URL = "https://eifelkreis-verbindet.example/" + "x" * 120


def test_mail_catcher_pages_on_a_phone(
    web: Callable[..., Web], project: Project, browser_page: Any
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    page.set_viewport_size({"width": 360, "height": 740})
    site = web({"smtp": {"catcher": True}, "catcher": {"directory": "var/mails"}})
    project.cli("users", "add", USER, "--email", EMAIL, "--password", PASSWORD)
    page.goto(site.url("/buero/anmelden"))
    _log_in(page, site)
    page.goto(site.url("/buero/mitteilungen/neu"))
    page.get_by_label("Betreff").fill("Probe für das Handy")
    page.get_by_label("Text (Markdown)").fill(f"Ein *kurzer* Text.\n\n{LONG_URL}")
    page.get_by_role("button", name="Test an mich senden").click()
    expect(page.get_by_role("status")).to_have_text(f"Die Test-E-Mail ist an {EMAIL} verschickt.")
    # Scheduled for later, it can be edited and cancelled.
    page.get_by_label("Versandzeitpunkt").fill("2030-01-07T09:00")
    page.get_by_role("button", name="Planen").click()
    expect(page.get_by_role("status")).to_contain_text("Die Mitteilung ist geplant")
    page.get_by_role("link", name="Bearbeiten").click()
    expect(page.get_by_role("heading", name=re.compile("Mitteilung bearbeiten"))).to_be_visible()
    assert page.get_by_label("Versandzeitpunkt").input_value() == "2030-01-07T09:00"
    assert_accessible(page, "Mitteilung bearbeiten")
    page.get_by_label("Betreff").fill("Probe für das Handy, geändert")
    page.get_by_role("button", name="Änderungen speichern").click()
    expect(page.get_by_role("status")).to_have_text("Die Änderungen sind gespeichert.")
    page.get_by_role("button", name="Mitteilung absagen").click()
    expect(page.get_by_role("status")).to_contain_text("Die Mitteilung ist abgesagt")
    expect(page.locator("#zustand")).to_have_text("abgesagt")
    for path in ("/buero", "/buero/mitteilungen/neu", "/buero/abonnenten"):
        page.goto(site.url(path))
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} is wider than the phone's screen by {overflow}px"
    # On a phone the navigation sits in the header's "Menü".
    page.locator("header.site summary", has_text="Menü").click()
    page.get_by_role("link", name="Mail-Catcher").click()
    assert_accessible(page, "Mail-Catcher")
    page.get_by_role("link", name="[Test] Probe für das Handy").click()
    expect(page.frame_locator("iframe.mail").locator("em", has_text="kurzer")).to_be_visible()
    assert "Ein kurzer Text." in page.locator("pre.mail").inner_text()
    # A long unbreakable URL wraps, on the page and in the e-mail's HTML.
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the catcher's page is wider than the phone's screen by {overflow}px"
    mail_html = page.frame_locator("iframe.mail").locator("html")
    assert mail_html.evaluate("e => e.scrollWidth - e.clientWidth") <= 0
    assert_accessible(page, "Nachricht im Mail-Catcher")
