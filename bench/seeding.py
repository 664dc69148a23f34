"""Seed data: the organisations and N subscribers, through `notifier subscribers import` or
directly into SQLite."""

from __future__ import annotations

import csv
import random
import sqlite3
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from common import REPO, BenchError, fmt_int

if TYPE_CHECKING:
    from project import Project

CLI_SAMPLE = 5_000  # --seed auto imports this many rows through the CLI first, timed
ROLES = ("staff", "mayor", "deputy_mayor", "council_member", "project_office")
FIRST_NAMES = (
    "Anna", "Jürgen", "Maria", "Thomas", "Sabine", "Josef", "Claudia", "Peter", "Elke",
    "Günter", "Ursula", "Markus", "Julia", "Heinz", "Bärbel", "Stefan", "Käthe", "Bernd",
)  # fmt: skip
LAST_NAMES = (
    "Schmitz", "Müller", "Weber", "Hoffmann", "Becker", "Klein", "Thiel", "Lenz", "Kaiser",
    "Schneider", "Wagner", "Meyer", "Jäger", "Krämer", "Schäfer", "Bauer", "Kreuz", "Nöllen",
)  # fmt: skip
DOMAINS = ("kreis.example", "vg-pruem.example", "bitburg.example", "og-eifel.example")


@dataclass
class Seeding:
    lines: list[str] = field(default_factory=list)
    seconds: float = 0.0


def subscriber_rows(n: int, org_keys: Sequence[str], topic_keys: Sequence[str]) -> list[list[str]]:
    """N subscribers spread over every organisation, role and topic; all on ``immediate``."""
    rng = random.Random(20261126)  # noqa: S311 - test data, not security
    rows: list[list[str]] = []
    for i in range(n):
        name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        email = f"b{i:06d}.{name.split()[1].lower()}@{DOMAINS[i % len(DOMAINS)]}"
        email = email.replace("ä", "ae").replace("ö", "oe").replace("ü", "ue")
        topics = (
            ""
            if rng.random() < 0.4
            else ";".join(sorted(rng.sample(list(topic_keys), rng.randint(1, len(topic_keys)))))
        )
        rows.append([email, name, ROLES[i % len(ROLES)], org_keys[i % len(org_keys)], topics,
                     "immediate"])  # fmt: skip
    return rows


def _write_csv(path: Path, rows: Sequence[Sequence[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "name", "role", "organisation", "topics", "rhythm"])
        writer.writerows(rows)


def insert_sql(db: Path, rows: Sequence[Sequence[str]]) -> None:
    """Insert subscribers and subscriptions like the import does (columns of db/models.py)."""
    con = sqlite3.connect(db, timeout=30)
    try:
        columns = con.execute("PRAGMA table_info(subscribers)").fetchall()
        known = {"id", "email", "name", "role", "organisation_id", "rhythm", "all_topics",
                 "status", "created_at", "updated_at"}  # fmt: skip
        missing = [c[1] for c in columns if c[3] and c[4] is None and c[1] not in known]
        if missing:
            raise BenchError(
                "direct insert: table subscribers has new required columns "
                f"{', '.join(missing)}; use --seed cli"
            )
        orgs = dict(con.execute("SELECT key, id FROM organisations").fetchall())
        now = datetime.now(ZoneInfo("UTC")).strftime("%Y-%m-%d %H:%M:%S.%f")
        with con:
            for email, name, role, org, topics, rhythm in rows:
                cursor = con.execute(
                    "INSERT INTO subscribers (email, name, role, organisation_id, rhythm,"
                    " all_topics, status, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, 'active', ?, ?)",
                    (email, name, role, orgs[org], rhythm, 0 if topics else 1, now, now),
                )
                if topics:
                    con.executemany(
                        "INSERT INTO subscriptions (subscriber_id, topic_key) VALUES (?, ?)",
                        [(cursor.lastrowid, t) for t in topics.split(";")],
                    )
    finally:
        con.close()


def seed(project: Project, n: int, mode: str, cli_budget: float) -> Seeding:
    """Organisations by the CLI; subscribers by the CLI, or directly into SQLite if too slow."""
    info = Seeding()
    start = time.perf_counter()
    organisations = REPO / "notifier" / "data" / "organisations.csv"
    project.cli_ok("organisations", "load", organisations, timeout=300)
    with organisations.open(encoding="utf-8", newline="") as handle:
        org_keys = [row["key"] for row in csv.DictReader(handle)]
    topics = [t["key"] for t in tomllib.loads(project.config.read_text())["topics"]]
    rows = subscriber_rows(n, org_keys, topics)

    def cli_import(part: Sequence[Sequence[str]], name: str) -> float:
        path = project.folder / name
        _write_csv(path, part)
        began = time.perf_counter()
        project.cli_ok("subscribers", "import", path, timeout=max(600.0, len(part) / 20))
        return time.perf_counter() - began

    if mode == "sql":
        project.insert_rows(rows)
        info.lines.append(f"{fmt_int(n)} subscribers inserted directly (--seed sql)")
    else:
        first = rows if mode == "cli" else rows[:CLI_SAMPLE]
        seconds = cli_import(first, "subscribers-1.csv")
        rate = len(first) / seconds
        info.lines.append(
            f"`notifier subscribers import`: {fmt_int(len(first))} rows in {seconds:.1f} s "
            f"({fmt_int(rate)} rows/s)"
        )
        rest = rows[len(first) :]
        if rest:
            estimate = len(rest) / rate
            if estimate <= cli_budget:
                seconds = cli_import(rest, "subscribers-2.csv")
                info.lines.append(
                    f"`notifier subscribers import`: {fmt_int(len(rest))} more rows in "
                    f"{seconds:.1f} s"
                )
            else:
                info.lines.append(
                    f"importing all {fmt_int(n)} through the CLI would take about "
                    f"{(n / rate) / 60:.1f} min; the other {fmt_int(len(rest))} rows were "
                    "inserted directly (same columns as notifier/db/models.py)"
                )
                began = time.perf_counter()
                project.insert_rows(rest)
                info.lines[-1] += f" in {time.perf_counter() - began:.1f} s"
    info.seconds = time.perf_counter() - start
    return info
