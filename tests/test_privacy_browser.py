"""Access to one's data and the office's preview in a real browser (Debian's chromium via
Playwright): the preferences page with data and the export page pass axe-core, the download
is the JSON document, and the office's preview frame loads nothing from another host."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .browser import assert_accessible, browser_page
from .conftest import Project, Web
from .httpserver import FeedServer, Route

__all__ = ["browser_page"]

USER, PASSWORD = "buero", "ein-langes-passwort"
SIGNUP = {
    "email": "erika@og-bettingen.example",
    "name": "Erika Musterfrau",
    "organisation": "Bettingen (Verbandsgemeinde Bitburger Land)",
    "role": "mayor",
    "topics": ["mobilitaet"],
    "rhythm": "immediate",
    "consent": "1",
}
# A 1×1 GIF, so that a browser that does load it gets a real image.
PIXEL = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c000000000100010000020144003b"
)


def test_preferences_with_data_and_the_export_page_in_a_browser(
    web: Callable[..., Web], project: Project, browser_page: Any
) -> None:
    page = browser_page
    site = web()
    signup = site.client.post("/anmelden", data={**SIGNUP, "csrf_token": site.csrf("/anmelden")})
    assert signup.status_code == 200
    [mail] = project.smtp.wait_for(1)
    confirm = site.link(mail.message.get_body(("plain",)).get_content(), "bestaetigen")
    done = site.client.post(confirm, data={"csrf_token": site.csrf(confirm)})
    preferences = site.link(done.text, "einstellungen")
    project.cli(
        "announce",
        project.write("a.md", '+++\nsubject = "Ladesäulen"\nsend_at = "now"\n+++\nText.\n'),
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with sqlite3.connect(project.root / "var" / "test.db") as db:
            if db.execute("SELECT count(*) FROM outbox WHERE state = 'sent'").fetchone()[0] > 9:
                break
        time.sleep(0.2)

    page.goto(site.url(preferences))
    assert page.get_by_role("heading", name="Ihre gespeicherten Daten").is_visible()
    assert_accessible(page, "Einstellungen mit Daten")
    with page.expect_download() as started:
        page.get_by_role("link", name="Meine Daten herunterladen (JSON)").click()
    download = started.value
    assert download.suggested_filename.startswith(
        "daten-"
    ) and download.suggested_filename.endswith(".json")
    document = json.loads(Path(download.path()).read_text("utf-8"))
    assert document["subscriber"]["email"] == SIGNUP["email"]
    assert document["provenance"]["source"] == "signup"

    page.get_by_role("link", name="Meine Daten als Seite anzeigen").click()
    assert page.get_by_role("heading", name="Meine Daten", exact=True).is_visible()
    assert page.get_by_text("Ich willige ein, dass der Eifelkreis").is_visible()
    assert page.get_by_role("cell", name="Mitteilung: Ladesäulen").is_visible()
    assert_accessible(page, "Meine Daten")


def test_the_preview_frame_loads_nothing_from_another_host(
    web: Callable[..., Web], project: Project, browser_page: Any, server: FeedServer
) -> None:
    # The "remote" host: a second HTTP server on loopback, which records every request.
    server.routes["/logo.gif"] = Route(body=PIXEL)
    image = server.url("/logo.gif")
    site = web()
    project.cli("users", "add", USER, "--password", PASSWORD)
    # A context that enforces the pages' CSP (the fixture's page bypasses it for axe-core).
    context = browser_page.context.browser.new_context(locale="de-DE")
    try:
        page = context.new_page()
        page.goto(site.url("/buero/anmelden"))
        page.get_by_label("Benutzername").fill(USER)
        page.get_by_label("Passwort").fill(PASSWORD)
        page.get_by_role("button", name="Anmelden").click()
        page.goto(site.url("/buero/mitteilungen/neu"))
        page.get_by_label("Betreff").fill("Mit Bild")
        page.get_by_label("Text (Markdown)").fill(
            f'Unser Logo:\n\n![Logo]({image})\n\n<img src="{image}?roh">'
        )
        with page.expect_response(lambda r: "/buero/vorschau/" in r.url) as framed:
            page.get_by_role("button", name="Vorschau und Empfänger anzeigen").click()
        frame_response = framed.value
        assert "img-src 'self' data:" in frame_response.headers["content-security-policy"]
        frame = page.frame_locator("iframe.mail")
        assert frame.get_by_text("Unser Logo:").is_visible()
        # The frame holds the image, and the browser did not fetch it.
        assert frame.locator("img").count() >= 1
        page.wait_for_timeout(500)
        assert server.seen == [], server.seen

        # The same image on a page without that policy is fetched: the server would have seen
        # the frame's request.
        blank = context.new_page()
        blank.set_content(f'<img src="{image}" alt="">')
        blank.wait_for_function("document.images[0].complete")
        assert [s.path for s in server.seen] == ["/logo.gif"]
    finally:
        context.close()
