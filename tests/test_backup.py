"""`notifier db backup` / `db restore` (issue 16, item 3): a backup taken while a real
`notifier run` sends, restored into a service that finishes the send; refusals for a database in
use, an existing file, a file that is no notifier database, and PostgreSQL. Real SQLite files,
real processes, the real recording SMTP server; nothing is mocked."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine

from notifier.db.engine import head_revision

from .conftest import Project, Running
from .smtpd import RecordingSMTP
from .test_outbox_promises import note, people


def backup_states(path: Path) -> dict[str, str]:
    """Each recipient's outbox state in a backup file."""
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT s.email, o.state FROM outbox o JOIN subscribers s ON s.id = o.subscriber_id"
        ).fetchall()
    return {email: state for email, state in rows}


def open_rows(database: Path) -> int:
    with sqlite3.connect(database) as db:
        query = "SELECT count(*) FROM outbox WHERE state IN ('queued', 'sending', 'deferred')"
        return int(db.execute(query).fetchone()[0])


def test_a_backup_during_a_send_restores_into_a_service_that_finishes_it(
    project: Project, service: Callable[[], Running]
) -> None:
    total = 20_000
    project.seed(project.write("many.csv", people(total, "sicher.example")))
    # A short lease: rows the first service held at the backup moment come back soon.
    project.write_config({"delivery": {"lease_seconds": 2}})
    project.cli("announce", project.write("a.md", note("Sicherung")))
    first = service()
    project.smtp.wait_for(3000, timeout=60)
    before = len(project.smtp.messages())
    file = project.root / "sicherung.db"
    made = project.cli("db", "backup", file)
    assert len(project.smtp.messages()) < total, "the send ended before the backup"
    assert "geschrieben und geprüft" in made.output, made.output
    assert f"{total} Abonnenten, {total} Outbox-Nachrichten" in made.output, made.output

    # The copy verifies on its own and holds a state in the middle of the send.
    with sqlite3.connect(file) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (head_revision(),)
        ]
    states = backup_states(file)
    counts = Counter(states.values())
    assert len(states) == total
    assert counts["queued"] > 0, counts
    # Whatever arrived before the backup began was claimed (sent, or on its way) in the copy.
    early = {r for m in project.smtp.messages()[:before] for r in m.rcpt_tos}
    assert {states[r] for r in early} <= {"sent", "sending"}

    refused = project.cli("db", "restore", file, ok=False)
    assert refused.exit_code == 1
    assert "laufenden notifier-Dienst benutzt" in refused.output, refused.output
    assert "Fehler:" in refused.output and "\n" not in refused.output.strip()
    assert first.stop() == 0
    received_first = project.smtp.recipients()

    restored = project.cli("db", "restore", file)
    database = project.root / "var" / "test.db"
    assert f"als {database} eingesetzt" in restored.output, restored.output
    kept = list(database.parent.glob("test.db.vor-wiederherstellung-*"))
    assert len(kept) == 1 and f"liegt unter {kept[0]}" in restored.output, restored.output
    assert not database.with_name("test.db-wal").exists()
    # The kept file is the first service's database as it stopped, its WAL folded in.
    assert backup_states(kept[0]) != states
    assert Counter(backup_states(kept[0]).values())["sent"] == len(set(received_first))

    second = RecordingSMTP().start()
    try:
        project.write_config({"smtp": {"port": second.port}, "delivery": {"lease_seconds": 2}})
        last = service()
        expected = {email for email, state in states.items() if state != "sent"}
        second.wait_for(len(expected), timeout=60)
        deadline = time.monotonic() + 30
        while open_rows(database):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert last.stop() == 0
        received_second = second.recipients()
    finally:
        second.stop()

    # The second service sent exactly what the backup had not recorded as sent, each once.
    assert Counter(received_second) == Counter(expected)
    assert set(received_first) | set(received_second) == set(states)
    # Twice over both servers, before the backup moment: only messages on their way then
    # (recorded as "sending" in the backup), never one recorded as sent.
    twice = early & set(received_second)
    in_flight = {email for email, state in states.items() if state == "sending"}
    assert twice <= in_flight, sorted(twice - in_flight)[:5]
    print(f"backup: {dict(counts)}; sent twice (in flight at the backup): {len(twice)}")


