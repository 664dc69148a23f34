"""Sources from the open Internet: calendar bombs, huge calendars and feed floods (issue 12,
items 3 and 4). Real HTTP server on loopback (tests/httpserver.py), real SQLite files, a real
SMTP server, and a real ``notifier run`` where the event loop matters."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from notifier.db import Database
from notifier.routing import release_due
from notifier.sources.poller import SourcePoller

from .browser import assert_accessible, browser_page
from .conftest import Project, Web
from .httpserver import FeedServer, Route
from .test_sources_flow import PEOPLE, ics, rss

__all__ = ["browser_page"]

BERLIN = ZoneInfo("Europe/Berlin")
USER, PASSWORD, EMAIL = "buero", "ein-langes-passwort", "buero@kreis.example"


def bomb(freq: str) -> bytes:
    """The 150-byte calendar of the issue: one event repeating every minute or second."""
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:bombe\r\n"
        "DTSTART:20261201T000000Z\r\nRRULE:FREQ=" + freq + "\r\nSUMMARY:Bombe\r\n"
        "END:VEVENT\r\nEND:VCALENDAR\r\n"
    ).encode()


def calendar_of(count: int, first: datetime) -> bytes:
    """``count`` single events, one every 53 minutes from ``first`` (Berlin local time)."""
    events = []
    for i in range(count):
        start = first + timedelta(minutes=53 * i)
        end = start + timedelta(hours=1)
        events.append(
            f"BEGIN:VEVENT\r\nUID:ev{i}@kreis.example\r\nDTSTAMP:20261101T000000Z\r\n"
            f"DTSTART;TZID=Europe/Berlin:{start:%Y%m%dT%H%M%S}\r\n"
            f"DTEND;TZID=Europe/Berlin:{end:%Y%m%dT%H%M%S}\r\n"
            f"SUMMARY:Sprechstunde {i}\r\nLOCATION:Rathaus Prüm\\, Saal 2\r\n"
            f"DESCRIPTION:Beratung zu digitalen Diensten\\, Nummer {i}.\r\nEND:VEVENT\r\n"
        )
    return ics(*events)


def entries(count: int, prefix: str | None = None) -> bytes:
    """A feed of ``count`` entries; without ``prefix`` every call gives new GUIDs (churn)."""
    tag = prefix or uuid.uuid4().hex
    return rss(*((f"{tag}-{i}", f"Meldung {i}", "Strategie", "Text") for i in range(count)))


def _db(project: Project) -> sqlite3.Connection:
    return sqlite3.connect(project.root / "var" / "test.db")


def _statuses(project: Project, source: str) -> dict[str, int]:
    with _db(project) as db:
        rows = db.execute(
            "SELECT status, count(*) FROM items WHERE source = ? GROUP BY status", (source,)
        ).fetchall()
    return dict(rows)


def _audit(project: Project, action: str) -> list[tuple[str, str, str]]:
    with _db(project) as db:
        return db.execute(
            "SELECT actor, entity_id, details FROM audit_log WHERE action = ? ORDER BY id",
            (action,),
        ).fetchall()


# -- calendar bombs ---------------------------------------------------------------------------


def test_calendar_bombs_end_in_a_german_error_and_later_sources_are_polled(
    project: Project, server: FeedServer
) -> None:
    server.routes["/minutely.ics"] = Route(body=bomb("MINUTELY"))
    server.routes["/secondly.ics"] = Route(body=bomb("SECONDLY"))
    server.routes["/ok.ics"] = Route(body=calendar_of(3, datetime(2026, 12, 20, 10)))
    server.routes["/feed.xml"] = Route(body=entries(2, "a"))
    calendar = {"timeout": 5, "lookahead_days": 180}
    project.write_config(
        {
            "sources": {
                "parse_seconds": 15,
                "feed": [{"name": "news", "url": server.url("/feed.xml")}],
                "calendar": [
                    {"name": "minuetlich", "url": server.url("/minutely.ics"), **calendar},
                    {"name": "sekuendlich", "url": server.url("/secondly.ics"), **calendar},
                    {"name": "termine", "url": server.url("/ok.ics"), **calendar},
                ],
            }
        }
    )
    project.seed(project.write("people.csv", PEOPLE))
    started = time.monotonic()
    polled = project.cli("sources", "poll", ok=False)
    elapsed = time.monotonic() - started
    assert polled.exit_code == 1, polled.output
    assert elapsed < 15, f"{elapsed:.1f} s"
    lines = polled.output.splitlines()
    for name in ("minuetlich", "sekuendlich"):
        assert (
            f"{name}: Fehler: Kalender abgelehnt: eine Terminserie hat mehr als 1000 "
            "Termine im Abrufzeitraum (max_per_series)" in lines
        )
    assert "termine: 3 neu, 0 geändert, 0 abgesagt" in lines
    assert "news: 2 neu, 0 geändert, 0 abgesagt" in lines
    assert _statuses(project, "minuetlich") == {}
    listing = project.cli("sources", "list").output
    errors = [line for line in listing.splitlines() if "letzter Fehler" in line]
    assert len(errors) == 2
    assert all("Bombe" not in line and "bombe" not in line for line in errors)
    # Once the source is fixed, it is read again.
    server.routes["/minutely.ics"] = Route(body=calendar_of(1, datetime(2026, 12, 21, 9)))
    again = project.cli("sources", "poll", "minuetlich")
    assert again.output.strip() == "minuetlich: 1 neu, 0 geändert, 0 abgesagt"


def test_a_parse_over_the_time_limit_is_killed(project: Project, server: FeedServer) -> None:
    """With the occurrence caps lifted, SECONDLY runs into the time (or memory) limit: the
    worker is killed and the source gets a German error, within the limit."""
    server.routes["/secondly.ics"] = Route(body=bomb("SECONDLY"))
    server.routes["/ok.ics"] = Route(body=calendar_of(2, datetime(2026, 12, 20, 10)))
    project.write_config(
        {
            "sources": {
                "parse_seconds": 3,
                "max_per_series": 10**9,
                "max_per_calendar": 10**9,
                "calendar": [
                    {"name": "sekuendlich", "url": server.url("/secondly.ics"), "timeout": 5},
                    {"name": "termine", "url": server.url("/ok.ics"), "timeout": 5},
                ],
            }
        }
    )
    project.seed(project.write("people.csv", PEOPLE))
    started = time.monotonic()
    polled = project.cli("sources", "poll", ok=False)
    elapsed = time.monotonic() - started
    assert elapsed < 12, f"{elapsed:.1f} s"
    assert re.search(
        r"^sekuendlich: Fehler: Auswerten abgebrochen: (dauerte länger als 3 "
        r"Sekunden \(Grenze parse_seconds\)|brauchte mehr als 1024 MB Speicher)",
        polled.output,
        re.MULTILINE,
    ), polled.output
    assert "termine: 2 neu, 0 geändert, 0 abgesagt" in polled.output


async def test_key_lookup_over_the_sqlite_variable_limit(project: Project) -> None:
    from notifier.sources.poller import existing_items

    project.seed(project.write("people.csv", PEOPLE))
    keys = [f"k{i}" for i in range(40_000)]
    with _db(project) as db:
        db.executemany(
            "INSERT INTO items (kind, topics, scope, roles, important, send_at, status, "
            "created_at, created_by, source, external_key, subject, body, change_count, "
            "event_cancelled, all_day) VALUES ('update', '[]', '[]', '[]', 0, '2026-12-01', "
            "'recorded', '2026-12-01', 'source:news', 'news', ?, 's', '', 0, 0, 0)",
            [(k,) for k in (keys[0], keys[20_000], keys[-1])],
        )
    async with Database(project.settings.database_url) as db, db.reading() as session:
        found = await existing_items(session, "news", keys)
    assert sorted(found) == sorted([keys[0], keys[20_000], keys[-1]])


# -- a big calendar and the event loop ----------------------------------------------------------


def test_a_big_calendar_does_not_stall_healthz(
    web: Callable[..., Web], project: Project, server: FeedServer
) -> None:
    first = datetime.now(BERLIN).replace(tzinfo=None, microsecond=0) + timedelta(days=1)
    server.routes["/gross.ics"] = Route(body=calendar_of(4778, first))
    site = web(
        {
            "sources": {
                "calendar": [
                    {
                        "name": "gross",
                        "url": server.url("/gross.ics"),
                        "lookahead_days": 180,
                        "timeout": 10,
                    }
                ]
            }
        }
    )
    latencies: list[float] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=site.base, timeout=30) as client:
            while not stop.is_set():
                started = time.monotonic()
                assert client.get("/healthz").status_code == 200
                latencies.append(time.monotonic() - started)
                time.sleep(0.02)

    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    try:
        while _statuses(project, "gross").get("recorded", 0) < 4778:
            assert time.monotonic() < deadline, site.running.output[-3000:]
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(30)
    worst = max(latencies)
    print(f"/healthz during the poll: {len(latencies)} requests, worst {worst:.3f} s")
    assert worst < 1.0, f"/healthz took {worst:.2f} s during the poll"
    assert len(latencies) > 20


# -- feed floods --------------------------------------------------------------------------------


@pytest.fixture
async def poller_world(
    project: Project, server: FeedServer
) -> AsyncIterator[tuple[SourcePoller, Database, list[datetime]]]:
    project.write_config(
        {
            "sources": {
                "feed": [
                    {"name": "flut", "url": server.url("/flut.xml"), "timeout": 10},
                    {
                        "name": "nachtrag",
                        "url": server.url("/nachtrag.xml"),
                        "timeout": 20,
                        "backfill": True,
                        "max_bytes": 10_000_000,
                    },
                    {"name": "ruhig", "url": server.url("/ruhig.xml"), "timeout": 10},
                ]
            }
        }
    )
    project.seed(project.write("people.csv", PEOPLE))
    settings = project.settings
    now = [datetime(2026, 12, 1, 8, tzinfo=UTC)]
    async with Database(settings.database_url) as db, httpx.AsyncClient(trust_env=False) as client:
        yield SourcePoller(db, settings, client, lambda: now[0]), db, now


def _source(poller: SourcePoller, name: str) -> Any:
    return next(s for s in poller.settings.sources.all if s.name == name)


async def test_guid_churn_and_backfill_are_held_and_the_office_decides_on_the_cli(
    project: Project, server: FeedServer, poller_world: Any
) -> None:
    poller, db, now = poller_world
    server.routes["/flut.xml"] = Route(body=entries(25))
    server.routes["/nachtrag.xml"] = Route(body=entries(5000, "alt"))
    server.routes["/ruhig.xml"] = Route(body=entries(1, "r"))
    first = await poller.poll_all(poller.settings.sources.all)
    # The first poll of "flut" only records; "nachtrag" has backfill: 5,000 held.
    assert [(r.source, r.new, r.held, r.error) for r in first] == [
        ("flut", 25, 0, None),
        ("nachtrag", 5000, 5000, None),
        ("ruhig", 1, 0, None),
    ]
    # GUIDs that change on every request: all new again, held.
    server.routes["/flut.xml"] = Route(body=entries(25))
    churn = await poller.poll(_source(poller, "flut"))
    assert (churn.new, churn.held) == (25, 25)
    # While held items wait, even a few new ones are held.
    server.routes["/flut.xml"] = Route(body=entries(3))
    assert (await poller.poll(_source(poller, "flut"))).held == 3
    # Nothing is announced: nothing is due.
    assert await release_due(db, now[0]) == []
    assert _statuses(project, "flut") == {"recorded": 25, "held": 28}
    assert _statuses(project, "nachtrag") == {"held": 5000}

    listing = project.cli("sources", "list").output
    assert (
        "  auffällig: 28 neue Einträge zurückgehalten (mehr als 20 in einem Abruf); freigeben "
        "mit `notifier sources release flut`, verwerfen mit `notifier sources discard flut`"
        in listing
    )
    assert "auffällig: 5000 neue Einträge" in listing
    assert "ruhig" in listing and listing.count("auffällig") == 2

    discarded = project.cli("sources", "discard", "nachtrag").output
    assert discarded.strip() == "nachtrag: 5000 Einträge verworfen (erfasst, nicht angekündigt)"
    assert _statuses(project, "nachtrag") == {"recorded": 5000}
    released = project.cli("sources", "release", "flut").output
    assert released.startswith("flut: 28 Einträge freigegeben")
    assert _statuses(project, "flut") == {"recorded": 25, "scheduled": 28}
    assert [a[:2] for a in _audit(project, "source.held_discarded")] == [
        (_audit(project, "source.held_discarded")[0][0], "nachtrag")
    ]
    assert _audit(project, "source.held_discarded")[0][0].startswith("cli")
    assert [a[1] for a in _audit(project, "source.held_released")] == ["flut"]
    assert "auffällig" not in project.cli("sources", "list").output
    # Released items go out at the next release check (the CLI released them at the wall
    # clock's now); a normal poll announces again.
    routed = await release_due(db, datetime.now(UTC))
    assert len(routed) == 28
    server.routes["/flut.xml"] = Route(body=entries(2, "neu"))
    assert (await poller.poll(_source(poller, "flut"))).held == 0
    unknown = project.cli("sources", "release", "gibtsnicht", ok=False)
    assert unknown.exit_code == 1 and "keine Quelle" in unknown.output


async def test_sources_take_turns_when_routed(
    project: Project, server: FeedServer, poller_world: Any
) -> None:
    """One source's backlog does not make another's item wait behind all of it: the outbox
    (claimed in id order) holds the quiet source's item right after the first of the busy one."""
    poller, db, now = poller_world
    for path in ("/flut.xml", "/ruhig.xml"):
        server.routes[path] = Route(body=entries(1, f"start{path}"))
    server.routes["/nachtrag.xml"] = Route(body=entries(0, "leer"))
    await poller.poll_all(poller.settings.sources.all)  # first polls: only recorded
    server.routes["/flut.xml"] = Route(body=entries(12, "viel"))
    await poller.poll(_source(poller, "flut"))
    server.routes["/ruhig.xml"] = Route(body=entries(1, "wenig"))
    await poller.poll(_source(poller, "ruhig"))
    routed = await release_due(db, now[0])
    assert len(routed) == 13
    with _db(project) as conn:
        order = [
            source
            for (source,) in conn.execute(
                "SELECT i.source FROM outbox o JOIN items i ON i.id = o.item_id "
                "GROUP BY o.item_id ORDER BY min(o.id)"
            )
        ]
    assert order[:3] == ["flut", "ruhig", "flut"], order


