"""Colours of the stylesheet against WCAG 2.1: the focus ring needs 3:1 against what it is drawn
on (1.4.11 Non-text Contrast), computed from the values in site.css by the code that also checks
[branding] primary_colour (notifier.branding)."""

from __future__ import annotations

import re

from notifier.branding import contrast
from notifier.config import PACKAGED_TEMPLATES

CSS = PACKAGED_TEMPLATES / "web" / "static" / "site.css"


def _variables() -> dict[str, str]:
    root = re.search(r":root\s*\{(.*?)\}", CSS.read_text("utf-8"), re.S)
    assert root is not None
    return dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{6})", root.group(1)))


def test_the_formula_matches_known_ratios() -> None:
    assert round(contrast("#000000", "#ffffff"), 2) == 21.0
    assert round(contrast("#d4a100", "#ffffff"), 2) == 2.36  # the old ring, issue 12
    assert round(contrast("#767676", "#ffffff"), 2) == 4.54  # the lightest grey with AA on white


def test_focus_ring_has_3_to_1_wherever_it_is_drawn() -> None:
    css = CSS.read_text("utf-8")
    colours = _variables()
    assert ":focus-visible { outline: 3px solid var(--focus);" in css
    assert (
        "header.site :focus-visible, .skip:focus-visible { outline-color: var(--focus-on-dark); }"
        in css
    )
    # On the white page and the grey around it; in the green header (the skip link sits there).
    for background in ("#ffffff", colours["bg"]):
        assert contrast(colours["focus"], background) >= 3, background
    assert contrast(colours["focus-on-dark"], colours["green"]) >= 3


def test_long_words_wrap_in_the_mail_catcher() -> None:
    css = CSS.read_text("utf-8")
    rule = re.search(r"pre\.mail \{([^}]*)\}", css)
    assert rule is not None and "overflow-wrap: anywhere" in rule.group(1)
