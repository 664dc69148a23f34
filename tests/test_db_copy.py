"""`notifier db copy --to postgresql+asyncpg://…` (issue 16, item 4): a SQLite database built by
the real CLI and a real send (some messages still queued) is copied to the suite's PostgreSQL;
every table's rows are compared, and `notifier run` on the copy finishes the send without a
duplicate. Refusals: a target that is not empty, a service that runs, a row the target refuses.
Real SQLite files, real PostgreSQL, real processes and the recording SMTP server."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select, text

from notifier.accounts import check_login
from notifier.db import Database, queries
from notifier.db.copy import PREPARED, tables
from notifier.db.engine import head_revision
from notifier.db.models import Organisation, Rhythm, Role
from notifier.links import LinkTarget
from notifier.selfservice import Choices, confirm, sign_up

from .bouncemail import dsn
from .conftest import REPO, Project, Running, run_coroutine
from .smtpd import RecordingSMTP
from .test_outbox_promises import note, people

# Tables the build below cannot fill through the CLI and the service alone.
MAY_BE_EMPTY: set[str] = set()


def sqlite_url(project: Project) -> str:
    return f"sqlite+aiosqlite:///{project.root / 'var' / 'test.db'}"


async def _all_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows, read through the models' types, in primary-key order."""
    found: dict[str, list[tuple[Any, ...]]] = {}
    async with Database(url) as db, db.engine.connect() as connection:
        for table in tables():
            result = await connection.execute(select(table).order_by(*table.primary_key.columns))
            found[table.name] = [tuple(row) for row in result]
        version = await connection.execute(text("SELECT version_num FROM alembic_version"))
        found["alembic_version"] = [tuple(row) for row in version]
    return found


def all_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    return run_coroutine(lambda: _all_rows(url))


async def _sign_ups(project: Project) -> None:
    """Two sign-ups as the web form makes them: one confirmed, one still pending."""
    settings = project.settings
    now = datetime.now(UTC)
    async with Database(settings.database_url) as db, db.transaction() as session:
        org = await session.scalar(select(Organisation).where(Organisation.name == "Bitburg"))
        assert org is not None
        for email in ("neu.bestaetigt@bitburg.example", "neu.offen@bitburg.example"):
            choices = Choices("Neu Person", org, Role.staff, Rhythm.immediate, ("strategie",))
            await sign_up(session, email, choices, ip="192.0.2.7", settings=settings, now=now)
    async with Database(settings.database_url) as db, db.transaction() as session:
        sub_id = await session.scalar(
            text("SELECT id FROM subscribers WHERE email = 'neu.bestaetigt@bitburg.example'")
        )
        await confirm(
            session, LinkTarget(int(sub_id), 0), ip="192.0.2.7", settings=settings, now=now
        )
    async with Database(settings.database_url) as db, db.transaction() as session:
        # A failed office login leaves its throttling counters.
        failed = await check_login(
            session, "buero", "falsch-falsch-1", client="192.0.2.8", settings=settings.web, now=now
        )
        assert failed.user is None


async def _briefings(project: Project) -> int:
    """The daily briefings of the items routed so far (as the scheduler builds them)."""
    async with Database(project.settings.database_url) as db, db.transaction() as session:
        return await queries.build_briefings(
            session, Rhythm.daily, datetime.now(UTC), datetime.now(UTC)
        )


def open_rows(url: str) -> int:
    async def count() -> int:
        async with Database(url) as db, db.engine.connect() as connection:
            found = await connection.execute(
                text("SELECT count(*) FROM outbox WHERE state IN ('queued','sending','deferred')")
            )
            return int(found.scalar_one())

    return run_coroutine(count)


