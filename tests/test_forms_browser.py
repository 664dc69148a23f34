"""The organisation picker and "wieder anmelden" in a real browser (Debian's chromium): a mayor
types "Holsthum" and signs up; "Prüm" is asked back; the script filters the tree as one types;
an umlaut domain stays readable; every page passes axe-core."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from typing import Any

from .browser import assert_accessible, browser_page
from .conftest import Project, Web

__all__ = ["browser_page"]


def test_a_mayor_types_holsthum_and_signs_up(
    web: Callable[..., Web], project: Project, browser_page: Any
) -> None:
    page = browser_page
    site = web()
    page.goto(site.url("/anmelden"))
    assert_accessible(page, "Anmeldung mit Organisationsbaum")

    # The script filters the tree as one types: the Südeifel branch opens, Arzfeld hides.
    field = page.get_by_label("Organisation", exact=True)
    field.fill("Holst")
    assert page.locator("#organisation_key-07232053").is_visible()
    assert page.locator("#organisation_key-zweig-072325001").is_hidden()
    assert page.locator("#organisation_key-07232001").is_hidden()  # Affler, in Südeifel too
    assert_accessible(page, "Anmeldung, Baum gefiltert")

    # "Prüm" fits two units: the answer asks which one, accessibly.
    page.get_by_label("E-Mail-Adresse").fill("hanna@bürgermeister.example")
    page.get_by_label("Name", exact=True).fill("Hanna Holst")
    field.fill("Prüm")
    page.get_by_label("Funktion").select_option("mayor")
    page.locator("#consent").check()
    page.get_by_role("button", name="Anmelden").click()
    assert page.get_by_role("group", name="Prüm: die Verbandsgemeinde oder die Ortsgemeinde?")
    assert page.locator("#organisation-wahl-072325006").is_visible()
    assert_accessible(page, "Anmeldung mit Rückfrage")
    # The umlaut domain is shown as typed, not as punycode (xn--…).
    assert page.get_by_label("E-Mail-Adresse").input_value() == "hanna@bürgermeister.example"
    page.get_by_label("E-Mail-Adresse").fill("buergermeister@holsthum.example")

    # The mayor meant neither: types "Holsthum" and signs up.
    page.get_by_label("Organisation", exact=True).fill("Holsthum")
    page.locator("#consent").check()
    page.get_by_role("button", name="Anmelden").click()
    assert page.get_by_role(
        "heading", name=re.compile("Bitte prüfen Sie Ihr Postfach")
    ).is_visible()
    with sqlite3.connect(project.root / "var" / "test.db") as db:
        assert db.execute(
            "SELECT o.name, s.role FROM subscribers s JOIN organisations o "
            "ON o.id = s.organisation_id WHERE s.email = 'buergermeister@holsthum.example'"
        ).fetchone() == ("Holsthum", "mayor")

    # Confirm, unsubscribe, and come back with one click; every page accessible.
    [mail] = project.smtp.wait_for(1)
    confirm = site.link(mail.message.get_body(("plain",)).get_content(), "bestaetigen")
    page.goto(site.url(confirm))
    page.get_by_role("button", name="Anmeldung bestätigen").click()
    page.get_by_role("link", name=re.compile("Meine Einstellungen")).click()
    assert page.locator("#organisation_key-07232053").is_checked()
    assert_accessible(page, "Einstellungen mit Organisationsbaum")
    page.get_by_role("link", name="Keine E-Mails mehr erhalten").click()
    page.get_by_role("button", name="Jetzt abmelden").click()
    assert page.get_by_role("heading", name="Sie sind abgemeldet").is_visible()
    assert_accessible(page, "Abgemeldet, mit „Wieder anmelden“")
    page.get_by_role("button", name="Wieder anmelden").click()
    assert page.get_by_role("heading", name="Sie sind wieder angemeldet").is_visible()
    assert_accessible(page, "Wieder angemeldet")
    with sqlite3.connect(project.root / "var" / "test.db") as db:
        assert db.execute(
            "SELECT status FROM subscribers WHERE email = 'buergermeister@holsthum.example'"
        ).fetchone() == ("active",)
