"""``notifier doctor``: the configuration and the environment checked as an administrator would.

Each check is an async function of the settings that returns findings (✓ or ✗, and for a ✗ what
to do); :data:`CHECKS` lists them in the order they are shown. A new check is one function (in
a module of this package named after what it checks) and one line in that list. The checks run
concurrently, each under a deadline, so one server that does not answer cannot hold up the
others. Nothing is changed: no migration, no folder created, no message sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ..config import Settings
from .connections import check_database, check_smtp, check_sources
from .environment import check_paths, check_public_url
from .findings import CHECK_SECONDS, Check, Finding, failed, passed
from .signing import check_dkim
from .templates import check_templates

CHECKS: list[tuple[str, Check]] = [
    ("Datenbank", check_database),
    ("SMTP", check_smtp),
    ("Vorlagen", check_templates),
    ("Öffentliche Adresse", check_public_url),
    ("DKIM", check_dkim),
    ("Datenpfade", check_paths),
    ("Quellen", check_sources),
]


async def _bounded(name: str, check: Check, settings: Settings) -> Sequence[Finding]:
    try:
        async with asyncio.timeout(CHECK_SECONDS):
            return await check(settings)
    except TimeoutError:
        return [
            failed(
                f"{name}: keine Antwort innerhalb von {CHECK_SECONDS:g} Sekunden",
                "Prüfen Sie, ob der Server erreichbar ist.",
            )
        ]


async def run_checks(
    settings: Settings, checks: Sequence[tuple[str, Check]] = CHECKS
) -> list[Finding]:
    """Every check at once; the findings in the order of ``checks``."""
    results = await asyncio.gather(*(_bounded(n, c, settings) for n, c in checks))
    return [finding for found in results for finding in found]


def lines(findings: Sequence[Finding]) -> list[str]:
    """The checklist: ``✓ …`` or ``✗ …`` with ``→ what to do`` below."""
    out: list[str] = []
    for finding in findings:
        out.append(f"{'✓' if finding.ok else '✗'} {finding.text}")
        if not finding.ok and finding.hint:
            out.append(f"    → {finding.hint}")
    return out


__all__ = [
    "CHECKS",
    "Check",
    "Finding",
    "check_database",
    "check_paths",
    "check_public_url",
    "check_smtp",
    "check_sources",
    "check_templates",
    "failed",
    "lines",
    "passed",
    "run_checks",
]