def build_database(project: Project, service: Callable[[], Running]) -> Counter[str]:
    """A SQLite database as the CLI and a stopped send leave it; returns what the SMTP server
    received (recipient + subject, counted)."""
    project.write_config(
        {
            "delivery": {"rate_per_second": 15, "lease_seconds": 2},
            "sources": {
                "feed": [{"name": "projekt-news", "url": str(REPO / "examples" / "news.xml")}]
            },
        }
    )
    project.seed()
    project.cli("subscribers", "import", project.write("viele.csv", people(150, "kopie.example")))
    project.cli(
        "users",
        "add",
        "buero",
        "--email",
        "buero@kreis.example",
        "--password",
        "ein-langes-passwort",
    )
    project.cli("tokens", "add", "fachverfahren")
    # Someone asks to be erased: the salted hash of the address is kept (erased_addresses).
    project.cli("subscribers", "erase", "p7@kopie.example", "--yes")
    project.cli("sources", "poll")
    run_coroutine(lambda: _sign_ups(project))
    project.cli("announce", project.write("a.md", note("Umzug")))
    later = '+++\nsubject = "Abgesagt"\nsend_at = "2030-01-07 09:00"\n+++\nText.\n'
    project.cli("announce", project.write("b.md", later))
    cancelled = project.cli("announcements", "cancel", _item_id(project, "Abgesagt"))
    assert "abgesagt" in cancelled.output

    first = service()
    project.smtp.wait_for(30, timeout=60)
    assert first.stop() == 0
    assert run_coroutine(lambda: _briefings(project)) >= 1
    # A delivery report comes back for one of the messages sent (table bounces).
    bounced = project.smtp.messages()[0]
    report = dsn(
        bounced.mail_from,
        bounced.rcpt_tos[0],
        "5.1.1",
        str(bounced.message["Message-ID"]),
    )
    project.cli("bounces", "feed", project.write("dsn.eml", report.decode()))
    received = Counter(
        f"{r}|{m.message['Subject']}" for m in project.smtp.messages() for r in m.rcpt_tos
    )
    assert open_rows(sqlite_url(project)) > 50, "the send ended before it was stopped"
    return received


def _item_id(project: Project, subject: str) -> str:
    with sqlite3.connect(project.root / "var" / "test.db") as db:
        row = db.execute("SELECT id FROM items WHERE subject = ?", (subject,)).fetchone()
    return str(row[0])


def test_copy_to_postgresql_and_the_send_goes_on_there(
    project: Project, service: Callable[[], Running], postgres_url: str
) -> None:
    received = build_database(project, service)
    before = all_rows(sqlite_url(project))
    empty = {name for name, rows in before.items() if not rows}
    assert empty <= MAY_BE_EMPTY, f"tables the build left empty: {sorted(empty)}"

    copied = project.cli("db", "copy", "--to", postgres_url)
    lines = copied.output.splitlines()
    # Every table of the metadata is copied and counted on both sides.
    for table in tables():
        count = len(before[table.name])
        assert any(line.split() == [table.name, str(count), str(count)] for line in lines), (
            table.name,
            copied.output,
        )
    head = str(head_revision())
    assert ["alembic_version", head, head] in [line.split() for line in lines], copied.output
    assert "die Zahlen stimmen überein" in copied.output

    after = all_rows(postgres_url)
    assert set(after) == set(before)
    for name, rows in before.items():
        assert after[name] == rows, name

    # Each sequence stands at the largest id copied; new rows continue after it.
    async def sequences() -> list[tuple[str, int, int]]:
        found = []
        async with Database(postgres_url) as db, db.engine.connect() as connection:
            for table in tables():
                for column in table.primary_key.columns:
                    name = await connection.scalar(
                        text("SELECT pg_get_serial_sequence(:t, :c)"),
                        {"t": table.name, "c": column.name},
                    )
                    if name is not None:
                        last = await connection.scalar(text(f"SELECT last_value FROM {name}"))
                        top = await connection.scalar(select(func.max(column)))
                        found.append((table.name, int(last), int(top or 1)))
        return found

    found = run_coroutine(sequences)
    assert {name for name, _, _ in found} >= {"outbox", "subscribers", "items", "audit_log"}
    assert all(last == top for _, last, top in found), found

    project.write_config({"database": {"url": postgres_url}})
    project.cli("tokens", "add", "zweiter")
    ids = [row[0] for row in all_rows(postgres_url)["api_tokens"]]
    assert ids == sorted(ids) and len(set(ids)) == 2 and ids[1] > ids[0]

    second = RecordingSMTP().start()
    try:
        project.write_config({"database": {"url": postgres_url}, "smtp": {"port": second.port}})
        last = service()
        deadline = time.monotonic() + 90
        while open_rows(postgres_url):
            assert time.monotonic() < deadline, last.output[-3000:]
            time.sleep(0.3)
        assert last.stop() == 0
        received_second = Counter(
            f"{r}|{m.message['Subject']}" for m in second.messages() for r in m.rcpt_tos
        )
    finally:
        second.stop()

    # Each recipient got each message exactly once, over both servers; nothing was lost.
    both = received + received_second
    assert max(both.values()) == 1, [k for k, n in both.items() if n > 1][:5]
    announced = {k.split("|")[0] for k in both if k.endswith("|Umzug")}
    routed = {row[0] for row in run_coroutine(lambda: _emails_of(postgres_url, "Umzug"))}
    assert announced == routed and len(routed) > 150
    assert not any(k.endswith("|Abgesagt") for k in both)
    states = Counter(row[5] for row in all_rows(postgres_url)["outbox"])
    assert set(states) <= {"sent", "cancelled"}, states
    print(f"db copy: {len(received)} sent from SQLite, {len(received_second)} from PostgreSQL")


