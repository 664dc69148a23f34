"""The Kreis → Verbandsgemeinde → Ortsgemeinde tree: loading, syncing, scope look-ups.

Every unit stores a materialised path of keys (``/07232/072325001/07232201/``), so "this unit and
everything below it" is a prefix match on one indexed column.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .audit import record
from .clock import utcnow
from .csvfiles import read_csv
from .db.models import Item, ItemStatus, Organisation, OrgKind, Subscriber
from .errors import InputError, NotFoundError, RowProblem

logger = logging.getLogger(__name__)

COLUMNS = ["key", "name", "kind", "parent"]

LEVEL_LABELS = {
    OrgKind.kreis: "Kreis",
    OrgKind.verbandsgemeinde: "Verbandsgemeinde",
    OrgKind.stadt: "Stadt (verbandsfrei)",
    OrgKind.ortsgemeinde: "Ortsgemeinde",
}


@dataclass(frozen=True)
class OrgRow:
    line: int
    key: str
    name: str
    kind: OrgKind
    parent: str | None  # key of the parent, resolved from the file's name or key


@dataclass
class SyncReport:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    moved_subscribers: list[tuple[str, str, str]] = field(default_factory=list)  # email, from, to

    @property
    def unchanged(self) -> bool:
        return not (self.added or self.changed or self.removed)


def parse_organisations(path: Path) -> list[OrgRow]:
    """Read and check an organisations CSV (``key,name,kind,parent``); the file is refused whole."""
    with read_csv(path, COLUMNS) as table:
        entries = list(table)  # the tree is small; it is checked as a whole
    problems = [e for e in entries if isinstance(e, RowProblem)]
    by_key: dict[str, int] = {}
    by_name: dict[str, str] = {}
    raw: list[tuple[int, dict[str, str]]] = []
    for entry in entries:
        if isinstance(entry, RowProblem):
            continue
        line, row = entry
        key, name = row["key"], row["name"]
        bad = False
        if not key:
            problems.append(RowProblem(line, "key", "leer"))
            bad = True
        elif key in by_key:
            problems.append(RowProblem(line, "key", f"{key} steht schon in Zeile {by_key[key]}"))
            bad = True
        if not name:
            problems.append(RowProblem(line, "name", "leer"))
            bad = True
        elif name in by_name:
            problems.append(RowProblem(line, "name", f"{name!r} ist nicht eindeutig"))
            bad = True
        if row["kind"] not in OrgKind.__members__:
            allowed = ", ".join(OrgKind.__members__)
            problems.append(RowProblem(line, "kind", f"{row['kind']!r} ist keine von {allowed}"))
            bad = True
        if not bad:
            by_key[key] = line
            by_name[name] = key
            raw.append((line, row))
    rows: list[OrgRow] = []
    for line, row in raw:
        parent_ref = row["parent"]
        parent = by_name.get(parent_ref) or (parent_ref if parent_ref in by_key else None)
        if parent_ref and parent is None:
            problems.append(
                RowProblem(line, "parent", f"{parent_ref!r} ist keine Einheit der Datei")
            )
            continue
        rows.append(OrgRow(line, row["key"], row["name"], OrgKind(row["kind"]), parent))
    roots = [r for r in rows if r.parent is None]
    # No root at all may just mean the root row itself was bad (reported above).
    if len(roots) > 1 or (not roots and not problems):
        problems.append(
            RowProblem(
                roots[1].line if len(roots) > 1 else 2,
                "parent",
                f"genau eine Einheit ohne parent erwartet, gefunden: {len(roots)}",
            )
        )
    if not problems:
        parents = {r.key: r.parent for r in rows}
        for r in rows:
            seen = {r.key}
            step = r.parent
            while step is not None:
                if step in seen:
                    problems.append(RowProblem(r.line, "parent", "Kreislauf im Baum"))
                    break
                seen.add(step)
                step = parents[step]
    if problems:
        raise InputError(table.path, sorted(problems, key=lambda p: p.line))
    return rows


def _paths(rows: Sequence[OrgRow]) -> dict[str, tuple[str, int]]:
    parents = {r.key: r.parent for r in rows}
    out: dict[str, tuple[str, int]] = {}

    def resolve(key: str) -> tuple[str, int]:
        if key not in out:
            parent = parents[key]
            if parent is None:
                out[key] = (f"/{key}/", 0)
            else:
                base, depth = resolve(parent)
                out[key] = (f"{base}{key}/", depth + 1)
        return out[key]

    for r in rows:
        resolve(r.key)
    return out


async def sync_organisations(
    session: AsyncSession, rows: Sequence[OrgRow], *, actor: str, source: str
) -> SyncReport:
    """Make the stored tree equal to ``rows`` (idempotent).

    Units are matched by key, so a renamed unit keeps its subscribers. Subscribers of a removed
    unit move to its nearest ancestor that still exists, and each move is audited.
    """
    report = SyncReport()
    existing = {o.key: o for o in (await session.scalars(select(Organisation))).all()}
    paths = _paths(rows)
    wanted = {r.key: r for r in rows}

    for r in rows:
        path, depth = paths[r.key]
        org = existing.get(r.key)
        if org is None:
            org = Organisation(key=r.key, name=r.name, kind=r.kind, path=path, depth=depth)
            session.add(org)
            existing[r.key] = org
            report.added.append(r.key)
        elif (org.name, org.kind, org.path) != (r.name, r.kind, path):
            org.name, org.kind, org.path, org.depth = r.name, r.kind, path, depth
            report.changed.append(r.key)
    await session.flush()
    for r in rows:
        parent_id = existing[r.parent].id if r.parent else None
        org = existing[r.key]
        if org.parent_id != parent_id:
            org.parent_id = parent_id
            if r.key not in report.added and r.key not in report.changed:
                report.changed.append(r.key)

    gone = [o for key, o in existing.items() if key not in wanted]
    for org in sorted(gone, key=lambda o: -o.depth):
        # The nearest ancestor, by the unit's old path, that the new tree still has.
        ancestors = [k for k in org.path.strip("/").split("/")[:-1] if k in wanted]
        if not ancestors:
            raise InputError(
                source,
                [],
                f"{source}: Einheit {org.key} ({org.name}) kann nicht "
                "entfernt werden: keine übergeordnete Einheit bleibt bestehen",
            )
        heir = existing[ancestors[-1]]
        subscribers = (
            await session.scalars(select(Subscriber).where(Subscriber.organisation_id == org.id))
        ).all()
        for sub in subscribers:
            sub.organisation_id = heir.id
            sub.updated_at = utcnow()
            report.moved_subscribers.append((sub.email, org.key, heir.key))
            await record(
                session,
                actor,
                "subscriber.moved",
                "subscriber",
                sub.id,
                {"from": org.key, "to": heir.key, "reason": "organisation removed"},
            )
        # Announcements not yet sent keep their audience: the removed unit's people are now
        # the heir's.
        waiting = await session.scalars(select(Item).where(Item.status == ItemStatus.scheduled))
        for item in waiting:
            if org.key in item.scope:
                item.scope = list(
                    dict.fromkeys(heir.key if k == org.key else k for k in item.scope)
                )
        await session.execute(
            update(Organisation).where(Organisation.parent_id == org.id).values(parent_id=heir.id)
        )
        await session.flush()
        await session.delete(org)
        report.removed.append(org.key)
    await session.flush()
    if not report.unchanged:
        await record(
            session,
            actor,
            "organisations.sync",
            "organisations",
            None,
            {
                "source": source,
                "added": report.added,
                "changed": report.changed,
                "removed": report.removed,
            },
        )
    return report


async def load_organisations(session: AsyncSession, path: Path, *, actor: str) -> SyncReport:
    """Parse ``path`` and sync the tree with it in the caller's transaction."""
    return await sync_organisations(
        session, parse_organisations(path), actor=actor, source=str(path)
    )


async def organisation_index(
    session: AsyncSession,
) -> tuple[dict[str, Organisation], dict[str, Organisation]]:
    """All units by key and by exact name."""
    orgs = (await session.scalars(select(Organisation))).all()
    return {o.key: o for o in orgs}, {o.name: o for o in orgs}


async def resolve_units(session: AsyncSession, refs: Iterable[str]) -> list[Organisation]:
    """Units named by key or exact name; raises :class:`NotFoundError` naming the unknown ones."""
    by_key, by_name = await organisation_index(session)
    found: list[Organisation] = []
    unknown: list[str] = []
    for ref in refs:
        org = by_key.get(ref) or by_name.get(ref)
        if org is None:
            unknown.append(ref)
        else:
            found.append(org)
    if unknown:
        raise NotFoundError("unbekannte Organisation: " + ", ".join(repr(u) for u in unknown))
    return found
