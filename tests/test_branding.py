"""``[branding]``: a primary colour without AA contrast (on white, on the page's grey, white
text on it) or a logo the service cannot serve stops the start with one German line; the
generated stylesheet carries an accepted colour."""

from __future__ import annotations

from typing import Any

import pytest

from notifier.branding import (
    AA_TEXT,
    DEFAULT_COLOUR,
    PAGE_GREY,
    WHITE,
    colour_problem,
    contrast,
    darker_passing,
    load_assets,
    stylesheet,
)
from notifier.config import PACKAGED_TEMPLATES, load_settings

from .conftest import Project

CSS = PACKAGED_TEMPLATES / "web" / "static" / "site.css"


def _start_error(project: Project, changes: dict[str, Any]) -> str:
    """The one line ``notifier run`` with ``changes`` stops with (exit code 2)."""
    project.write_config(changes)
    result = project.cli("run", ok=False)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"Konfigurationsfehler: {project.config}: ")
    assert "Traceback" not in result.output
    return lines[0]


def test_a_pale_colour_is_refused_at_start_in_german(project: Project) -> None:
    line = _start_error(project, {"branding": {"primary_colour": "#7fbf7f"}})

    assert "'branding.primary_colour'" in line
    assert "Farbe #7fbf7f hat auf Weiß nur einen Kontrast von 2,2:1" in line
    assert "weiße Schrift darauf ebenso" in line
    assert "nötig sind mindestens 4,5:1 (WCAG 2.1 AA)" in line
    # It proposes a darker shade of the same colour that passes.
    suggestion = line.rsplit("z. B. das dunklere ", 1)[1]
    assert colour_problem(suggestion) is None, suggestion
    assert contrast(suggestion, WHITE) < 5.5  # the lightest that passes, not black
    assert contrast(suggestion, PAGE_GREY) >= AA_TEXT
    assert darker_passing("#7fbf7f") == suggestion


def test_a_colour_that_passes_on_white_but_not_on_the_grey_is_refused(project: Project) -> None:
    # #767676 is the lightest grey with 4.5:1 on white; the footer's links sit on #f4f6f5.
    assert contrast("#767676", WHITE) >= AA_TEXT
    line = _start_error(project, {"branding": {"primary_colour": "#767676"}})
    assert "auf dem grauen Seitenrand nur einen Kontrast von 4,2:1" in line


@pytest.mark.parametrize("given", ["grün", "#12345", "1d4e89", "rgb(0,0,0)", ""])
def test_a_colour_not_in_hex_is_refused(project: Project, given: str) -> None:
    line = _start_error(project, {"branding": {"primary_colour": given}})
    assert f"„{given}“ ist keine Farbe im Format #rrggbb (z. B. #0b5c46)" in line


def test_accepted_colours_reach_the_stylesheet(project: Project) -> None:
    project.write_config({"branding": {"primary_colour": "#36C"}})
    settings = project.settings
    assert settings.branding.primary_colour == "#36C"
    sheet = stylesheet(settings.branding.primary_colour)
    assert "--green: #3366cc;" in sheet.text
    # The hover shade is darker still; the notices' tint carries the text colour with AA.
    dark = sheet.text.split("--green-dark: ")[1][:7]
    tint = sheet.text.split("--green-tint: ")[1][:7]
    assert contrast(dark, WHITE) > contrast("#3366cc", WHITE)
    assert contrast("#1c2421", tint) >= AA_TEXT
    assert stylesheet("#3366cc").version == sheet.version != stylesheet(DEFAULT_COLOUR).version


def test_the_default_colour_is_the_stylesheets_and_keeps_aa() -> None:
    assert f"--green: {DEFAULT_COLOUR};" in CSS.read_text("utf-8")
    assert colour_problem(DEFAULT_COLOUR) is None
    assert contrast(DEFAULT_COLOUR, WHITE) >= 7
    # The default stylesheet restates site.css's colour, hover shade and tint closely.
    text = stylesheet(DEFAULT_COLOUR).text
    assert f"--green: {DEFAULT_COLOUR};" in text


@pytest.mark.parametrize("colour", [DEFAULT_COLOUR, "#1d4e89", "#a4161a", "#3366cc", "#595959"])
def test_every_accepted_colour_keeps_the_header_focus_ring_visible(colour: str) -> None:
    # site.css draws the focus ring in the header in --focus-on-dark (#ffd34d): WCAG 1.4.11
    # needs 3:1 against the header, which any colour with 4.5:1 against white gives.
    assert colour_problem(colour) is None
    assert contrast("#ffd34d", colour) >= 3


def test_the_logo_must_be_an_image_file_the_service_can_serve(project: Project) -> None:
    line = _start_error(project, {"branding": {"logo": "design/logo.svg"}})
    assert "'branding.logo'" in line
    assert f"Logo {project.root / 'design' / 'logo.svg'} nicht gefunden" in line

    (project.root / "logo.gif").write_bytes(b"GIF89a")
    line = _start_error(project, {"branding": {"logo": "logo.gif"}})
    assert "nur Bilder als JPG, PNG, SVG, WEBP (Dateiendung .gif)" in line

    (project.root / "gross.png").write_bytes(b"\x89PNG" + bytes(600 * 1024))
    line = _start_error(project, {"branding": {"logo": "gross.png"}})
    assert "ist 600 KB groß; erlaubt sind höchstens 512 KB" in line

    (project.root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    project.write_config({"branding": {"logo": "logo.png"}})
    settings = load_settings(project.config, environ={})
    assets = load_assets(settings.branding.primary_colour, settings.logo_path)
    assert assets.logo == b"\x89PNG\r\n\x1a\n"
    assert assets.logo_type == "image/png"
    assert assets.logo_url is not None and assets.logo_url.startswith("/static/branding-logo?v=")