async def _emails_of(url: str, subject: str) -> list[tuple[str]]:
    async with Database(url) as db, db.engine.connect() as connection:
        found = await connection.execute(
            text(
                "SELECT s.email FROM outbox o JOIN subscribers s ON s.id = o.subscriber_id "
                "JOIN items i ON i.id = o.item_id WHERE i.subject = :subject"
            ),
            {"subject": subject},
        )
        return [(row[0],) for row in found]


def test_a_target_that_is_not_empty_is_refused(project: Project, postgres_url: str) -> None:
    project.seed()
    project.cli("db", "copy", "--to", postgres_url)
    # (The test server trusts every login: a password in the URL is accepted and ignored.)
    with_password = postgres_url.replace("@", ":geheim@", 1)
    again = project.cli("db", "copy", "--to", with_password, ok=False)
    assert again.exit_code == 1
    assert "geheim" not in again.output and "***" in again.output, again.output
    assert "ist nicht leer: Tabelle audit_log enthält 13 Zeilen" in again.output, again.output
    assert "Fehler:" in again.output


def test_a_target_prepared_by_migrate_is_accepted_and_keeps_the_source_key(
    project: Project, postgres_url: str
) -> None:
    """`notifier migrate` on the new database makes its own Message-ID key and the topics;
    the copy replaces them with the source's."""
    project.seed()
    source = all_rows(sqlite_url(project))
    pg_config = project.root / "pg.toml"
    project.write_config({"database": {"url": postgres_url}})
    project.config.rename(pg_config)
    project.write_config({})
    project.cli("--config", pg_config, "migrate")
    assert all_rows(postgres_url)["topics"]
    assert all_rows(postgres_url)["installation"] != source["installation"]
    project.cli("db", "copy", "--to", postgres_url)
    assert all_rows(postgres_url)["installation"] == source["installation"]


def test_a_running_service_is_refused(
    project: Project, service: Callable[[], Running], postgres_url: str
) -> None:
    project.seed()
    running = service()
    refused = project.cli("db", "copy", "--to", postgres_url, ok=False)
    assert refused.exit_code == 1
    assert "laufenden notifier-Dienst benutzt" in refused.output, refused.output
    assert f"Prozess {running.proc.pid}" in refused.output
    assert running.stop() == 0
    # Nothing was written: the target has no schema yet.
    assert not run_coroutine(lambda: _has_tables(postgres_url))