# -- the office decides -------------------------------------------------------------------------


def test_office_releases_and_discards_held_items(
    web: Callable[..., Web], project: Project, server: FeedServer
) -> None:
    server.routes["/flut.xml"] = Route(body=entries(1, "vorher"))
    server.routes["/zweite.xml"] = Route(body=entries(1, "vorher2"))
    site = web(
        {
            "sources": {
                "feed": [
                    {"name": "flut", "url": server.url("/flut.xml"), "poll_minutes": 0.02},
                    {
                        "name": "zweite",
                        "url": server.url("/zweite.xml"),
                        "poll_minutes": 0.02,
                        "max_new_per_poll": 2,
                    },
                ]
            }
        }
    )
    project.cli("users", "add", USER, "--email", EMAIL, "--password", PASSWORD)
    deadline = time.monotonic() + 60
    while _statuses(project, "zweite").get("recorded", 0) < 1:
        assert time.monotonic() < deadline, site.running.output[-3000:]
        time.sleep(0.2)
    server.routes["/flut.xml"] = Route(body=entries(21, "welle"))
    server.routes["/zweite.xml"] = Route(body=entries(3, "welle2"))
    while (
        _statuses(project, "flut").get("held", 0) < 21
        or _statuses(project, "zweite").get("held", 0) < 3
    ):
        assert time.monotonic() < deadline, site.running.output[-3000:]
        time.sleep(0.2)
    token = site.csrf("/buero/anmelden")
    login = site.client.post(
        "/buero/anmelden", data={"name": USER, "password": PASSWORD, "csrf_token": token}
    )
    assert login.status_code == 303
    page = site.client.get("/buero").text
    assert "Auffällig:</strong> 21 neue Einträge zurückgehalten (mehr als 20" in page
    assert "Auffällig:</strong> 3 neue Einträge zurückgehalten (mehr als 2" in page
    # Without the form's token: refused, nothing changes.
    forged = site.client.post("/buero/quellen/flut/freigeben", data={"csrf_token": "falsch"})
    assert forged.status_code == 403
    assert _statuses(project, "flut").get("held") == 21
    token = site.csrf("/buero")
    released = site.client.post("/buero/quellen/flut/freigeben", data={"csrf_token": token})
    assert (released.status_code, released.headers["location"]) == (
        303,
        "/buero?freigegeben=21#quellen",
    )
    discarded = site.client.post("/buero/quellen/zweite/verwerfen", data={"csrf_token": token})
    assert discarded.headers["location"] == "/buero?verworfen=3#quellen"
    assert (
        "3 zurückgehaltene Einträge verworfen."
        in site.client.get(discarded.headers["location"]).text
    )
    assert (
        site.client.post(
            "/buero/quellen/gibtsnicht/verwerfen", data={"csrf_token": token}
        ).status_code
        == 404
    )
    assert [a[:2] for a in _audit(project, "source.held_released")] == [("office:buero", "flut")]
    assert [a[:2] for a in _audit(project, "source.held_discarded")] == [("office:buero", "zweite")]
    assert "Auffällig" not in site.client.get("/buero").text
    # The released entries are routed and sent; the discarded ones reach nobody.
    while True:
        with _db(project) as conn:
            open_rows, sent, routed, other = conn.execute(
                "SELECT sum(o.state IN ('queued', 'sending', 'deferred')), "
                "sum(o.state = 'sent'), count(DISTINCT i.id), sum(i.source != 'flut') "
                "FROM items i JOIN outbox o ON o.item_id = i.id WHERE i.status = 'routed'"
            ).fetchone()
        if routed == 21 and not open_rows:
            break
        assert time.monotonic() < deadline + 60, site.running.output[-3000:]
        time.sleep(0.3)
    assert sent >= 21 and not other
    subjects = " ".join(str(m.message["Subject"]) for m in project.smtp.messages())
    assert "Meldung 20" in subjects and "Meldung 0" in subjects
    assert _statuses(project, "zweite") == {"recorded": 4}


