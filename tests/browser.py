"""A real browser for the web pages: Debian's chromium driven by Playwright (never a browser
that Playwright downloads), and an accessibility check with axe-core from npm.

Without chromium or axe-core the browser tests are skipped with the reason; with
``NOTIFIER_REQUIRE_BROWSER=1`` (set by ``.ci/run``) they fail instead, so CI cannot pass
without running them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("NOTIFIER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
AXE = Path(__file__).parent / "browser" / "node_modules" / "axe-core" / "axe.min.js"
# Flags for a closed network: no background connections, no updates, no first-run screens.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no chromium at {CHROMIUM} (apt-get install chromium)"
    if not AXE.exists():
        return f"no axe-core at {AXE} (npm install --prefix tests/browser)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed"
    return None


def need_browser() -> None:
    reason = _missing()
    if reason is None:
        return
    if os.environ.get("NOTIFIER_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser tests required but cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture
def browser_page() -> Iterator[Any]:
    """A fresh page (own cookies) in headless chromium, German, phone-sized if asked."""
    need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        # axe-core is injected as an inline script, which the pages' CSP (rightly) forbids.
        context = browser.new_context(locale="de-DE", bypass_csp=True)
        context.set_default_timeout(15_000)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        yield page
        context.close()
        browser.close()
        assert not errors, f"JavaScript errors in the pages: {errors}"


def assert_accessible(page: Any, where: str = "") -> None:
    """Run axe-core (WCAG 2.0/2.1 A and AA rules) on the current page and fail on any
    serious or critical violation, naming the rule and the elements."""
    page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        """async () => await axe.run(document, {
            runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']},
            resultTypes: ['violations'],
        })"""
    )
    bad = [v for v in result["violations"] if v["impact"] in ("serious", "critical")]
    report = "\n".join(
        f"- {v['id']} ({v['impact']}): {v['help']} at "
        + ", ".join(str(n["target"]) for n in v["nodes"][:5])
        for v in bad
    )
    assert not bad, f"accessibility violations on {where or page.url}:\n{report}"
    assert result["testEngine"]["name"] == "axe-core"
