"""The layout in a real browser (Debian's chromium via Playwright): the office console uses the
screen's width for its tables, nothing in the header wraps at 1280 px or 375 px (the office's
navigation becomes a "Menü" on a phone), tables scroll inside their own box, and a configured
[branding] colour and logo reach the pages and keep axe-core's contrast checks green."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from .browser import assert_accessible, browser_page
from .conftest import Project, Web

__all__ = ["browser_page"]

USER, PASSWORD = "buero", "ein-langes-passwort"
WIDE, PHONE = (1280, 800), (375, 740)
# A blue of a corporate design: 8.6:1 on white.
BLUE = "#1d4e89"
LOGO = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="80" height="40" viewBox="0 0 80 40">'
    '<rect width="80" height="40" fill="#ffffff"/><circle cx="20" cy="20" r="14" fill="#1d4e89"/>'
    "</svg>"
)

# What the header shows: the name (and logo), the navigation, the user, the buttons, the menu.
HEADER_ITEMS = (
    "header.site .brand, header.site nav a, header.site .who, header.site button, "
    "header.site summary"
)
# For each element: its text and how many lines its text takes (the rectangles of its text
# nodes, grouped by line: a line starts where a rectangle begins below the previous line).
_LINES = """(selector) => [...document.querySelectorAll(selector)]
  .filter((e) => e.getClientRects().length > 0)
  .map((e) => {
    const rects = [];
    const walk = document.createTreeWalker(e, NodeFilter.SHOW_TEXT);
    while (walk.nextNode()) {
      if (!walk.currentNode.textContent.trim()) continue;
      const range = document.createRange();
      range.selectNodeContents(walk.currentNode);
      rects.push(...[...range.getClientRects()].filter((r) => r.width > 0));
    }
    rects.sort((a, b) => a.top - b.top);
    let lines = 0, bottom = -Infinity;
    for (const r of rects) {
      if (r.top >= bottom - 2) { lines += 1; bottom = r.bottom; }
      else { bottom = Math.max(bottom, r.bottom); }
    }
    return [e.textContent.trim().replace(/\\s+/g, " "), lines];
  })"""
# The vertical middle of every visible item of the header's bar, to see they share one row.
_MIDDLES = """(selector) => [...document.querySelectorAll(selector)]
  .filter((e) => e.getClientRects().length > 0)
  .map((e) => {
    const r = e.getBoundingClientRect();
    return [e.textContent.trim(), (r.top + r.bottom) / 2, r.right];
  })"""


def _start(web: Callable[..., Web], project: Project, config: dict[str, Any] | None = None) -> Web:
    site = web(config)
    project.cli("users", "add", USER, "--password", PASSWORD)
    return site


def _log_in(page: Any, site: Web) -> None:
    page.goto(site.url("/buero/anmelden"))
    page.get_by_label("Benutzername").fill(USER)
    page.get_by_label("Passwort").fill(PASSWORD)
    page.get_by_role("button", name="Anmelden").click()
    page.get_by_role("heading", name="Übersicht", exact=True).wait_for()


def _assert_header_lines_single(page: Any, where: str) -> None:
    lines = page.evaluate(_LINES, HEADER_ITEMS)
    assert lines, where
    wrapped = [text for text, n in lines if n != 1]
    assert not wrapped, f"{where}: wraps in the header: {wrapped} ({lines})"


def _assert_one_row(page: Any, where: str, width: int) -> list[str]:
    items = page.evaluate(_MIDDLES, HEADER_ITEMS)
    middles = [middle for _, middle, _ in items]
    assert max(middles) - min(middles) < 12, f"{where}: header items not in one row: {items}"
    assert all(right <= width for _, _, right in items), f"{where}: beyond the screen: {items}"
    return [text for text, _, _ in items]


def test_office_uses_the_width_and_the_header_stays_on_one_line(
    web: Callable[..., Web], project: Project, browser_page: Any
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    site = _start(web, project, {"smtp": {"catcher": True}})
    page.set_viewport_size({"width": WIDE[0], "height": WIDE[1]})
    _log_in(page, site)

    page.goto(site.url("/buero/abonnenten"))
    _assert_header_lines_single(page, "Abonnenten, 1280 px")
    shown = _assert_one_row(page, "Abonnenten, 1280 px", WIDE[0])
    assert {"Übersicht", "Mail-Catcher", "Abmelden"} <= set(shown), shown
    expect(page.get_by_role("button", name="Abmelden")).to_be_visible()
    expect(page.locator("summary", has_text="Menü")).to_be_hidden()
    # The table: every column on the screen, the Status column included, without scrolling.
    status = page.get_by_role("columnheader", name="Status")
    expect(status).to_be_in_viewport()
    box = status.bounding_box()
    assert box is not None and box["x"] + box["width"] <= WIDE[0], box
    table_box = page.locator(".table-wrap").first
    assert table_box.evaluate("(e) => e.scrollWidth <= e.clientWidth")
    main_width = page.locator("main").evaluate("(e) => e.getBoundingClientRect().width")
    assert main_width > 1200, main_width  # not the public pages' 60rem (960 px) column
    assert_accessible(page, "Abonnenten, 1280 px")

    for path in ("/buero", "/buero/mitteilungen", "/buero/bounces", "/buero/mails"):
        page.goto(site.url(path))
        _assert_header_lines_single(page, f"{path}, 1280 px")
        _assert_one_row(page, f"{path}, 1280 px", WIDE[0])

    # A phone: the brand and "Menü" in one row; the menu opens to the navigation and the logout.
    page.set_viewport_size({"width": PHONE[0], "height": PHONE[1]})
    page.goto(site.url("/buero/abonnenten"))
    _assert_header_lines_single(page, "Abonnenten, 375 px")
    assert _assert_one_row(page, "Abonnenten, 375 px", PHONE[0]) == [
        "EIFELKREIS VERBINDET",
        "Menü",
    ]
    expect(page.get_by_role("button", name="Abmelden")).to_be_hidden()
    # The table scrolls in its own box; the page itself does not get wider than the screen.
    assert page.locator(".table-wrap").first.evaluate("(e) => e.scrollWidth > e.clientWidth")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE[0]
    assert_accessible(page, "Abonnenten, 375 px")

    page.locator("summary", has_text="Menü").click()
    navigation = page.get_by_role("navigation", name="Projektbüro")
    expect(navigation.get_by_role("link", name="Mitteilungen")).to_be_visible()
    expect(page.get_by_role("button", name="Abmelden")).to_be_visible()
    _assert_header_lines_single(page, "Menü offen, 375 px")
    for link in navigation.get_by_role("link").all():
        box = link.bounding_box()
        assert box is not None and box["x"] + box["width"] <= PHONE[0], box
    assert_accessible(page, "Menü offen, 375 px")
    navigation.get_by_role("link", name="Mitteilungen").click()
    expect(page.get_by_role("heading", name="Mitteilungen", exact=True)).to_be_visible()


def test_public_pages_stay_narrow_and_unwrapped(
    web: Callable[..., Web], project: Project, browser_page: Any
) -> None:
    page = browser_page
    site = web()
    for width, height in (WIDE, PHONE):
        page.set_viewport_size({"width": width, "height": height})
        page.goto(site.url("/anmelden"))
        _assert_header_lines_single(page, f"Anmeldung, {width} px")
        main_width = page.locator("main").evaluate("(e) => e.getBoundingClientRect().width")
        assert main_width <= min(width, 960), main_width
        assert page.evaluate("() => document.documentElement.scrollWidth") <= width


def test_branding_colour_and_logo_reach_the_pages_and_stay_accessible(
    web: Callable[..., Web], project: Project, browser_page: Any
) -> None:
    from playwright.sync_api import expect

    (project.root / "design").mkdir()
    (project.root / "design" / "logo.svg").write_text(LOGO, "utf-8")
    page = browser_page
    site = _start(web, project, {"branding": {"primary_colour": BLUE, "logo": "design/logo.svg"}})

    page.set_viewport_size({"width": WIDE[0], "height": WIDE[1]})
    page.goto(site.url("/anmelden"))
    header = page.locator("header.site")
    assert header.evaluate("(e) => getComputedStyle(e).backgroundColor") == "rgb(29, 78, 137)"
    logo = page.locator("header.site img.logo")
    expect(logo).to_be_visible()
    assert logo.evaluate("(e) => e.complete && e.naturalWidth") == 80
    assert logo.get_attribute("alt") == ""  # the name beside it names the link
    expect(page.get_by_role("link", name="EIFELKREIS VERBINDET")).to_be_visible()
    _assert_header_lines_single(page, "Anmeldung mit Logo, 1280 px")
    assert_accessible(page, "Anmeldung mit Branding")

    _log_in(page, site)
    button = page.get_by_role("link", name="Neue Mitteilung schreiben")
    assert button.evaluate("(e) => getComputedStyle(e).backgroundColor") == "rgb(29, 78, 137)"
    _assert_header_lines_single(page, "Übersicht mit Logo, 1280 px")
    _assert_one_row(page, "Übersicht mit Logo, 1280 px", WIDE[0])
    assert_accessible(page, "Übersicht mit Branding")
    page.set_viewport_size({"width": PHONE[0], "height": PHONE[1]})
    page.reload()
    _assert_header_lines_single(page, "Übersicht mit Logo, 375 px")
    _assert_one_row(page, "Übersicht mit Logo, 375 px", PHONE[0])
    page.locator("summary", has_text="Menü").click()
    assert_accessible(page, "Menü offen mit Branding")

    # Served by the service itself, cached for long under a URL that changes with the content.
    css_url = page.locator('link[href^="/static/branding.css"]').get_attribute("href")
    logo_url = logo.get_attribute("src")
    assert css_url and logo_url and "?v=" in css_url and "?v=" in logo_url
    css = httpx.get(site.url(css_url))
    assert css.headers["content-type"].startswith("text/css")
    assert "immutable" in css.headers["cache-control"]
    assert f"--green: {BLUE};" in css.text
    image = httpx.get(site.url(logo_url))
    assert image.headers["content-type"] == "image/svg+xml"
    assert image.text == LOGO
    assert "script-src 'self'" in image.headers["content-security-policy"]
    assert httpx.get(site.url("/static/branding.css")).headers["cache-control"] == "no-cache"