def test_held_items_on_the_dashboard_in_a_browser(
    web: Callable[..., Web], project: Project, server: FeedServer, browser_page: Any
) -> None:
    """The conspicuous source on the dashboard passes axe-core; its button releases."""
    from playwright.sync_api import expect

    server.routes["/flut.xml"] = Route(body=entries(1, "vorher"))
    site = web(
        {
            "sources": {
                "feed": [
                    {
                        "name": "flut",
                        "url": server.url("/flut.xml"),
                        "poll_minutes": 0.02,
                        "max_new_per_poll": 1,
                    }
                ]
            }
        }
    )
    project.cli("users", "add", USER, "--email", EMAIL, "--password", PASSWORD)
    deadline = time.monotonic() + 60
    while _statuses(project, "flut").get("recorded", 0) < 1:
        assert time.monotonic() < deadline, site.running.output[-3000:]
        time.sleep(0.2)
    server.routes["/flut.xml"] = Route(body=entries(2, "welle"))
    while _statuses(project, "flut").get("held", 0) < 2:
        assert time.monotonic() < deadline, site.running.output[-3000:]
        time.sleep(0.2)
    page = browser_page
    page.goto(site.url("/buero"))
    page.get_by_label("Benutzername").fill(USER)
    page.get_by_label("Passwort").fill(PASSWORD)
    page.get_by_role("button", name="Anmelden").click()
    expect(page.get_by_text("2 neue Einträge zurückgehalten (mehr als 1")).to_be_visible()
    assert_accessible(page, "Übersicht mit auffälliger Quelle")
    button = page.get_by_role("button", name=re.compile(r"^Freigeben\W+2 Einträge von flut$"))
    button.click()
    expect(page.get_by_role("status")).to_have_text("2 zurückgehaltene Einträge freigegeben.")
    assert_accessible(page, "Übersicht nach Freigabe")
    assert _statuses(project, "flut").get("held") is None


