"""The reach the example subscribers should give, computed straight from the CSV files with
the csv module (not with notifier's code), for the tests to compare against."""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from .conftest import EXAMPLE, ORGANISATIONS


@dataclass(frozen=True)
class Expected:
    names: dict[str, str]  # key -> name
    kinds: dict[str, str]  # key -> kind
    parents: dict[str, str | None]  # key -> parent key
    roles: dict[str, Counter[str]]  # key -> role -> active subscribers at that unit
    topics: dict[str, set[str] | None]  # key -> chosen topics; None: all topics

    @property
    def ortsgemeinden(self) -> list[str]:
        return [k for k, kind in self.kinds.items() if kind == "ortsgemeinde"]

    def mayor(self, key: str) -> bool:
        return self.roles[key]["mayor"] > 0

    @property
    def reached(self) -> list[str]:
        return [k for k in self.ortsgemeinden if self.mayor(k)]

    @property
    def not_reached(self) -> list[str]:
        return [k for k in self.ortsgemeinden if not self.mayor(k)]

    def per_vg(self) -> dict[str, tuple[int, int]]:
        """VG name -> (Ortsgemeinden with a mayor, Ortsgemeinden)."""
        result: dict[str, tuple[int, int]] = {}
        for vg, kind in self.kinds.items():
            if kind != "verbandsgemeinde":
                continue
            ogs = [k for k in self.ortsgemeinden if self.parents[k] == vg]
            result[self.names[vg]] = (sum(self.mayor(k) for k in ogs), len(ogs))
        return result

    @property
    def subscribers(self) -> int:
        return sum(sum(c.values()) for c in self.roles.values())


def expected(subscribers: Path = EXAMPLE, organisations: Path = ORGANISATIONS) -> Expected:
    with organisations.open(encoding="utf-8-sig", newline="") as f:
        units = list(csv.DictReader(f))
    by_name = {u["name"]: u["key"] for u in units}
    names = {u["key"]: u["name"] for u in units}
    kinds = {u["key"]: u["kind"] for u in units}
    parents = {u["key"]: (by_name.get(u["parent"], u["parent"]) or None) for u in units}
    roles: dict[str, Counter[str]] = defaultdict(Counter)
    topics: dict[str, set[str] | None] = {}
    with subscribers.open(encoding="utf-8-sig", newline="") as f:
        for row in csv.DictReader(f):
            key = (
                row["organisation"]
                if row["organisation"] in names
                else by_name[row["organisation"]]
            )
            roles[key][row["role"]] += 1
            chosen = {t for t in row["topics"].split(";") if t}
            if not chosen or topics.get(key, set()) is None:
                topics[key] = None
            else:
                known = topics.get(key) or set()
                topics[key] = known | chosen
    for key in names:
        roles.setdefault(key, Counter())
    return Expected(names, kinds, parents, dict(roles), topics)
