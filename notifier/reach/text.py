"""The reach as a German text table for ``notifier reach``."""

from __future__ import annotations

from collections.abc import Mapping

from ..db.models import Role
from ..organisations import LEVEL_LABELS
from .figures import ReachReport, UnitReach

HEADER = ("Einheit", "Ebene", "BM", "Beig.", "Mitarb.", "Rat", "gesamt", "Themen")


def _topics(unit: UnitReach, report: ReachReport, titles: Mapping[str, str]) -> str:
    if not unit.topics:
        return "–"
    if len(unit.topics) == len(report.topic_keys):
        return "alle"
    return ", ".join(titles.get(t, t) for t in unit.topics)


def _row(unit: UnitReach, report: ReachReport, titles: Mapping[str, str], indent: str) -> list[str]:
    return [
        indent + unit.name,
        LEVEL_LABELS[unit.kind],
        "ja" if unit.mayor else "nein",
        str(unit.count(Role.deputy_mayor)),
        str(unit.count(Role.staff)),
        str(unit.count(Role.council_member)),
        str(unit.subscribers),
        _topics(unit, report, titles),
    ]


def table_lines(report: ReachReport, titles: Mapping[str, str], *, day: str) -> list[str]:
    """A summary line, then the Kreis, the Stadt, and each Verbandsgemeinde with its count of
    Ortsgemeinden reached and its Ortsgemeinden (indented)."""
    rows: list[list[str] | str] = [list(HEADER)]
    rows.append(_row(report.root, report, titles, ""))
    for city in report.cities:
        rows.append(_row(city, report, titles, ""))
    for group in report.groups:
        rows.append(_row(group.unit, report, titles, ""))
        rows.append(
            f"  Ortsgemeinden mit Bürgermeister/in erreicht: {group.reached} von {group.total}"
        )
        for og in group.ortsgemeinden:
            rows.append(_row(og, report, titles, "  "))
    tables = [r for r in rows if isinstance(r, list)]
    widths = [max(len(r[i]) for r in tables) for i in range(len(HEADER) - 1)]
    lines = [
        f"Reichweite am {day}: {report.subscribers} aktive Abonnenten in "
        f"{report.units_reached} von {len(report.units)} Einheiten; Ortsgemeinden mit "
        f"Bürgermeister/in erreicht: {report.mayors_reached} von {len(report.ortsgemeinden)}",
        "",
    ]
    for row in rows:
        if isinstance(row, str):
            lines.append(row)
            continue
        cells = [
            cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i])
            for i, cell in enumerate(row[:-1])
        ]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return lines