def test_a_source_error_is_one_bounded_line(project: Project, server: FeedServer) -> None:
    path = "/" + "x" * 400 + ".xml"
    server.routes[path] = Route(status=404)
    project.write_config({"sources": {"feed": [{"name": "lang", "url": server.url(path)}]}})
    project.seed(project.write("people.csv", PEOPLE))
    polled = project.cli("sources", "poll", ok=False)
    assert polled.exit_code == 1
    with _db(project) as db:
        (error,) = db.execute("SELECT last_error FROM sources WHERE name = 'lang'").fetchone()
    assert error.startswith("HTTP 404 Not Found von http://127.0.0.1:")
    assert len(error) == 300 and error.endswith("…") and "\n" not in error


async def test_hanging_sources_do_not_hold_up_the_others(
    project: Project, server: FeedServer
) -> None:
    """Two sources that never answer, polled at most two at once: each fails at its own
    timeout and the third is polled all the same."""
    server.routes["/haengt1.xml"] = Route(body=entries(1, "h1"), delay=30)
    server.routes["/haengt2.xml"] = Route(body=entries(1, "h2"), delay=30)
    server.routes["/gut.xml"] = Route(body=entries(2, "g"))
    feeds = [
        {"name": name, "url": server.url(f"/{name}.xml"), "timeout": 1}
        for name in ("haengt1", "haengt2", "gut")
    ]
    project.write_config({"sources": {"max_concurrent_polls": 2, "feed": feeds}})
    project.seed(project.write("people.csv", PEOPLE))
    settings = project.settings
    now = datetime(2026, 12, 1, 8, tzinfo=UTC)
    async with Database(settings.database_url) as db, httpx.AsyncClient(trust_env=False) as client:
        poller = SourcePoller(db, settings, client, lambda: now)
        started = time.monotonic()
        results = await poller.poll_all(settings.sources.all)
        elapsed = time.monotonic() - started
    assert [(r.source, r.new) for r in results] == [("haengt1", 0), ("haengt2", 0), ("gut", 2)]
    assert all("innerhalb von 1 Sekunden" in (r.error or "") for r in results[:2])
    assert results[2].error is None
    assert elapsed < 10, f"{elapsed:.1f} s"
