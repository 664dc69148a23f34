"""The office logs in through the Kreis's directory in a real browser (chromium): with the
login form against OpenLDAP, and with the button that leads to the OpenID provider's own
login page and back. Both reach the console; the login pages pass axe-core."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .browser import assert_accessible, browser_page
from .conftest import Web, free_port
from .oidc_provider import OidcProvider, oidc_provider
from .slapd import Slapd, slapd_server

__all__ = ["browser_page", "oidc_provider", "slapd_server"]


def test_the_office_logs_in_with_ldap_in_a_browser(
    web: Callable[..., Web], slapd_server: Slapd, browser_page: Any
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    site = web({"auth": {"ldap": slapd_server.auth_config()}}, seed=False)
    page.goto(site.url("/buero"))
    expect(page.get_by_role("heading", name="Anmeldung für das Projektbüro")).to_be_visible()
    assert_accessible(page, "Anmeldung mit LDAP")
    page.get_by_label("Benutzername").fill("bernd")
    page.get_by_label("Passwort").fill(slapd_server.passwords["bernd"])
    page.get_by_role("button", name="Anmelden").click()
    expect(page.get_by_role("alert")).to_contain_text(
        "Anmeldung über das Verzeichnis fehlgeschlagen"
    )
    assert_accessible(page, "LDAP-Anmeldung fehlgeschlagen")
    page.get_by_label("Benutzername").fill("anna")
    page.get_by_label("Passwort").fill(slapd_server.passwords["anna"])
    page.get_by_role("button", name="Anmelden").click()
    expect(page.get_by_role("heading", name="Übersicht", exact=True)).to_be_visible()
    assert page.url == site.url("/buero")


def test_the_office_logs_in_with_openid_connect_in_a_browser(
    web: Callable[..., Web], oidc_provider: OidcProvider, browser_page: Any
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    site = web(
        {
            "web": {"port": port},
            "mail": {"public_base_url": base},
            "auth": {"oidc": oidc_provider.auth_config(base)},
        },
        seed=False,
    )
    page.goto(site.url("/buero/abonnenten"))
    button = page.get_by_role("link", name="Mit dem Konto der Kreisverwaltung anmelden")
    expect(button).to_be_visible()
    expect(page.get_by_role("heading", name="Mit einem lokalen Zugang")).to_be_visible()
    assert_accessible(page, "Anmeldung mit OpenID Connect")
    button.click()
    # The provider's own login page, then its consent page.
    page.wait_for_url(re.compile(re.escape(oidc_provider.issuer) + "/interaction/"))
    page.locator('input[name="login"]').fill("anna")
    page.locator('input[name="password"]').fill("beliebig")
    page.get_by_role("button", name="Sign-in").click()
    page.get_by_role("button", name="Continue").click()
    # Back in the console, on the page asked for before the login.
    page.wait_for_url(site.url("/buero/abonnenten"))
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    expect(page.get_by_role("button", name="Abmelden")).to_be_visible()
