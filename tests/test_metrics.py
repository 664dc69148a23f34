"""GET /metrics and the logs of a real ``notifier run``: scraped over HTTP after real sends to a
real SMTP server, a sign-up and real source polls, parsed with prometheus-client's own parser;
two sender processes whose counters add up; JSON log lines without recipients' addresses."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, update
from sqlalchemy import text as sql

from notifier import metrics
from notifier.config import load_settings
from notifier.db import Database
from notifier.db.models import OUTBOX_OPEN, OUTBOX_TROUBLE, OutboxMessage, OutboxState
from notifier.errors import ConfigError
from notifier.logs import log_form
from notifier.metrics.directory import forget_dead, prepare_directory
from notifier.metrics.exposition import scrape as scrape_text
from notifier.routing import release_due

from .conftest import EXAMPLE, Project, Web
from .httpserver import FeedServer, Route
from .test_cluster import address, note, people

TOKEN = "metrik-Token-0123456789abcdef"
FEEDS = Path(__file__).parent / "feeds"
SIGNUP = {
    "email": "Erika.Musterfrau@og-bettingen.example",
    "name": "Erika Musterfrau",
    "organisation": "Bettingen (Verbandsgemeinde Bitburger Land)",
    "role": "mayor",
    "topics": ["mobilitaet", "eifelleben"],
    "rhythm": "weekly",
    "consent": "1",
}
OPEN = "state IN ('queued', 'deferred', 'sending')"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape by (name, sorted labels)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{key} not in scrape: {sorted(k for k in samples if k[0] == name)}"
    return samples[key]


def scrape(site: Web, token: str = TOKEN) -> Samples:
    answer = site.client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=")
    return parse(answer.text)


def _db(project: Project) -> sqlite3.Connection:
    return sqlite3.connect(project.root / "var" / "test.db")


def wait_until_delivered(project: Project, timeout: float = 60) -> int:
    """Wait until the announcement is routed, no message is open and every sent row reached
    the SMTP server; returns how many were sent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with _db(project) as db:
            (routed,) = db.execute(
                "SELECT count(*) FROM outbox WHERE item_id IS NOT NULL"
            ).fetchone()
            if not routed:
                time.sleep(0.1)
                continue
            (open_rows,) = db.execute(f"SELECT count(*) FROM outbox WHERE {OPEN}").fetchone()
            (sent,) = db.execute("SELECT count(*) FROM outbox WHERE state = 'sent'").fetchone()
        if open_rows == 0 and sent == len(project.smtp.messages()):
            return int(sent)
        time.sleep(0.1)
    raise AssertionError(f"outbox not delivered in {timeout} s")


def announce(project: Project, subject: str = "Neue Sprechstunden der Digitalen Kümmerer") -> None:
    file = project.write(
        "a.md", f'+++\nsubject = "{subject}"\nsend_at = "now"\n+++\nDie **Kümmerer** helfen.\n'
    )
    project.cli("announce", file)


