"""The personal-data export and the provenance migration on every backend (a SQLite file and a
real PostgreSQL database): the same document from the same rows, and migration 0011 fills the
provenance of rows stored before it from the consents and the audit log."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sqlalchemy import Connection, text

from notifier.data_export import personal_data
from notifier.db import Database
from notifier.db.engine import MIGRATIONS
from notifier.routing import release_due

from .conftest import Project


def _people() -> str:
    return (
        "email,name,role,organisation,topics,rhythm\n"
        "sofort@contract.example,Sofia Sofort,staff,Bitburg,,immediate\n"
        "woche@contract.example,Werner Woche,mayor,Bitburg,mobilitaet,weekly\n"
    )


async def test_the_export_holds_messages_and_the_briefing_queue(
    project: Project, backend: str
) -> None:
    project.write_config({"database": {"url": backend}})
    await asyncio.to_thread(project.seed, project.write("leute.csv", _people()))
    note = '+++\nsubject = "Rundschreiben"\nsend_at = "now"\n+++\nText.\n'
    await asyncio.to_thread(project.cli, "announce", project.write("a.md", note))
    db = Database(project.settings.database_url)
    try:
        assert await release_due(db, datetime.now(UTC)) == [(1, 2)]
        now = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
        async with db.reading() as session:
            ids = dict((await session.execute(text("SELECT email, id FROM subscribers"))).all())
            sofort = await personal_data(
                session, ids["sofort@contract.example"], project.settings, now=now
            )
            woche = await personal_data(
                session, ids["woche@contract.example"], project.settings, now=now
            )
            assert await personal_data(session, 10**9, project.settings, now=now) is None
    finally:
        await db.engine.dispose()
    assert sofort is not None and woche is not None
    first = sofort.document()
    assert first["created_at"] == "2026-12-07T09:00:00+00:00"
    [message] = first["messages"]
    assert (message["kind"], message["subject"], message["state"]) == (
        "announcement",
        "Rundschreiben",
        "queued",
    )
    assert first["provenance"]["source"] == "import"
    assert first["provenance"]["actor"].endswith("(leute.csv)")
    assert [a["action"] for a in first["audit"]] == ["subscriber.imported"]
    second = woche.document()
    assert second["messages"] == []
    assert [q["subject"] for q in second["briefing_queue"]] == ["Rundschreiben"]
    assert second["subscriber"]["rhythm"] == "weekly" and not second["subscriber"]["all_topics"]


def _to(revision: str) -> object:
    def upgrade(connection: Connection) -> None:
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)

    return upgrade


async def test_migration_0011_fills_the_provenance_of_existing_rows(backend: str) -> None:
    db = Database(backend)
    # A literal, not a parameter: asyncpg takes only datetime objects for timestamps, and
    # sqlite3's datetime adapter is deprecated.
    at = "'2026-11-01 10:00:00+00:00'"
    try:
        async with db.engine.begin() as connection:
            await connection.run_sync(_to("0010"))  # type: ignore[arg-type]
            await connection.execute(
                text(
                    "INSERT INTO organisations (id, key, name, kind, path, depth) "
                    "VALUES (1, '07232', 'Eifelkreis', 'kreis', '/07232/', 0)"
                )
            )
            for number, email in enumerate(
                (
                    "signup@x.example",
                    "import@x.example",
                    "api@x.example",
                    "office@x.example",
                    "old@x.example",
                ),
                start=1,
            ):
                await connection.execute(
                    text(
                        "INSERT INTO subscribers (id, email, name, role, organisation_id, rhythm, "
                        "all_topics, status, created_at, updated_at, token_version) VALUES (:id, "
                        f":email, 'P', 'staff', 1, 'immediate', true, 'active', {at}, {at}, 0)"
                    ),
                    {"id": number, "email": email},
                )
            await connection.execute(
                text(
                    "INSERT INTO consents (subscriber_id, text_version, text, requested_at, ip) "
                    f"VALUES (1, 'v1', 'Ich willige ein.', {at}, '192.0.2.1')"
                )
            )
            for entity_id, action, actor in (
                ("1", "subscriber.imported", "cli:alt"),  # imported, later signed up: consent
                ("2", "subscriber.imported", "cli:root"),
                ("3", "subscriber.added", "api:crm"),
                ("4", "subscriber.added", "office:buero"),
                ("5", "subscriber.exported", "office:buero"),
            ):
                await connection.execute(
                    text(
                        "INSERT INTO audit_log (at, actor, action, entity, entity_id, details) "
                        f"VALUES ({at}, :actor, :action, 'subscriber', :entity_id, '{{}}')"
                    ),
                    {"actor": actor, "action": action, "entity_id": entity_id},
                )
        await db.migrate()
        async with db.engine.connect() as connection:
            rows = (
                await connection.execute(
                    text("SELECT id, basis, source, actor FROM subscribers ORDER BY id")
                )
            ).all()
    finally:
        await db.engine.dispose()
    assert [tuple(r) for r in rows] == [
        (1, "consent", "signup", "web"),
        (2, "public_task", "import", "cli:root"),
        (3, "public_task", "api", "api:crm"),
        (4, "public_task", "office", "office:buero"),
        (5, "public_task", "unknown", ""),
    ]