async def _has_tables(url: str) -> bool:
    async with Database(url) as db, db.engine.connect() as connection:
        found = await connection.execute(
            text("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
        )
        return bool(found.scalar_one())


def test_a_row_the_target_refuses_leaves_it_empty(project: Project, postgres_url: str) -> None:
    """SQLite does not enforce VARCHAR lengths, PostgreSQL does: the copy fails on such a row,
    names the table, and rolls every table back."""
    project.seed()
    with sqlite3.connect(project.root / "var" / "test.db") as db:
        db.execute("UPDATE subscribers SET name = ? WHERE id = 1", ("x" * 300,))
    failed = project.cli("db", "copy", "--to", postgres_url, ok=False)
    assert failed.exit_code == 1
    assert "Tabelle subscribers" in failed.output and "zurückgenommen" in failed.output
    rows = all_rows(postgres_url)
    assert {name for name, found in rows.items() if found} <= {*PREPARED, "alembic_version"}
    assert not rows["organisations"]


def test_a_source_from_a_newer_version_is_refused(project: Project, postgres_url: str) -> None:
    project.seed()
    with sqlite3.connect(project.root / "var" / "test.db") as db:
        db.execute("UPDATE alembic_version SET version_num = '9999'")
    refused = project.cli("db", "copy", "--to", postgres_url, ok=False)
    assert refused.exit_code == 1
    assert "Schema-Stand 9999 ist dieser notifier-Version unbekannt" in refused.output
    assert not run_coroutine(lambda: _has_tables(postgres_url))


def test_counts_that_differ_fail_the_copy_and_keep_nothing(
    project: Project, postgres_url: str
) -> None:
    """A target that silently drops rows (here a trigger an administrator left behind): the
    counts differ, both are printed, and the copy is rolled back."""
    project.seed()
    pg_config = project.root / "pg.toml"
    project.write_config({"database": {"url": postgres_url}})
    project.config.rename(pg_config)
    project.write_config({})
    project.cli("--config", pg_config, "migrate")

    async def add_trigger() -> None:
        async with Database(postgres_url) as db, db.engine.begin() as connection:
            await connection.execute(
                text(
                    "CREATE FUNCTION skip_cli() RETURNS trigger AS $$ BEGIN "
                    "IF NEW.action = 'subscriber.imported' THEN RETURN NULL; END IF; "
                    "RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            await connection.execute(
                text(
                    "CREATE TRIGGER skip_cli BEFORE INSERT ON audit_log "
                    "FOR EACH ROW EXECUTE FUNCTION skip_cli()"
                )
            )

    run_coroutine(add_trigger)
    source = all_rows(sqlite_url(project))
    imports = sum(1 for row in source["audit_log"] if row[3] == "subscriber.imported")
    assert imports >= 1
    failed = project.cli("db", "copy", "--to", postgres_url, ok=False)
    assert failed.exit_code == 1
    total = len(source["audit_log"])
    assert ["audit_log", str(total), str(total - imports), "✗", "verschieden"] in [
        line.split() for line in failed.output.splitlines()
    ], failed.output
    assert "Fehler: die Zeilenzahlen stimmen nicht überein (Tabelle audit_log)" in failed.output
    rows = all_rows(postgres_url)
    assert not rows["organisations"] and not rows["subscribers"] and not rows["audit_log"]


@pytest.mark.parametrize("target", ["sqlite:///anders.db", "mysql://x@y/z"])
def test_a_target_that_is_no_postgresql_is_refused(project: Project, target: str) -> None:
    project.seed()
    refused = project.cli("db", "copy", "--to", target, ok=False)
    assert refused.exit_code == 1 and "keine PostgreSQL-Adresse" in refused.output


def test_every_metadata_table_is_copied() -> None:
    """The copy takes its tables from the models: a table added there is copied too."""
    from notifier.db.models import Base

    assert {t.name for t in tables()} == set(Base.metadata.tables)
    order = [t.name for t in tables()]
    assert order.index("subscribers") < order.index("outbox")
    assert order.index("organisations") < order.index("subscribers")