def test_scrape_after_real_sends_a_sign_up_and_source_polls(
    web: Callable[..., Web], project: Project, server: FeedServer
) -> None:
    server.routes["/feed.xml"] = Route(body=(FEEDS / "rss.xml").read_bytes())
    server.routes["/kaputt.xml"] = Route(status=500, body=b"kaputt")
    site = web(
        {
            "metrics": {"enabled": True, "token": TOKEN},
            "sources": {
                "feed": [
                    {"name": "news", "url": server.url("/feed.xml"), "timeout": 2},
                    {"name": "kaputt", "url": server.url("/kaputt.xml"), "timeout": 2},
                ]
            },
        }
    )
    # Without the token, or with a wrong one: 401, and nothing of the metrics.
    for headers in ({}, {"Authorization": "Bearer falsch"}, {"Authorization": TOKEN}):
        refused = site.client.get("/metrics", headers=headers)
        assert refused.status_code == 401, headers
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert "notifier_" not in refused.text

    # A sign-up (its confirmation is a real send), confirmed twice (counted once).
    answer = site.client.post("/anmelden", data={**SIGNUP, "csrf_token": site.csrf("/anmelden")})
    assert answer.status_code == 200, answer.text
    [mail] = project.smtp.wait_for(1)
    confirm = site.link(mail.message.get_body(("plain",)).get_content(), "bestaetigen")
    for _ in range(2):
        done = site.client.post(confirm, data={"csrf_token": site.csrf(confirm)})
        assert done.status_code == 200, done.text

    # An announcement to the example subscribers, then one of them unsubscribes by one click.
    announce(project)
    sent = wait_until_delivered(project)
    assert sent > 5
    received = project.smtp.messages()[-1].message
    unsubscribe = site.link(received.get_body(("plain",)).get_content(), "abmelden")
    gone = site.client.post(unsubscribe, data={"List-Unsubscribe": "One-Click"})
    assert gone.status_code == 200, gone.text
    assert site.client.get("/gibt-es-nicht/123").status_code == 404

    # The scheduler polls both sources at its start (side by side: the failing one is often
    # counted first, while the feed is still being parsed in its worker process).
    deadline = time.monotonic() + 20
    samples = scrape(site)
    both = [
        ("notifier_source_errors_total", (("source", "kaputt"),)),
        ("notifier_source_polls_total", (("result", "ok"), ("source", "news"))),
    ]
    while not all(key in samples for key in both):
        assert time.monotonic() < deadline, f"not both polls counted: {sorted(samples)}"
        time.sleep(0.2)
        samples = scrape(site)

    assert value(samples, "notifier_messages_sent_total") == sent == len(project.smtp.messages())
    assert value(samples, "notifier_send_latency_seconds_count") == sent
    assert value(samples, "notifier_send_latency_seconds_bucket", le="+Inf") == sent
    assert value(samples, "notifier_signups_total") == 1
    assert value(samples, "notifier_confirmations_total") == 1
    assert value(samples, "notifier_unsubscribes_total") == 1
    assert value(samples, "notifier_source_polls_total", source="news", result="ok") >= 1
    assert value(samples, "notifier_source_polls_total", source="kaputt", result="error") >= 1
    assert value(samples, "notifier_source_errors_total", source="kaputt") >= 1
    assert value(samples, "notifier_source_failing", source="kaputt") == 1
    assert value(samples, "notifier_source_failing", source="news") == 0
    assert 0 <= value(samples, "notifier_source_last_success_age_seconds", source="news") < 60
    assert ("notifier_source_last_success_age_seconds", (("source", "kaputt"),)) not in samples
    assert value(samples, "notifier_scheduler_leader") == 1
    for state in ("queued", "sending", "deferred", "failed"):
        assert value(samples, "notifier_outbox_messages", state=state) == 0
    assert not [k for k in samples if k[0] == "notifier_messages_failed_total"]

    # HTTP requests by route template and status: the token in the path makes no series.
    routes = {
        dict(labels).get("route") for name, labels in samples if name.startswith("notifier_http")
    }
    assert {"/anmelden", "/bestaetigen/{token}", "/abmelden/{token}", "(unmatched)"} <= routes
    assert not [r for r in routes if r and ("gibt-es-nicht" in r or r.count("/") > 3)]
    assert confirm.rsplit("/", 1)[1] not in json.dumps(sorted(samples))
    post_confirm = value(
        samples,
        "notifier_http_requests_total",
        method="POST",
        route="/bestaetigen/{token}",
        status="200",
    )
    assert post_confirm == 2
    assert (
        value(
            samples,
            "notifier_http_request_duration_seconds_count",
            method="POST",
            route="/bestaetigen/{token}",
        )
        == 2
    )
    assert (
        value(samples, "notifier_http_requests_total", method="GET", route="/metrics", status="401")
        == 3
    )


def test_metrics_are_off_by_default(web: Callable[..., Web], project: Project) -> None:
    site = web()
    answer = site.client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 404
    assert "notifier_" not in answer.text
    assert not (project.root / "var" / "metrics").exists()


