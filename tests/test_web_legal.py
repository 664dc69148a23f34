"""The privacy notice (/datenschutz) and the accessibility statement (/barrierefreiheit): read
from the Markdown files of ``[legal]`` once at start, linked from every page's footer, the
sign-up form and every e-mail, accessible in a real browser; a missing file stops the start."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .browser import assert_accessible, browser_page
from .conftest import Project, Web
from .test_web_public import SIGNUP

__all__ = ["browser_page"]

FOOTER_LINKS = ('href="/datenschutz"', 'href="/barrierefreiheit"')


def test_both_statements_are_served_from_the_example_files(web: Callable[..., Web]) -> None:
    site = web(seed=False)

    privacy = site.client.get("/datenschutz")
    accessibility = site.client.get("/barrierefreiheit")

    assert privacy.status_code == 200
    assert "<title>Datenschutzerklärung – EIFELKREIS VERBINDET</title>" in privacy.text
    assert "<h1>Datenschutzerklärung</h1>" in privacy.text
    assert "Art. 6 Abs. 1 Buchst. a DSGVO" in privacy.text
    assert "Hintere Bleiche 34" in privacy.text
    assert accessibility.status_code == 200
    assert "<h1>Erklärung zur Barrierefreiheit</h1>" in accessibility.text
    assert "<h2>Durchsetzungsverfahren</h2>" in accessibility.text
    for answer in (privacy, accessibility):
        assert all(link in answer.text for link in FOOTER_LINKS)


def test_a_configured_file_is_rendered_once_at_start_without_raw_html(
    web: Callable[..., Web], project: Project
) -> None:
    # A relative path is resolved against the config file's folder.
    custom = project.write(
        "eigene-erklaerung.md",
        "# Datenschutz beim Testkreis\n\nVerantwortlich: *Testkreis*.\n\n"
        "<script>alert(1)</script>\n",
    )
    site = web({"legal": {"privacy_file": custom.name}}, seed=False)

    first = site.client.get("/datenschutz")
    custom.write_text("# Geändert nach dem Start\n", "utf-8")
    second = site.client.get("/datenschutz")

    assert first.status_code == 200
    assert "<h1>Datenschutz beim Testkreis</h1>" in first.text
    assert "<em>Testkreis</em>" in first.text
    assert "<script>alert(1)</script>" not in first.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in first.text
    assert second.text == first.text  # read at start, not per request
    assert "Erklärung zur Barrierefreiheit" in site.client.get("/barrierefreiheit").text


def test_every_page_footer_the_sign_up_form_and_e_mails_link_the_statements(
    web: Callable[..., Web], project: Project
) -> None:
    site = web()
    for path in ("/anmelden", "/buero/anmelden", "/gibt-es-nicht"):
        answer = site.client.get(path)
        footer = answer.text.partition('<footer class="site">')[2]
        assert all(link in footer for link in FOOTER_LINKS), path

    form = site.client.get("/anmelden").text
    consent = form.partition('id="consent-feld"')[2].partition('<button type="submit">')[0]
    assert 'href="/datenschutz">Datenschutzerklärung</a>' in consent

    answer = site.client.post("/anmelden", data={**SIGNUP, "csrf_token": site.csrf("/anmelden")})
    assert answer.status_code == 200, answer.text
    [mail] = project.smtp.wait_for(1)
    html = mail.message.get_body(("html",))
    text = mail.message.get_body(("plain",))
    assert html is not None and text is not None
    privacy_url = f"{site.base}/datenschutz"
    assert f'href="{privacy_url}"' in html.get_content()
    assert f"Datenschutz: {privacy_url}\r\n" in text.get_content()
    assert site.client.get("/datenschutz").status_code == 200


def test_a_missing_statement_stops_the_start_with_one_line(project: Project) -> None:
    project.write_config({"legal": {"accessibility_file": "fehlt/barrierefreiheit.md"}})

    result = project.cli("run", ok=False)

    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "legal.accessibility_file" in lines[0]
    assert str(project.root / "fehlt" / "barrierefreiheit.md") in lines[0]
    assert str(project.config) in lines[0]


def test_both_statements_pass_axe_core(web: Callable[..., Web], browser_page: Any) -> None:
    page = browser_page
    site = web(seed=False)

    page.goto(site.url("/anmelden"))
    page.get_by_role("link", name="Datenschutz", exact=True).click()
    assert page.get_by_role("heading", level=1).inner_text() == "Datenschutzerklärung"
    assert_accessible(page, "Datenschutzerklärung")

    page.get_by_role("link", name="Barrierefreiheit").click()
    assert page.get_by_role("heading", name=re.compile("Barrierefreiheit"), level=1).is_visible()
    assert_accessible(page, "Erklärung zur Barrierefreiheit")