def test_backup_refuses_an_existing_file_and_restore_a_file_that_is_no_database(
    project: Project,
) -> None:
    project.seed()
    file = project.write("alt.db", "keine Datenbank")
    refused = project.cli("db", "backup", file, ok=False)
    assert refused.exit_code == 1
    assert "existiert schon; überschreiben mit --force" in refused.output, refused.output
    assert file.read_text("utf-8") == "keine Datenbank"

    elsewhere = project.cli("db", "backup", project.root / "fehlt" / "a.db", ok=False)
    assert "das Verzeichnis" in elsewhere.output and "existiert nicht" in elsewhere.output

    bad = project.cli("db", "restore", file, ok=False)
    assert bad.exit_code == 1 and "keine SQLite-Datenbank" in bad.output, bad.output

    made = project.cli("db", "backup", "--force", file)
    assert "12 Abonnenten, 0 Outbox-Nachrichten" in made.output, made.output
    with sqlite3.connect(file) as db:
        db.execute("DROP TABLE alembic_version")
    foreign = project.cli("db", "restore", file, ok=False)
    assert "keine notifier-Datenbank" in foreign.output, foreign.output


def _downgrade(path: Path, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    from notifier.db.engine import MIGRATIONS

    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as connection:
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            cfg.attributes["connection"] = connection
            command.downgrade(cfg, revision)
    finally:
        engine.dispose()


def test_an_older_backup_is_migrated_when_the_service_starts(project: Project) -> None:
    project.seed()
    older = project.root / "alt.db"
    # A backup made before the newest migrations: the database as 0008 left it (the later
    # migrations' own downgrades take it there).
    _downgrade(project.root / "var" / "test.db", "0008")
    project.cli("db", "backup", older)
    restored = project.cli("db", "restore", older)
    assert "Schema-Stand 0008, wird beim nächsten Start migriert" in restored.output
    project.cli("migrate")
    with sqlite3.connect(project.root / "var" / "test.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (head_revision(),)
        ]
        assert db.execute("SELECT count(*) FROM sender_status").fetchone() == (0,)
        # 0012 copies the outbox (SQLite's batch mode): its partial indexes keep their WHERE.
        indexes = dict(
            db.execute("SELECT name, sql FROM sqlite_master WHERE tbl_name = 'outbox'").fetchall()
        )
        assert "WHERE state IN ('queued', 'deferred', 'sending')" in indexes["ix_outbox_open"]
        assert "WHERE state IN ('failed', 'deferred')" in indexes["ix_outbox_trouble"]
        assert "ix_outbox_subscriber_id" in indexes
    assert "12 Abonnenten" in project.cli("db", "backup", project.root / "neu.db").output


def test_postgresql_is_refused_with_pg_dump(project: Project) -> None:
    project.write_config({"database": {"url": "postgresql+asyncpg://notifier:geheim@db/x"}})
    for args in (("backup", "a.db"), ("restore", "a.db")):
        refused = project.cli("db", *args, ok=False)
        assert refused.exit_code == 1
        assert "pg_dump -Fc" in refused.output and "geheim" not in refused.output


def test_restore_folds_a_stale_wal_into_the_kept_file_and_leaves_none_beside_the_backup(
    project: Project,
) -> None:
    """A process that ended without closing the database (a crash) leaves a -wal holding
    writes not yet in the file: restore keeps them with the replaced file, and no -wal of the
    old file is left to be replayed into the restored one."""
    project.seed()
    file = project.root / "sicherung.db"
    project.cli("db", "backup", file)
    database = project.root / "var" / "test.db"
    crash = (
        "import os, sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('PRAGMA wal_autocheckpoint=0')\n"
        "db.execute('CREATE TABLE spur (x)')\n"
        "db.execute(\"INSERT INTO spur VALUES ('nach der Sicherung')\")\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", crash, str(database)], check=True)
    assert database.with_name("test.db-wal").stat().st_size > 0

    restored = project.cli("db", "restore", file)
    (kept,) = database.parent.glob("test.db.vor-wiederherstellung-*")
    assert f"liegt unter {kept}" in restored.output, restored.output
    assert not database.with_name("test.db-wal").exists()
    assert not kept.with_name(kept.name + "-wal").exists()
    with sqlite3.connect(kept) as db:
        assert db.execute("SELECT x FROM spur").fetchall() == [("nach der Sicherung",)]
    with sqlite3.connect(database) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert "spur" not in tables and "subscribers" in tables
    assert "12 Abonnenten" in project.cli("db", "backup", project.root / "danach.db").output