def _per_process(directory: Path, tmp_path: Path) -> dict[int, float]:
    """Messages sent by each process, read from its own counter file."""
    sent: dict[int, float] = {}
    for file in directory.glob("counter_*.db"):
        pid = int(file.stem.rsplit("_", 1)[1])
        alone = tmp_path / f"p{pid}"
        alone.mkdir()
        shutil.copy(file, alone)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(alone))  # type: ignore[no-untyped-call]
        found = parse(generate_latest(registry).decode())
        sent[pid] = found.get(("notifier_messages_sent_total", ()), 0.0)
    return sent


def test_two_sender_processes_add_up_at_the_scrape(
    web: Callable[..., Web], project: Project, tmp_path: Path
) -> None:
    count, rate = 160, 40
    project.seed(project.write("people.csv", people(count)))
    site = web(
        {
            "metrics": {"enabled": True, "token": TOKEN},
            # Small claims, so both processes find work while the limit spreads the send.
            "delivery": {"processes": 2, "rate_per_second": rate, "batch_size": 5},
        },
        seed=False,
    )
    site.running.wait_for_line("started 1 more sender processes")
    announce(project, "Mit zwei Sendeprozessen")
    project.smtp.wait_for(count, 30)
    sent = wait_until_delivered(project)
    assert sent == count
    assert sorted(project.smtp.recipients()) == sorted(address(i) for i in range(count))

    samples = scrape(site)
    assert value(samples, "notifier_messages_sent_total") == count
    assert value(samples, "notifier_send_latency_seconds_count") == count
    # Under a shared limit of 40 per second (a bucket of 10 at once), connections waited.
    assert value(samples, "notifier_rate_limit_waits_total") > 0
    assert value(samples, "notifier_rate_limit_wait_seconds_total") > 0
    by_process = _per_process(project.root / "var" / "metrics", tmp_path)
    senders = {pid: n for pid, n in by_process.items() if n}
    assert len(senders) == 2, by_process  # both processes sent, and they add up
    assert sum(senders.values()) == count
    assert site.running.proc.pid in senders


def test_json_logs_carry_fields_and_no_recipient_addresses(
    web: Callable[..., Web], project: Project
) -> None:
    refused = "anna.schmitz@kreis.example"
    project.smtp.refuse[refused] = f"550 5.1.1 <{refused}>: Postfach unbekannt"
    site = web({"logging": {"format": "json", "level": "INFO"}})
    announce(project)
    wait_until_delivered(project)
    with _db(project) as db:
        (failed_id, item_id) = db.execute(
            "SELECT o.id, o.item_id FROM outbox o JOIN subscribers s ON s.id = o.subscriber_id"
            " WHERE s.email = ? AND o.state = 'failed'",
            (refused,),
        ).fetchone()
    assert site.running.stop() == 0

    output = site.running.output
    addresses = [line.split(",")[0] for line in EXAMPLE.read_text("utf-8").splitlines()[1:] if line]
    for person in addresses:
        assert person not in output.lower(), person
    # Every log line is one JSON object (the other lines are the start banner on stdout).
    assert not re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (INFO|WARNING)", output, re.M)
    records: list[dict[str, Any]] = [
        json.loads(line) for line in output.splitlines() if line.startswith("{")
    ]
    assert len(records) >= 3
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys()
        assert record["time"].endswith("+00:00")
    [failure] = [r for r in records if r["message"].startswith(f"outbox {failed_id} failed")]
    assert failure["level"] == "WARNING"
    assert failure["logger"] == "notifier.delivery.sender"
    assert failure["outbox_id"] == failed_id and failure["item_id"] == item_id
    assert failure["smtp_code"] == 550
    assert failure["recipient"] == log_form(refused) and failure["recipient"].endswith(
        "@kreis.example"
    )
    assert failure["smtp_reply"] == f"5.1.1 <{log_form(refused)}>: Postfach unbekannt"
    assert any(r["message"].startswith("notifier running") for r in records)


