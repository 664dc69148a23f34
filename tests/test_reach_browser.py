"""The reach page and the charts in a real browser (Debian's chromium via Playwright): the
figures of the example subscribers as the CSV files say, the CSV download for a letter
campaign, and every page with a chart passing axe-core, with its colours from the static CSS
(the CSP allows no inline styles)."""

from __future__ import annotations

import csv
import re
import time
from collections.abc import Callable
from typing import Any

import httpx

from . import bouncemail
from .browser import assert_accessible, browser_page
from .conftest import EXAMPLE, Project, Web
from .reach_expected import expected

__all__ = ["browser_page"]

USER, PASSWORD = "buero", "ein-langes-passwort"
GREEN = "rgb(11, 92, 70)"  # .chart-s0 in charts.css


def _log_in(page: Any, site: Web, path: str) -> None:
    page.goto(site.url(path))
    page.get_by_label("Benutzername").fill(USER)
    page.get_by_label("Passwort").fill(PASSWORD)
    page.get_by_role("button", name="Anmelden").click()


def _no_inline_code(page: Any) -> None:
    html = page.content()
    assert not re.search(r"<[^>]+\sstyle=", html), "an inline style attribute"
    assert "<style" not in html
    assert not re.search(r"<script(?![^>]*\ssrc=)", html), "an inline script"


def _chart(page: Any, title: str) -> Any:
    from playwright.sync_api import expect

    figure = page.locator("figure.chart", has=page.get_by_role("img", name=title))
    expect(figure).to_have_count(1)
    mark = figure.locator("svg.chart-svg circle, svg.chart-svg rect").first
    assert mark.evaluate("e => getComputedStyle(e).fill") == GREEN
    return figure


def test_reach_page_counts_the_example_subscribers_and_charts_pass_axe(
    web: Callable[..., Web], project: Project, browser_page: Any, tmp_path: Any
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    site = web()
    project.cli("users", "add", USER, "--password", PASSWORD)
    want = expected()
    _log_in(page, site, "/buero")
    page.get_by_role("link", name="Reichweite").click()
    expect(page.get_by_role("heading", name="Reichweite", level=1)).to_be_visible()
    expect(page.locator("#zahl-abonnenten")).to_have_text(str(want.subscribers))
    expect(page.locator("#zahl-buergermeister")).to_have_text(f"{len(want.reached)} von 232")
    for vg, (reached, total) in want.per_vg().items():
        section = page.get_by_role("region", name=vg)
        expect(section.locator(".vg-reach")).to_have_text(
            f"Ortsgemeinden mit Bürgermeister/in erreicht: {reached} von {total}"
        )
        expect(section.locator("tbody tr")).to_have_count(total)
    row = page.get_by_role("region", name="Verbandsgemeinde Prüm").get_by_role(
        "row", name=re.compile("^Schönecken")
    )
    expect(row.get_by_role("cell").first).to_have_text("ja")
    bitburg = page.get_by_role("row", name=re.compile("^Stadt Bitburg"))
    expect(bitburg.get_by_role("cell").first).to_have_text("ja")
    # Reach over time: the leader recorded today at its start.
    figure = _chart(page, "Ortsgemeinden mit Bürgermeister/in im Verlauf")
    figure.get_by_text("Zahlen als Tabelle").click()
    expect(figure.get_by_role("table").locator("tbody td")).to_have_text([str(len(want.reached))])
    _chart(page, "Aktive Abonnenten im Verlauf")
    _no_inline_code(page)
    assert_accessible(page, "Reichweite")

    with page.expect_download() as info:
        page.get_by_role("link", name="Als CSV herunterladen").click()
    path = tmp_path / "nicht-erreicht.csv"
    info.value.save_as(path)
    assert re.fullmatch(r"nicht-erreicht-\d{4}-\d{2}-\d{2}\.csv", info.value.suggested_filename)
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert sorted(r[0] for r in rows[1:]) == sorted(want.not_reached)


def test_delivery_and_dashboard_charts_in_a_browser(
    web: Callable[..., Web], project: Project, browser_page: Any
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    domain = "eifelkreis-verbindet.example"
    site = web({"bounces": {"return_path": f"bounces+{{token}}@{domain}"}})
    project.cli("users", "add", USER, "--password", PASSWORD)
    note = project.write("note.md", '+++\nsubject = "Rundschreiben"\nsend_at = "now"\n+++\nText.\n')
    project.cli("announce", note)
    # Those who take each item at once get it now; the others wait for their briefing.
    with EXAMPLE.open(encoding="utf-8") as f:
        now = sum(1 for row in csv.DictReader(f) if row["rhythm"] == "immediate")
    received = project.smtp.wait_for(now, timeout=30)
    assert len(received) == now
    # One message comes back (a DSN for the first recipient), the second recipient unsubscribes
    # with the link of the e-mail (one click, as a mail program does it).
    first, second = received[0], received[1]
    project.cli(
        "bounces",
        "feed",
        project.write(
            "dsn.eml",
            bouncemail.dsn(
                first.mail_from, first.rcpt_tos[0], "5.1.1", str(first.message["Message-ID"])
            ).decode(),
        ),
    )
    link = re.search(r"<(http[^>]+)>", str(second.message["List-Unsubscribe"]))
    assert link is not None
    answer = httpx.post(link.group(1), data={"List-Unsubscribe": "One-Click"}, timeout=15)
    assert answer.status_code == 200, answer.text

    _log_in(page, site, "/buero")
    figure = _chart(page, "Nachrichten je Tag der letzten 30 Tage nach Zustand")
    figure.get_by_text("Zahlen als Tabelle").click()
    today = figure.get_by_role("table").locator("tbody tr").last
    expect(today.get_by_role("cell")).to_have_text([str(now), "0", "0"])
    _no_inline_code(page)
    assert_accessible(page, "Übersicht mit Diagramm")

    page.goto(site.url("/buero/mitteilungen/1"))
    for _ in range(30):  # the page may come before the last state is stored
        figure = _chart(page, "Zustellung im Verlauf")
        cells = figure.locator("tbody tr").last.locator("td")
        if cells.all_text_contents() == [str(now), "0"]:
            break
        time.sleep(0.5)
        page.reload()
    figure.get_by_text("Zahlen als Tabelle").click()
    expect(figure.get_by_role("table").locator("tbody tr").last.get_by_role("cell")).to_have_text(
        [str(now), "0"]
    )
    _no_inline_code(page)
    assert_accessible(page, "Mitteilung mit Zustellung im Verlauf")

    page.get_by_role("link", name="Mitteilungen", exact=True).click()
    expect(page.get_by_role("heading", name="Mitteilungen", level=1)).to_be_visible()
    figure = _chart(page, "Bounces und Abmeldungen je Mitteilung")
    figure.get_by_text("Zahlen als Tabelle").click()
    expect(figure.get_by_role("table").locator("tbody tr")).to_have_text(["Nr. 111"])
    row = figure.get_by_role("table").locator("tbody tr").first
    expect(row.get_by_role("cell")).to_have_text(["1", "1"])  # one bounce, one unsubscribe
    _no_inline_code(page)
    assert_accessible(page, "Mitteilungen mit Diagramm")
