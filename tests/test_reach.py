"""Reach (issue 17, item 1): the figures of the real Eifelkreis tree with the example
subscribers, on SQLite and PostgreSQL, checked against the CSV files read independently; the
daily snapshots; ``notifier reach`` with its table and its CSV of Ortsgemeinden not reached."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select, update

from notifier import reach
from notifier.db import Database
from notifier.db.models import ReachSnapshot, Role, Subscriber, SubscriberStatus

from .conftest import EXAMPLE, Project
from .reach_expected import expected

BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


@pytest.fixture
def store(project: Project, backend: str) -> Project:
    """The test project on the backend under test, with the tree and the example subscribers."""
    project.write_config({"database": {"url": backend}})
    project.seed()
    return project


async def test_reach_counts_the_example_subscribers_in_the_real_tree(store: Project) -> None:
    want = expected()
    topics = store.settings.topic_keys
    db = Database(store.settings.database_url)
    try:
        async with db.reading() as session:
            report = await reach.read(session, topics)
    finally:
        await db.engine.dispose()
    assert len(report.units) == len(want.names) == 239
    assert len(report.ortsgemeinden) == len(want.ortsgemeinden) == 232
    assert report.subscribers == want.subscribers == 12
    for unit in report.units:
        assert unit.name == want.names[unit.key]
        assert unit.parent_key == want.parents[unit.key]
        assert {r.value: unit.count(r) for r in Role if unit.count(r)} == dict(
            +want.roles[unit.key]
        ), unit.name
        assert unit.mayor == want.mayor(unit.key), unit.name
        chosen = want.topics.get(unit.key, set())
        assert set(unit.topics) == (set(topics) if chosen is None else chosen), unit.name
    assert report.mayors_reached == len(want.reached)
    assert {g.unit.name: (g.reached, g.total) for g in report.groups} == want.per_vg()
    assert sorted(og.key for og, _ in report.not_reached()) == sorted(want.not_reached)
    assert {og.key: vg.key for og, vg in report.not_reached() if vg} == {
        k: want.parents[k] for k in want.not_reached
    }
    # The Stadt Bitburg is its own row, with its mayor; the Kreis has none.
    assert [(c.name, c.mayor) for c in report.cities] == [("Bitburg", True)]
    assert not report.root.mayor


async def test_only_active_mayors_count(store: Project) -> None:
    topics = store.settings.topic_keys
    db = Database(store.settings.database_url)
    try:
        async with db.reading() as session:
            before = await reach.read(session, topics)
        async with db.transaction() as session:
            await session.execute(
                update(Subscriber)
                .where(Subscriber.email == "josef.thiel@og-schoenecken.example")
                .values(status=SubscriberStatus.paused)
            )
        async with db.reading() as session:
            after = await reach.read(session, topics)
    finally:
        await db.engine.dispose()
    prum = {g.unit.name: g for g in after.groups}["Verbandsgemeinde Prüm"]
    schoenecken = next(og for og in prum.ortsgemeinden if og.name == "Schönecken")
    assert not schoenecken.mayor and schoenecken.subscribers == 0 and schoenecken.topics == ()
    assert after.mayors_reached == before.mayors_reached - 1
    assert after.subscribers == before.subscribers - 1


async def test_a_day_keeps_one_snapshot_with_its_last_figures(store: Project) -> None:
    topics = store.settings.topic_keys
    db = Database(store.settings.database_url)
    try:
        await reach.take_snapshot(db, topics, T0 - timedelta(days=1), BERLIN)
        await reach.take_snapshot(db, topics, T0, BERLIN)
        async with db.transaction() as session:
            await session.execute(
                update(Subscriber)
                .where(Subscriber.role == Role.mayor)
                .values(status=SubscriberStatus.unsubscribed)
            )
        # Later the same day (in Berlin): the day's row is replaced, not added.
        await reach.take_snapshot(db, topics, T0 + timedelta(hours=10), BERLIN)
        async with db.reading() as session:
            rows = await session.scalar(select(func.count()).select_from(ReachSnapshot))
        days = await reach.history(db, T0 + timedelta(hours=10), BERLIN)
        old = await reach.history(db, T0 + timedelta(days=200), BERLIN)
    finally:
        await db.engine.dispose()
    want = expected()
    mayors = sum(want.roles[k]["mayor"] for k in want.names)
    assert rows == 2
    assert [d.day.isoformat() for d in days] == ["2026-12-06", "2026-12-07"]
    assert [d.mayors_reached for d in days] == [len(want.reached), 0]
    assert [d.subscribers for d in days] == [want.subscribers, want.subscribers - mayors]
    assert days[0].ortsgemeinden == 232
    assert days[0].by_vg["072325006"] == list(want.per_vg()["Verbandsgemeinde Prüm"])
    assert days[1].taken_at == T0 + timedelta(hours=10)
    assert old == []  # older than the 90 days shown


def test_cli_prints_the_table_and_the_not_reached_list(project: Project) -> None:
    project.seed()
    want = expected()
    lines = project.cli("reach").output.splitlines()
    assert lines[0].endswith(
        f"{want.subscribers} aktive Abonnenten in 10 von 239 Einheiten; Ortsgemeinden mit "
        f"Bürgermeister/in erreicht: {len(want.reached)} von 232"
    )
    assert lines[0].startswith("Reichweite am ")
    for vg, (reached, total) in want.per_vg().items():
        i = next(n for n, line in enumerate(lines) if line.startswith(vg + " "))
        assert lines[i + 1] == (
            f"  Ortsgemeinden mit Bürgermeister/in erreicht: {reached} von {total}"
        )
    schoenecken = next(line for line in lines if line.startswith("  Schönecken "))
    assert schoenecken.split()[1:4] == ["Ortsgemeinde", "ja", "0"]
    kreis = next(line for line in lines if line.startswith("Eifelkreis Bitburg-Prüm "))
    assert kreis.split()[2:] == ["Kreis", "nein", "0", "1", "0", "2", "alle"]

    text = project.cli("reach", "--csv").output
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["Gemeindeschlüssel", "Ortsgemeinde", "Verbandsgemeinde", "Abonnenten"]
    assert sorted(r[0] for r in rows[1:]) == sorted(want.not_reached)
    holsthum = next(r for r in rows if r[1] == "Holsthum")
    key = next(k for k, name in want.names.items() if name == "Holsthum")
    assert holsthum == [key, "Holsthum", "Verbandsgemeinde Südeifel", "1"]  # a council member

    out = project.root / "brief.csv"
    said = project.cli("reach", "--csv", "--excel", "-o", out).output
    assert said.strip() == f"{len(want.not_reached)} Ortsgemeinden nach {out} geschrieben."
    data = out.read_bytes()
    assert data.startswith("\ufeff".encode()) and b"\r\n" in data
    assert data.decode("utf-8-sig").splitlines()[0] == (
        "Gemeindeschlüssel;Ortsgemeinde;Verbandsgemeinde;Abonnenten"
    )
    refused = project.cli("reach", "--excel", ok=False)
    assert refused.exit_code == 2
    assert "--excel und --output gelten nur zusammen mit --csv" in refused.output


def test_the_csv_neutralises_formula_names(project: Project) -> None:
    """A unit name from a changed tree reaches a spreadsheet as text, never as a formula."""
    tree = project.write(
        "baum.csv",
        "key,name,kind,parent\n"
        "1,Testkreis,kreis,\n"
        "11,Verbandsgemeinde Test,verbandsgemeinde,Testkreis\n"
        '111,"=HYPERLINK(""http://x.example"")",ortsgemeinde,Verbandsgemeinde Test\n'
        "112,Ruhig,ortsgemeinde,Verbandsgemeinde Test\n",
    )
    project.cli("organisations", "load", tree)
    project.cli(
        "subscribers",
        "import",
        project.write(
            "leute.csv",
            "email,name,role,organisation,topics,rhythm\n"
            "bm@ruhig.example,Rita Ruhig,mayor,Ruhig,,immediate\n",
        ),
    )
    rows = list(csv.reader(io.StringIO(project.cli("reach", "--csv").output)))
    assert rows[1:] == [["111", '\'=HYPERLINK("http://x.example")', "Verbandsgemeinde Test", "0"]]
    lines = project.cli("reach").output.splitlines()
    assert "Ortsgemeinden mit Bürgermeister/in erreicht: 1 von 2" in lines[0]


def test_expected_reads_the_example_file() -> None:
    """The independent reading of the CSV files sees what subscribers/README.md describes."""
    want = expected()
    assert EXAMPLE.exists() and want.subscribers == 12
    assert sorted(want.names[k] for k in want.reached) == ["Kyllburg", "Schönecken", "Speicher"]
    assert asyncio.iscoroutinefunction(reach.read)