def test_log_form_is_stable_and_hides_the_local_part() -> None:
    assert log_form("Anna.Schmitz@Kreis.example") == log_form("anna.schmitz@kreis.example")
    assert log_form("anna.schmitz@kreis.example") != log_form("anne.schmitz@kreis.example")
    assert "anna" not in log_form("anna.schmitz@kreis.example")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_start_empties_the_directory_only_when_no_writer_is_alive(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    dead = _dead_pid()
    for name in (f"counter_{dead}.db", f"gauge_livesum_{dead}.db"):
        (directory / name).write_bytes(b"\0" * 8)
    try:
        with prepare_directory(directory):
            # Nobody who wrote here is alive: the start emptied it.
            assert sorted(p.name for p in directory.glob("*.db")) == []
        assert sorted(p.name for p in directory.glob("*.db")) == []

        # A writer still runs (another sender process): the dead one's counters stay in the
        # sum, its live gauges go.
        alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            for pid in (dead, alive.pid):
                for name in (f"counter_{pid}.db", f"gauge_livesum_{pid}.db"):
                    (directory / name).write_bytes(b"\0" * 8)
            with prepare_directory(directory):
                assert (directory / f"counter_{dead}.db").exists()
            assert sorted(p.name for p in directory.glob("*.db")) == sorted(
                [f"counter_{dead}.db", f"counter_{alive.pid}.db", f"gauge_livesum_{alive.pid}.db"]
            )
            # Killed (no clean stop): the next scrape no longer counts its live gauges.
            alive.kill()
            alive.wait()
            forget_dead(directory)
            assert sorted(p.name for p in directory.glob("*.db")) == sorted(
                [f"counter_{dead}.db", f"counter_{alive.pid}.db"]
            )
        finally:
            alive.kill()
            alive.wait()
    finally:
        metrics.configure(None)


def test_metrics_and_logging_settings(project: Project) -> None:
    settings = load_settings(project.config, environ={"NOTIFIER_METRICS__TOKEN": "geheim"})
    assert settings.metrics.token.get_secret_value() == "geheim"
    assert not settings.metrics.enabled
    assert (settings.logging.format, settings.logging.level) == ("text", "INFO")
    project.write_config({"logging": {"format": "xml"}})
    with pytest.raises(ConfigError, match=r"logging\.format"):
        load_settings(project.config, environ={})


async def test_the_outbox_gauge_counts_on_the_partial_indexes(
    project: Project, backend: str
) -> None:
    project.write_config({"database": {"url": backend}})
    await asyncio.to_thread(project.seed, project.write("people.csv", people(30)))
    await asyncio.to_thread(project.cli, "announce", project.write("a.md", note("Gezählt")))
    db = Database(project.settings.database_url)
    try:
        assert await release_due(db, datetime.now(UTC)) == [(1, 30)]
        async with db.transaction() as session:
            ids = list(await session.scalars(select(OutboxMessage.id).order_by(OutboxMessage.id)))
            for state, chosen in (("failed", ids[:3]), ("deferred", ids[3:7]), ("sent", ids[7:12])):
                await session.execute(
                    update(OutboxMessage)
                    .where(OutboxMessage.id.in_(chosen))
                    .values(state=OutboxState(state))
                )
        text = (await scrape_text(db, datetime.now(UTC))).decode()
        if db.is_postgres:
            plans = []
        else:
            async with db.reading() as session:
                plans = [
                    " ".join(map(str, row))
                    for condition in (OUTBOX_OPEN, OUTBOX_TROUBLE)
                    for row in await session.execute(
                        sql(
                            "EXPLAIN QUERY PLAN SELECT state, count(*) FROM outbox"
                            f" WHERE {condition} GROUP BY state"
                        )
                    )
                ]
    finally:
        await db.engine.dispose()
    samples = parse(text)
    assert value(samples, "notifier_outbox_messages", state="queued") == 18
    assert value(samples, "notifier_outbox_messages", state="deferred") == 4
    assert value(samples, "notifier_outbox_messages", state="failed") == 3
    assert value(samples, "notifier_outbox_messages", state="sending") == 0
    assert ("notifier_outbox_messages", (("state", "sent"),)) not in samples
    # SQLite reads the partial indexes, not the table of every message ever sent.
    if plans:
        assert "ix_outbox_open" in " ".join(plans) and "ix_outbox_trouble" in " ".join(plans)
