"""The organisation tree as the forms show it: Kreis → Verbandsgemeinde → Ortsgemeinde.

The tree is read once per process and kept for :data:`TTL` seconds (``notifier organisations
load`` may change it while the service runs; a minute later every process shows the new tree).
Its picker (checkboxes or radio buttons in native ``<details>``) is rendered once per tree and
field; a request only marks its chosen units in that fragment, so a form with 240 units costs a
few string replacements, not a template loop.

Names typed by people resolve here: "Holsthum", "holsthum", "VG Prüm" find their unit; a name
that fits several units ("Prüm": the Ortsgemeinde or the Verbandsgemeinde) yields the candidates
and a German question, never a guess.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from jinja2 import Environment
from markupsafe import Markup
from sqlalchemy.ext.asyncio import AsyncSession

from .db import Database, queries
from .db.models import OrgKind

# Seconds a process keeps the tree before it reads it again.
TTL = 60.0
# At most this many near matches are offered for a name that fits no unit exactly.
MAX_CANDIDATES = 12
# At most this many names in one search field (the office's "several units" field).
MAX_NAMES = 50

_ARTICLES = {
    OrgKind.kreis: "der Kreis",
    OrgKind.verbandsgemeinde: "die Verbandsgemeinde",
    OrgKind.stadt: "die Stadt",
    OrgKind.ortsgemeinde: "die Ortsgemeinde",
}
# Words people put before a name, and the kinds of unit they mean.
_PREFIXES = (
    ("verbandsgemeinde ", (OrgKind.verbandsgemeinde,)),
    ("vg ", (OrgKind.verbandsgemeinde,)),
    ("ortsgemeinde ", (OrgKind.ortsgemeinde,)),
    ("og ", (OrgKind.ortsgemeinde,)),
    ("gemeinde ", (OrgKind.ortsgemeinde,)),
    ("stadt ", (OrgKind.stadt, OrgKind.ortsgemeinde)),
)
_FOLD = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"})
_SPACE = re.compile(r"\s+")
_SEPARATORS = re.compile(r"[;,\n]")


def fold(text: str) -> str:
    """A name as it is compared: lower case, umlauts spelt out, spaces collapsed."""
    composed = unicodedata.normalize("NFC", text)
    return _SPACE.sub(" ", composed.casefold().translate(_FOLD)).strip()


@dataclass(frozen=True)
class Unit:
    """One unit of the tree; ``label`` is unique (an Ortsgemeinde's names its VG)."""

    id: int
    key: str
    name: str
    kind: OrgKind
    label: str
    parent: str | None  # the parent's key
    ancestors: tuple[str, ...]  # keys from the root down, without the unit itself


@dataclass(frozen=True)
class Resolution:
    """What a typed name found: one ``unit``, or ``candidates`` with a German ``question``."""

    text: str
    unit: Unit | None = None
    candidates: tuple[Unit, ...] = ()
    question: str = ""
    ambiguous: bool = False  # the name fits several units exactly (else: near matches)


@dataclass(frozen=True)
class Picker:
    """One request's picker: the search field's text, the candidates of an ambiguous name,
    and the tree with the chosen units marked."""

    field: str  # the search field's name
    choice: str  # the name of the tree's inputs (unit keys)
    multiple: bool
    text: str
    tree: Markup
    resolution: Resolution | None = None
    chosen: tuple[Unit, ...] = ()


class OrgTree:
    """The units in tree order with their look-ups; immutable once built."""

    def __init__(self, rows: Iterable[tuple[int, str, str, OrgKind, str]]) -> None:
        rows = list(rows)
        names = {key: name for _, key, name, _, _ in rows}
        self.units: list[Unit] = []
        for id_, key, name, kind, path in rows:
            keys = tuple(path.strip("/").split("/"))
            parent = keys[-2] if len(keys) > 1 else None
            label = name
            if kind is OrgKind.ortsgemeinde and parent is not None:
                label = f"{name} ({names.get(parent, parent)})"
            self.units.append(Unit(id_, key, name, kind, label, parent, keys[:-1]))
        self.by_key = {u.key: u for u in self.units}
        self.by_id = {u.id: u for u in self.units}
        self.children: dict[str | None, list[Unit]] = {}
        for unit in self.units:
            self.children.setdefault(unit.parent, []).append(unit)
        self._names: dict[str, list[Unit]] = {}
        for unit in self.units:
            for alias in self._aliases(unit):
                found = self._names.setdefault(alias, [])
                if unit not in found:
                    found.append(unit)
        self._fragments: dict[tuple[str, bool], str] = {}

    @staticmethod
    def _aliases(unit: Unit) -> set[str]:
        aliases = {fold(unit.name), fold(unit.label), unit.key}
        plain = fold(unit.name)
        for prefix in ("verbandsgemeinde ", "stadt "):
            if plain.startswith(prefix):
                aliases.add(plain.removeprefix(prefix))
        if unit.kind is OrgKind.kreis:
            aliases.update({"kreis", "landkreis", "eifelkreis", "kreisverwaltung"})
        return aliases

    @property
    def roots(self) -> list[Unit]:
        return self.children.get(None, [])

    def label_of(self, unit_id: int | None) -> str:
        unit = self.by_id.get(unit_id) if unit_id is not None else None
        return unit.label if unit is not None else ""

    def resolve(self, text: str) -> Resolution:
        """The unit a typed name means: exact names (any case, umlauts or ae/oe/ue), labels,
        keys, names without "Verbandsgemeinde"/"Stadt", and with a leading "VG", "Stadt",
        "Ortsgemeinde". Several fits: the candidates and a question; none: the units whose
        name contains the text (at most :data:`MAX_CANDIDATES`)."""
        wanted = fold(text)
        if not wanted:
            return Resolution(text)
        found = list(self._names.get(wanted, []))
        if not found:
            for prefix, meant in _PREFIXES:
                if wanted.startswith(prefix):
                    rest = wanted.removeprefix(prefix)
                    found = [u for u in self._names.get(rest, []) if u.kind in meant]
                    break
        if len(found) == 1:
            return Resolution(text, unit=found[0])
        shown = text.strip()
        if found:
            kinds = [_ARTICLES[u.kind] for u in found]
            if len(set(kinds)) < len(kinds):
                kinds = [u.label for u in found]
            return Resolution(
                text,
                candidates=tuple(found),
                question=f"{shown}: {' oder '.join(kinds)}?",
                ambiguous=True,
            )
        near = tuple(u for u in self.units if wanted in fold(u.label))[:MAX_CANDIDATES]
        if near:
            return Resolution(
                text, candidates=near, question=f"Keine Einheit heißt „{shown}“. Meinten Sie:"
            )
        return Resolution(text)

    # -- the picker --------------------------------------------------------------------------

    def fragment(self, env: Environment, choice: str, multiple: bool) -> str:
        """The tree's HTML for inputs named ``choice``, rendered once per tree and name."""
        cached = self._fragments.get((choice, multiple))
        if cached is None:
            template = env.get_template("_orgtree.html")
            cached = template.render(tree=self, choice=choice, multiple=multiple)
            self._fragments[(choice, multiple)] = cached
        return cached

    def picker(
        self,
        env: Environment,
        *,
        field: str,
        choice: str,
        chosen: Collection[str] = (),
        text: str = "",
        resolution: Resolution | None = None,
        multiple: bool = False,
    ) -> Picker:
        """The picker of one request: the cached fragment with ``chosen`` (unit keys) checked
        and their branches open."""
        html = self.fragment(env, choice, multiple)
        units = tuple(self.by_key[k] for k in dict.fromkeys(chosen) if k in self.by_key)
        opened: set[str] = set()
        for unit in units:
            mark = f'id="{choice}-{unit.key}"'
            html = html.replace(mark, f"{mark} checked", 1)
            opened.update(unit.ancestors[1:])
        for key in opened:
            mark = f'id="{choice}-zweig-{key}"'
            html = html.replace(mark, f"{mark} open", 1)
        return Picker(field, choice, multiple, text, Markup(html), resolution, units)  # noqa: S704 - rendered by the autoescaping template


@dataclass
class Choice:
    """What a picker's submission chose: ``units``, or ``problems`` (names that did not
    resolve, with their candidates)."""

    units: list[Unit] = field(default_factory=list)
    problems: list[Resolution] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # ticked keys the tree does not have


def choose_one(tree: OrgTree, text: str, chosen: Collection[str]) -> Choice:
    """A single-unit picker: a typed name wins; when it fits several units, a chosen one of
    them is taken; with no text, the chosen unit of the tree."""
    if text.strip():
        found = tree.resolve(text)
        if found.unit is not None:
            return Choice([found.unit])
        keys = {c.key for c in found.candidates}
        picked = [tree.by_key[k] for k in chosen if k in keys]
        return Choice(picked[:1]) if picked else Choice(problems=[found])
    picked = [tree.by_key[k] for k in chosen if k in tree.by_key]
    return Choice(picked[:1])


def choose_many(tree: OrgTree, text: str, chosen: Collection[str]) -> Choice:
    """A several-units picker: the checked units and every name typed (separated by commas,
    semicolons or lines); names that fit several units or none are problems, unless one of
    their candidates is checked. Ticked keys the tree lacks (a unit removed meanwhile, a forged
    form) are kept in ``unknown`` for the caller to refuse by name."""
    keys = [k for k in dict.fromkeys(chosen) if k in tree.by_key]
    unknown = [k for k in dict.fromkeys(chosen) if k not in tree.by_key]
    result = Choice([tree.by_key[k] for k in keys], unknown=unknown)
    names = [n for n in (p.strip() for p in _SEPARATORS.split(text)) if n][:MAX_NAMES]
    for name in names:
        found = tree.resolve(name)
        if found.unit is not None:
            if found.unit.key not in keys:
                keys.append(found.unit.key)
                result.units.append(found.unit)
        elif not any(c.key in keys for c in found.candidates):
            result.problems.append(found)
    return result


def problem_text(problems: list[Resolution]) -> str:
    """The German error for names that did not resolve, one sentence each."""
    parts = []
    for found in problems:
        shown = found.text.strip()
        if found.ambiguous:
            parts.append(f"„{shown}“ ist nicht eindeutig ({found.question}) – bitte wählen Sie.")
        elif found.candidates:
            parts.append(f"Keine Einheit heißt genau „{shown}“ – bitte wählen Sie einen Vorschlag.")
        else:
            parts.append(
                f"Keine Einheit heißt „{shown}“. Bitte prüfen Sie die Schreibweise "
                "oder wählen Sie aus der Liste."
            )
    return " ".join(parts)


class TreeCache:
    """One process's tree, read again after :data:`TTL` seconds or :meth:`invalidate`."""

    def __init__(self, ttl: float = TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._tree: OrgTree | None = None
        self._read_at = 0.0

    async def get(self, session: AsyncSession) -> OrgTree:
        """The tree, read with ``session`` only when the kept one is older than the TTL."""
        now = self.clock()
        if self._tree is None or now - self._read_at >= self.ttl:
            self._tree = OrgTree(await queries.organisation_rows(session))
            self._read_at = now
        return self._tree

    async def read(self, db: Database) -> OrgTree:
        """The tree; a database session is opened only when the kept one is too old."""
        if self._tree is not None and self.clock() - self._read_at < self.ttl:
            return self._tree
        async with db.reading() as session:
            return await self.get(session)

    def invalidate(self) -> None:
        self._tree = None


def tree_cache(extra: dict[str, Any]) -> TreeCache:
    """The cache kept in a web application's ``WebContext.extra`` (one per application)."""
    cache = extra.get("orgtree")
    if not isinstance(cache, TreeCache):
        cache = extra["orgtree"] = TreeCache()
    return cache
