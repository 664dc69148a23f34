"""Database and file failures in the ``notifier`` command: one German line on stderr, exit code
1, no traceback (unless ``--verbose``), no secret, nothing stored, and no success printed before
the transaction committed. The failures are real: a file that is no database, a WAL file on a
device that is always full, a PostgreSQL port nobody listens on, SQLite's own errors."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import create_engine, exc, text

from notifier.db.failures import database_error

from .conftest import EXAMPLE, ORGANISATIONS, REPO, Project, free_port

GARBAGE = b"Dies ist keine Datenbank, nur ein Text, der so tut. " * 200
ANNOUNCEMENT = '+++\nsubject = "Sprechstunde"\nsend_at = "now"\n+++\nAm **Montag** in Prüm.\n'
SECRET = "geheim-Passwort-42"


def _database(project: Project) -> Path:
    return project.root / "var" / "test.db"


def _one_error_line(result_stderr: str, start: str) -> str:
    lines = result_stderr.splitlines()
    assert len(lines) == 1, result_stderr
    assert lines[0].startswith(start), lines[0]
    assert "Traceback" not in result_stderr
    return lines[0]


def _commands(project: Project) -> list[list[str | Path]]:
    """Every command that uses the database, with arguments it accepts."""
    announcement = project.write("sprechstunde.md", ANNOUNCEMENT)
    return [
        ["migrate"],
        ["status"],
        ["users", "add", "buero", "--password", "ein-langes-passwort"],
        ["users", "list"],
        ["tokens", "add", "cms"],
        ["tokens", "revoke", "cms"],
        ["organisations", "load", ORGANISATIONS],
        ["subscribers", "import", EXAMPLE],
        ["subscribers", "export"],
        ["announce", announcement],
        ["announce", announcement, "--dry-run"],
        ["announcements", "list"],
        ["announcements", "cancel", "1"],
        ["announcements", "follow", "1"],
        ["sources", "list"],
        ["sources", "poll"],
    ]


def test_every_command_reports_a_file_that_is_no_database_in_one_line(project: Project) -> None:
    # A configured source, so that the sources commands reach the database too.
    project.write_config(
        {"sources": {"feed": [{"name": "news", "url": str(REPO / "examples" / "news.xml")}]}}
    )
    database = _database(project)
    database.parent.mkdir(parents=True)
    database.write_bytes(GARBAGE)

    for command in _commands(project):
        result = project.cli(*command, ok=False)

        assert result.exit_code == 1, (command, result.output)
        line = _one_error_line(
            result.stderr, "Fehler: Datenbank: die Datei ist keine SQLite-Datenbank ("
        )
        assert str(database) in line
        assert result.stdout == "", (command, result.stdout)
        assert database.read_bytes() == GARBAGE  # nothing written, nothing stored


def test_verbose_shows_the_traceback_before_the_line(project: Project) -> None:
    database = _database(project)
    database.parent.mkdir(parents=True)
    database.write_bytes(GARBAGE)

    result = project.cli("--verbose", "status", ok=False)

    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "file is not a database" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("Fehler: Datenbank: die Datei ist keine")


def _run_service(project: Project) -> subprocess.CompletedProcess[str]:
    """``notifier run`` as a real process, its stdout and stderr apart."""
    return subprocess.run(
        [sys.executable, "-m", "notifier", "--config", str(project.config), "run"],
        cwd=project.root,
        env={k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_service_does_not_start_on_a_file_that_is_no_database(project: Project) -> None:
    database = _database(project)
    database.parent.mkdir(parents=True)
    database.write_bytes(GARBAGE)

    result = _run_service(project)

    assert result.returncode == 1, result.stderr
    _one_error_line(result.stderr, "Fehler: Datenbank: die Datei ist keine SQLite-Datenbank (")
    assert "notifier läuft" not in result.stdout
    assert database.read_bytes() == GARBAGE


def test_a_database_path_below_a_regular_file_is_one_line(project: Project) -> None:
    blocker = project.write("kein-ordner", "eine Datei, kein Ordner\n")
    project.write_config({"database": {"url": f"sqlite+aiosqlite:///{blocker}/test.db"}})

    result = project.cli("migrate", ok=False)

    assert result.exit_code == 1
    line = _one_error_line(
        result.stderr, "Fehler: Datenbank: die Datenbankdatei lässt sich nicht öffnen ("
    )
    assert str(blocker) in line
    assert blocker.read_text("utf-8") == "eine Datei, kein Ordner\n"


def _fill_the_disk(project: Project) -> None:
    """Make the database's WAL file a full device: every write to it fails with ENOSPC, as on
    a full disk, while the database still reads. SQLite removes the node when it closes."""
    wal = _database(project).with_name("test.db-wal")
    assert not wal.exists()  # SQLite removed it after the last command
    try:
        os.mknod(wal, stat.S_IFCHR | 0o600, os.makedev(1, 7))  # the device of /dev/full
    except PermissionError:
        pytest.skip("making a full device (like /dev/full) needs CAP_MKNOD (root)")


def _count(project: Project, sql: str) -> int:
    wal = _database(project).with_name("test.db-wal")
    if wal.exists() and stat.S_ISCHR(wal.stat().st_mode):
        wal.unlink()
    with closing(sqlite3.connect(_database(project))) as db:
        count: int = db.execute(sql).fetchone()[0]
    return count


def test_announce_on_a_full_disk_prints_no_audience_and_stores_nothing(project: Project) -> None:
    project.seed()
    file = project.write("sprechstunde.md", ANNOUNCEMENT)
    _fill_the_disk(project)

    result = project.cli("announce", file, ok=False)

    assert result.exit_code == 1, result.output
    line = _one_error_line(result.stderr, "Fehler: Datenbank: kein Speicherplatz frei (")
    assert str(_database(project)) in line
    # The audience, the send time, the number: none of it, since nothing was committed.
    assert result.stdout == ""
    assert _count(project, "SELECT count(*) FROM items") == 0
    assert _count(project, "SELECT count(*) FROM audit_log WHERE action LIKE 'announcement%'") == 0

    # With room again, the same file is scheduled and only then reported.
    scheduled = project.cli("announce", file)
    assert (
        "Empfänger: 12" in scheduled.stdout and "Geplant als Mitteilung Nr. 1." in scheduled.stdout
    )


def test_commands_that_write_on_a_full_disk_store_nothing(project: Project) -> None:
    project.seed()
    _fill_the_disk(project)

    token = project.cli("tokens", "add", "cms", ok=False)

    assert token.exit_code == 1
    _one_error_line(token.stderr, "Fehler: Datenbank: kein Speicherplatz frei (")
    assert token.stdout == ""  # the token is not shown: it was never stored
    assert _count(project, "SELECT count(*) FROM api_tokens") == 0

    subscribers = project.write(
        "neu.csv",
        "email,name,role,organisation,topics,rhythm\n"
        "neu@vg-arzfeld.example,Neue Person,staff,Verbandsgemeinde Arzfeld,,immediate\n",
    )
    _fill_the_disk(project)
    imported = project.cli("subscribers", "import", subscribers, ok=False)

    assert imported.exit_code == 1
    _one_error_line(imported.stderr, "Fehler: Datenbank: kein Speicherplatz frei (")
    assert imported.stdout == ""
    assert _count(project, "SELECT count(*) FROM subscribers") == 12


def test_unreachable_postgresql_is_one_line_without_the_password(project: Project) -> None:
    port = free_port()  # nobody listens there
    url = f"postgresql+asyncpg://notifier:{SECRET}@127.0.0.1:{port}/notifier"
    project.write_config({"database": {"url": url}})
    file = project.write("sprechstunde.md", ANNOUNCEMENT)

    for command in (["migrate"], ["announce", file], ["status"]):
        result = project.cli(*command, ok=False)

        assert result.exit_code == 1, result.output
        line = _one_error_line(
            result.stderr, "Fehler: Datenbank: der Datenbankserver ist nicht erreichbar ("
        )
        assert f"notifier:***@127.0.0.1:{port}/notifier" in line
        assert SECRET not in result.output
        assert result.stdout == ""

    verbose = project.cli("-v", "status", ok=False)
    assert "Traceback" in verbose.stderr and SECRET not in verbose.output


def test_service_start_with_unreachable_postgresql_is_one_line(project: Project) -> None:
    port = free_port()
    project.write_config(
        {"database": {"url": f"postgresql+asyncpg://notifier:{SECRET}@127.0.0.1:{port}/x"}}
    )

    result = _run_service(project)

    assert result.returncode == 1, result.stderr
    _one_error_line(result.stderr, "Fehler: Datenbank: der Datenbankserver ist nicht erreichbar")
    assert SECRET not in result.stdout + result.stderr


def test_missing_postgresql_database_is_named(project: Project, postgres_user: str) -> None:
    from .conftest import PG_HOST, PG_PORT

    url = f"postgresql+asyncpg://{postgres_user}:{SECRET}@{PG_HOST}:{PG_PORT}/gibt_es_nicht"
    project.write_config({"database": {"url": url}})

    result = project.cli("migrate", ok=False)

    assert result.exit_code == 1
    line = _one_error_line(
        result.stderr, "Fehler: Datenbank: die Datenbank existiert auf dem Server nicht ("
    )
    assert "gibt_es_nicht" in line and SECRET not in result.output


def test_export_to_a_full_device_names_the_file(project: Project) -> None:
    project.seed()

    result = project.cli("subscribers", "export", "-o", "/dev/full", ok=False)

    assert result.exit_code == 1
    _one_error_line(result.stderr, "Fehler: Datei /dev/full: kein Speicherplatz frei")


# -- SQLite's own errors, raised by SQLite on real files ---------------------------------------


def _sqlite_failure(url: str, statement: str) -> exc.DBAPIError:
    engine = create_engine(url, connect_args={"timeout": 0})
    try:
        with pytest.raises(exc.DBAPIError) as info, engine.begin() as connection:
            connection.execute(text(statement))
    finally:
        engine.dispose()
    return info.value


def test_read_only_and_locked_databases_name_their_cause(tmp_path: Path) -> None:
    path = tmp_path / "test.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (x)")
    url = f"sqlite+aiosqlite:///{path}"

    read_only = _sqlite_failure(
        f"sqlite:///file:{path}?mode=ro&uri=true", "INSERT INTO t VALUES (1)"
    )
    found = database_error(read_only, url)
    assert found is not None and found.cause == "read_only"
    assert str(found) == (
        f"Datenbank: keine Schreibberechtigung oder schreibgeschützt "
        f"({path}: attempt to write a readonly database)"
    )

    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        locked = _sqlite_failure(f"sqlite:///{path}", "INSERT INTO t VALUES (1)")
    finally:
        holder.close()
    found = database_error(locked, url)
    assert found is not None and found.cause == "locked"
    assert str(found).startswith("Datenbank: gesperrt, ein anderer Prozess schreibt gerade (")

    unknown = _sqlite_failure(f"sqlite:///{path}", "INSERT INTO fehlt VALUES (1)")
    found = database_error(unknown, url)
    assert found is not None and found.cause is None
    assert str(found) == f"Datenbank: no such table: fehlt ({path})"
