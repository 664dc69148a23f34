"""The reach of the service: for every unit of the tree, whether its mayor is subscribed (role
``mayor``, status active), how many staff, council members and others, and which topics they
cover; per Verbandsgemeinde how many of its Ortsgemeinden have their mayor among them.

:func:`compute` is pure (rows in, figures out); :func:`read` feeds it from the database.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from ..csvfiles import csv_text
from ..db import reach as store
from ..db.models import OrgKind, Role


@dataclass(frozen=True)
class UnitReach:
    """One unit and its active subscribers (at the unit itself, not below it)."""

    key: str
    name: str
    kind: OrgKind
    parent_key: str | None
    by_role: dict[Role, int] = field(default_factory=dict)
    topics: tuple[str, ...] = ()  # topic keys, in the configured order

    def count(self, role: Role) -> int:
        return self.by_role.get(role, 0)

    @property
    def mayor(self) -> bool:
        return self.count(Role.mayor) > 0

    @property
    def subscribers(self) -> int:
        return sum(self.by_role.values())


@dataclass(frozen=True)
class GroupReach:
    """A Verbandsgemeinde with its Ortsgemeinden."""

    unit: UnitReach
    ortsgemeinden: list[UnitReach]

    @property
    def reached(self) -> int:
        return sum(1 for og in self.ortsgemeinden if og.mayor)

    @property
    def total(self) -> int:
        return len(self.ortsgemeinden)


@dataclass(frozen=True)
class ReachReport:
    units: list[UnitReach]  # the whole tree, in tree order
    groups: list[GroupReach]  # the Verbandsgemeinden, in tree order
    topic_keys: tuple[str, ...]  # every configured topic

    @property
    def root(self) -> UnitReach:
        return next(u for u in self.units if u.parent_key is None)

    @property
    def cities(self) -> list[UnitReach]:
        """The verbandsfreie Städte (Bitburg)."""
        return [u for u in self.units if u.kind is OrgKind.stadt]

    @property
    def ortsgemeinden(self) -> list[UnitReach]:
        return [u for u in self.units if u.kind is OrgKind.ortsgemeinde]

    @property
    def mayors_reached(self) -> int:
        """Ortsgemeinden whose mayor is subscribed."""
        return sum(1 for og in self.ortsgemeinden if og.mayor)

    @property
    def subscribers(self) -> int:
        return sum(u.subscribers for u in self.units)

    @property
    def units_reached(self) -> int:
        return sum(1 for u in self.units if u.subscribers)

    def not_reached(self) -> list[tuple[UnitReach, UnitReach | None]]:
        """The Ortsgemeinden without a subscribed mayor, with their Verbandsgemeinde."""
        by_key = {u.key: u for u in self.units}
        return [(og, by_key.get(og.parent_key or "")) for og in self.ortsgemeinden if not og.mayor]

    def by_vg(self) -> dict[str, list[int]]:
        return {g.unit.key: [g.reached, g.total] for g in self.groups}


def compute(
    units: Iterable[store.UnitRow],
    by_role: Iterable[tuple[str, Role, int]],
    all_topic_units: set[str],
    chosen: Iterable[tuple[str, str]],
    topic_keys: Sequence[str],
) -> ReachReport:
    """The figures from the tree, the active subscribers per unit and role, the units where
    someone takes every topic and the (unit, topic) pairs chosen one by one."""
    counts: dict[str, dict[Role, int]] = defaultdict(dict)
    for key, role, n in by_role:
        counts[key][role] = counts[key].get(role, 0) + n
    covered: dict[str, set[str]] = defaultdict(set)
    for key, topic in chosen:
        covered[key].add(topic)
    order = tuple(topic_keys)
    result: list[UnitReach] = []
    for row in units:
        topics = (
            order
            if row.key in all_topic_units
            else tuple(t for t in order if t in covered[row.key])
        )
        result.append(
            UnitReach(row.key, row.name, row.kind, row.parent_key, dict(counts[row.key]), topics)
        )
    children: dict[str, list[UnitReach]] = defaultdict(list)
    for unit in result:
        if unit.kind is OrgKind.ortsgemeinde and unit.parent_key is not None:
            children[unit.parent_key].append(unit)
    groups = [GroupReach(u, children[u.key]) for u in result if u.kind is OrgKind.verbandsgemeinde]
    return ReachReport(result, groups, order)


async def read(session: AsyncSession, topic_keys: Sequence[str]) -> ReachReport:
    """The reach now, from the database."""
    units = await store.units(session)
    by_role = await store.active_by_role(session)
    everything, chosen = await store.topics_covered(session)
    return compute(units, by_role, everything, chosen, topic_keys)


NOT_REACHED_HEADER = ["Gemeindeschlüssel", "Ortsgemeinde", "Verbandsgemeinde", "Abonnenten"]


def not_reached_csv(report: ReachReport, *, excel: bool = False) -> str:
    """The Ortsgemeinden whose mayor is not subscribed, for a letter campaign: key, name, the
    Verbandsgemeinde and how many others there are subscribed. Cells are neutralised against
    CSV injection like the subscriber export; ``excel``: the form German Excel opens."""
    rows = [NOT_REACHED_HEADER] + [
        [og.key, og.name, vg.name if vg else "", str(og.subscribers)]
        for og, vg in report.not_reached()
    ]
    return csv_text(rows, excel=excel)
