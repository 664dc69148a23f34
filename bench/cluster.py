"""Cluster benchmark: notifier on PostgreSQL with 1, 2 and 4 sender processes, beside the
single-process SQLite figure of the same run, and the claiming overhead per message.

Every end-to-end run is the path of bench/delivery.py (a real `notifier run`, one announcement to
N subscribers, the C sink on loopback), on a fresh database: a SQLite file, or a new PostgreSQL
database on 127.0.0.1:5432 (trust authentication, as user postgres or root) that is dropped
afterwards. Entry point: ``bench/run --cluster`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The delivery benchmark's modules beside this file.
from common import HOST, BenchError, fmt_int, log, terminate
from procfs import OTHER_CPU_LIMIT, process_ticks
from project import PROGRESS_SQL, make_project
from raw import RAW_MAX, RawResult, measure_raw
from report import git_revision
from seeding import seed
from service import Result, run_e2e
from sink import Sink

T = TypeVar("T")
PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USERS = ("postgres", "root")
PG_PROCESSES = (1, 2, 4)
CLAIM_ROWS = 20_000  # rows of the claiming measurement (at most N)
CLAIMERS = (1, 4)


# --------------------------------------------------------------------------------------------
# PostgreSQL: a private event loop for asyncpg calls from this synchronous program


class Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.loop.close()


async def _connect(user: str, database: str) -> Any:
    import asyncpg  # the project's dependency, installed in .venv

    return await asyncpg.connect(
        host=PG_HOST, port=PG_PORT, user=user, database=database, timeout=10
    )


class PgServer:
    """The PostgreSQL server: finds a user that may create databases, creates and drops them."""

    def __init__(self) -> None:
        self.loop = Loop()
        self.user = ""
        self.version = ""
        problems = []
        for user in PG_USERS:
            try:
                conn = self.loop.run(_connect(user, "test"))
            except Exception as exc:  # any failure: try the next user
                problems.append(f"{user}: {exc}")
                continue
            self.user = user
            self.version = self.loop.run(conn.fetchval("SHOW server_version"))
            self.loop.run(conn.close())
            break
        if not self.user:
            raise BenchError(
                f"no PostgreSQL server on {PG_HOST}:{PG_PORT} (database 'test'): "
                + "; ".join(problems)
            )

    def _admin(self, sql: str) -> None:
        conn = self.loop.run(_connect(self.user, "test"))
        try:
            self.loop.run(conn.execute(sql))
        finally:
            self.loop.run(conn.close())

    def create(self) -> str:
        name = f"notifier_bench_{uuid.uuid4().hex[:10]}"
        self._admin(f'CREATE DATABASE "{name}"')
        return name

    def drop(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def url(self, name: str) -> str:
        return f"postgresql+asyncpg://{self.user}@{PG_HOST}:{PG_PORT}/{name}"

    def close(self) -> None:
        self.loop.close()


class PgWatcher:
    """project.Watcher's queries on a PostgreSQL database (read-only, autocommit)."""

    def __init__(self, server: PgServer, name: str) -> None:
        self.loop = Loop()
        self.conn = self.loop.run(_connect(server.user, name))

    def _epoch(self, column: str) -> str:
        return f"extract(epoch from {column})::float8"

    def states(self) -> dict[str, int]:
        rows = self.loop.run(self.conn.fetch("SELECT state, count(*) FROM outbox GROUP BY state"))
        return {r[0]: r[1] for r in rows}

    def progress(self) -> tuple[int, int]:
        row = self.loop.run(self.conn.fetchrow(PROGRESS_SQL))
        return int(row[0]), int(row[1])

    def item(self, item_id: int) -> tuple[str, float, float | None, int | None]:
        row = self.loop.run(
            self.conn.fetchrow(
                f"SELECT status, {self._epoch('send_at')}, {self._epoch('routed_at')}, "  # noqa: S608
                "recipient_count FROM items WHERE id = $1",
                item_id,
            )
        )
        if row is None:
            raise BenchError(f"item {item_id} is not in the database")
        return row[0], row[1], row[2], row[3]

    def last_item_id(self) -> int | None:
        value: int | None = self.loop.run(self.conn.fetchval("SELECT max(id) FROM items"))
        return value

    def sent_span(self) -> tuple[float | None, float | None, int]:
        row = self.loop.run(
            self.conn.fetchrow(
                f"SELECT min({self._epoch('sent_at')}), max({self._epoch('sent_at')}), "  # noqa: S608
                "count(sent_at) FROM outbox WHERE state = 'sent'"
            )
        )
        return row[0], row[1], row[2]

    def failures(self, limit: int = 3) -> list[tuple[str, int | None, str | None]]:
        rows = self.loop.run(
            self.conn.fetch(
                "SELECT state, last_code, last_reply FROM outbox WHERE state IN "
                "('failed', 'deferred') AND last_reply IS NOT NULL LIMIT $1",
                limit,
            )
        )
        return [(r[0], r[1], r[2]) for r in rows]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run(self.conn.close())
        self.loop.close()


def pg_insert(server: PgServer, name: str, rows: Sequence[Sequence[str]]) -> None:
    """Subscribers and subscriptions straight into PostgreSQL (COPY), like seeding.insert_sql."""

    async def insert() -> None:
        conn = await _connect(server.user, name)
        try:
            orgs = {
                r["key"]: r["id"] for r in await conn.fetch("SELECT key, id FROM organisations")
            }
            first = (await conn.fetchval("SELECT coalesce(max(id), 0) FROM subscribers")) + 1
            now = datetime.now(UTC)
            subscribers = []
            subscriptions = []
            for offset, (email, name_, role, org, topics, rhythm) in enumerate(rows):
                sid = first + offset
                subscribers.append(
                    (sid, email, name_, role, orgs[org], rhythm, not topics, "active", now, now)
                )
                subscriptions += [(sid, t) for t in topics.split(";") if topics]
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "subscribers",
                    records=subscribers,
                    columns=[
                        "id",
                        "email",
                        "name",
                        "role",
                        "organisation_id",
                        "rhythm",
                        "all_topics",
                        "status",
                        "created_at",
                        "updated_at",
                    ],
                )
                await conn.copy_records_to_table(
                    "subscriptions", records=subscriptions, columns=["subscriber_id", "topic_key"]
                )
                await conn.execute(
                    "SELECT setval('subscribers_id_seq', (SELECT max(id) FROM subscribers))"
                )
        finally:
            await conn.close()

    loop = Loop()
    try:
        loop.run(insert())
    finally:
        loop.close()


def postgres_ticks() -> int:
    """CPU ticks of the PostgreSQL server: every live ``postgres`` process, and through the
    postmaster's children time those that ended meanwhile."""
    total = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                comm = Path(f"/proc/{entry.name}/comm").read_text().strip()
            except OSError:
                continue
            if comm == "postgres":
                total += process_ticks(int(entry.name))
    return total


# --------------------------------------------------------------------------------------------
# end-to-end runs


@dataclass
class Run:
    backend: str  # "SQLite" or "PostgreSQL"
    processes: int
    result: Result


def run_one(
    backend: str,
    processes: int,
    n: int,
    sink: Sink,
    raw: RawResult,
    server: PgServer | None,
    args: argparse.Namespace,
) -> Run:
    folder = Path(tempfile.mkdtemp(prefix="notifier-cluster-"))
    name = ""
    try:
        url = ""
        if server is not None:
            name = server.create()
            url = server.url(name)
        delivery = {
            "connections": args.connections,
            "processes": processes,
            "batch_size": args.batch_size,
        }
        log(f"{backend}, {processes} sender process(es): project {folder} …")
        project = make_project(folder, sink.port, delivery, url)
        if server is not None:
            project.cpu_groups = {"postgres": postgres_ticks}
            project.watcher_factory = lambda _p: PgWatcher(server, name)
            project.direct_insert = lambda _p, rows: pg_insert(server, name, rows)
        seeding = seed(project, n, args.seed, args.cli_budget)
        result = Result(
            n=n,
            sink_label=sink.label,
            raw=raw,
            seeding=seeding,
            delivery_applied=project.delivery_applied,
            delivery_refused=project.delivery_refused,
        )
        run_args = argparse.Namespace(lead=args.lead, poll=0.1, timeout=n / 50 + 120, stall=60.0)
        run_e2e(result, project, sink, run_args)
        rate = result.e2e_rate
        log(f"  end to end: {'—' if rate is None else fmt_int(rate)} msg/s")
        return Run(backend, processes, result)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if server is not None and name:
            server.drop(name)


# --------------------------------------------------------------------------------------------
# claiming overhead: the storage work per message without SMTP, measured in worker processes


WORKER_FLAG = "--claim-worker"


async def _fill(url: str, rows: int) -> None:
    """An organisation, ``rows`` subscribers, one routed announcement and its outbox rows."""
    from sqlalchemy import insert

    from notifier.db import Database
    from notifier.db.models import Item, ItemKind, ItemStatus, Organisation, OrgKind, OutboxMessage
    from notifier.db.models import Subscriber as Sub

    now = datetime.now(UTC)
    async with Database(url) as db:
        await db.migrate()
        async with db.transaction() as session:
            session.add(Organisation(id=1, key="07232", name="Eifelkreis", kind=OrgKind.kreis,
                                     path="/07232/", depth=0))  # fmt: skip
            session.add(Item(id=1, kind=ItemKind.announcement, subject="Bench", body="Text",
                             topics=[], scope=[], roles=[], send_at=now, created_at=now,
                             created_by="bench", status=ItemStatus.routed))  # fmt: skip
            await session.flush()
            await session.execute(
                insert(Sub),
                [
                    {
                        "id": i,
                        "email": f"c{i}@bench.example",
                        "name": f"C {i}",
                        "role": "staff",
                        "organisation_id": 1,
                        "rhythm": "immediate",
                        "all_topics": True,
                        "status": "active",
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i in range(1, rows + 1)
                ],
            )
            await session.execute(
                insert(OutboxMessage),
                [
                    {
                        "item_id": 1,
                        "subscriber_id": i,
                        "notice": "",
                        "state": "queued",
                        "attempts": 0,
                        "created_at": now,
                        "updated_at": now,
                        "next_attempt_at": now,
                    }
                    for i in range(1, rows + 1)
                ],
            )


async def _claim_all(url: str, batch: int) -> int:
    """What a sender does with the database per batch, minus SMTP: claim, read what rendering
    needs, record every message as sent. Returns how many messages it handled."""
    from sqlalchemy import select

    from notifier.db import Database, queries
    from notifier.db.models import Item, OutboxState

    owner = f"bench:{os.getpid()}"
    handled = 0
    async with Database(url, role="bench-claimer") as db:
        for number in range(1, 10**6):
            now = datetime.now(UTC)
            claim = f"{owner}:{number}"
            rows = await db.write(
                lambda c, now=now, claim=claim: queries.claim_batch(
                    c, now, batch, timedelta(seconds=300), claim
                )
            )
            if not rows:
                return handled
            # What the sender does per batch: read the recipients, their topics and the items.
            async with db.reading() as session:
                claimed = await queries.describe_claimed(session, rows)
                await queries.subscriber_topics(
                    session, [c.subscriber_id for c in claimed if not c.all_topics]
                )
                item_ids = {c.item_id for c in claimed if c.item_id is not None}
                list(await session.scalars(select(Item).where(Item.id.in_(item_ids))))
            done = datetime.now(UTC)
            outcomes = [
                queries.Outcome(c.id, OutboxState.sent, done, 250, "ok", "<x@b>", owner=c.owner)
                for c in claimed
            ]
            await db.write(lambda c, outcomes=outcomes: queries.record_outcomes(c, outcomes))
            handled += len(claimed)
    return handled


def claim_worker(url: str, batch: int) -> int:
    """A claiming process: says "ready", waits for a line on stdin, claims until the outbox is
    empty and prints how many messages it handled."""
    print("ready", flush=True)
    sys.stdin.readline()
    handled = asyncio.run(_claim_all(url, batch))
    print(f"handled {handled}", flush=True)
    return 0


@dataclass
class Claiming:
    backend: str
    claimers: int
    rows: int
    seconds: float
    handled: list[int] = field(default_factory=list)

    @property
    def micros(self) -> float:
        return self.seconds / self.rows * 1e6


def measure_claiming(backend: str, url: str, rows: int, claimers: int, batch: int) -> Claiming:
    asyncio.run(_fill(url, rows))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    procs = [
        subprocess.Popen(  # noqa: S603
            [sys.executable, __file__, WORKER_FLAG, url, str(batch)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(claimers)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise BenchError("a claiming worker did not start")
        began = time.perf_counter()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        handled = []
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if not line.startswith("handled "):
                raise BenchError(f"a claiming worker failed: {line!r}")
            handled.append(int(line.split()[1]))
        seconds = time.perf_counter() - began
    finally:
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            if proc.poll() is None:
                proc.kill()
    if sum(handled) != rows:
        raise BenchError(f"claimers handled {sum(handled)} of {rows} messages")
    return Claiming(backend, claimers, rows, seconds, handled)


# --------------------------------------------------------------------------------------------
# report


def report(
    n: int, runs: list[Run], claims: list[Claiming], server: PgServer, raw: RawResult,
    sink: Sink, args: argparse.Namespace,
) -> None:  # fmt: skip
    fmt = fmt_int
    sqlite = next((r.result.e2e_rate for r in runs if r.backend == "SQLite"), None)
    print()
    print(f"notifier cluster benchmark: N = {fmt(n)} subscribers, one announcement to all")
    print(f"  sink:      {sink.label} on {HOST}")
    print(f"  machine:   {os.cpu_count()} cores; commit {git_revision()}")
    print(f"  databases: PostgreSQL {server.version} on {PG_HOST}:{PG_PORT} (a new database per "
          "run, same machine); SQLite: a file in a temporary folder")  # fmt: skip
    print(f"  [delivery] connections = {args.connections} per process, batch_size = "
          f"{args.batch_size}; `processes` = the sender processes below")  # fmt: skip
    print(f"  raw:       aiosmtplib, {raw.connections} reused connections: {fmt(raw.rate)} msg/s "
          "(one client process, reference)")  # fmt: skip
    print()
    header = ("backend", "sender processes", "end to end", "sending", "first sent", "routing",
              "× SQLite")  # fmt: skip
    print("  {:<11} {:>16}  {:>13}  {:>13}  {:>10}  {:>8}  {:>8}".format(*header))
    print("  " + "-" * 89)
    for run in runs:
        r = run.result
        e2e = r.e2e_rate
        cells = (
            run.backend,
            str(run.processes),
            "—" if e2e is None else f"{fmt(e2e)} msg/s",
            "—" if r.steady_rate is None else f"{fmt(r.steady_rate)} msg/s",
            "—" if r.first_sent_s is None else f"{r.first_sent_s:.2f} s",
            "—" if r.outbox_full_s is None else f"{r.outbox_full_s:.2f} s",
            "—" if e2e is None or not sqlite else f"{e2e / sqlite:.2f}",
        )
        print("  {:<11} {:>16}  {:>13}  {:>13}  {:>10}  {:>8}  {:>8}".format(*cells))
    print()
    print(
        "  claiming overhead per message (no SMTP: claim a batch of "
        f"{args.batch_size}, read what rendering needs, record each message as sent)"
    )
    for c in claims:
        who = f"{c.claimers} claiming process{'es' if c.claimers > 1 else ''}"
        split = "" if c.claimers == 1 else f" (handled {' / '.join(fmt(h) for h in c.handled)})"
        print(f"    {c.backend:<11} {who:<22} {c.micros:6.1f} µs/message "
              f"({fmt(c.rows)} rows in {c.seconds:.2f} s){split}")  # fmt: skip
    print()
    print("  details")
    for run in runs:
        r = run.result
        cpu = r.cpu.describe() if r.cpu is not None else "—"
        print(f"    {run.backend} × {run.processes}: outbox "
              + ", ".join(f"{k} {fmt(v)}" for k, v in sorted(r.states.items()))
              + f"; sink received {fmt(r.sink_received)}; CPU {cpu}")  # fmt: skip
        for note in r.notes:
            print(f"      NOTE: {note}")
    disturbed = [
        f"{run.backend} × {run.processes} {run.result.cpu.other_cores:.2f}"
        for run in runs
        if run.result.cpu is not None and run.result.cpu.other_cores > OTHER_CPU_LIMIT
    ]
    if disturbed:
        print(
            "  NOTE: DISTURBED: other processes used CPU during these runs (cores: "
            + ", ".join(disturbed)
            + "); their figures are lower than on an idle machine"
        )
    print(
        "  NOTE: the service, the sink, PostgreSQL and the benchmark share the machine's "
        f"{os.cpu_count()} cores; with --repeat, each row is the best of its runs."
    )


# --------------------------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run --cluster",
        description="notifier on PostgreSQL with 1, 2 and 4 sender processes beside SQLite with "
        "one, against the C sink; and the claiming overhead per message.",
    )
    parser.add_argument("--n", type=int, default=50_000, help="subscribers (default 50000)")
    parser.add_argument("--connections", type=int, default=16, help="[delivery] connections")
    parser.add_argument("--batch-size", type=int, default=500, help="[delivery] batch_size")
    parser.add_argument("--seed", choices=("auto", "cli", "sql"), default="sql",
                        help="how subscribers are created (default sql: directly)")  # fmt: skip
    parser.add_argument("--cli-budget", type=float, default=60.0, help=argparse.SUPPRESS)
    parser.add_argument("--lead", type=float, default=4.0, help="seconds to send_at (default 4)")
    parser.add_argument(
        "--processes",
        default=",".join(map(str, PG_PROCESSES)),
        help="sender processes of the PostgreSQL runs (default 1,2,4)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per configuration, the best counts (default 1)"
    )
    parser.add_argument("--sink", choices=("c", "python"), default="c", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.process_counts = [int(p) for p in args.processes.split(",") if p]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == WORKER_FLAG:
        return claim_worker(sys.argv[2], int(sys.argv[3]))
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    notes: list[str] = []
    server: PgServer | None = None
    try:
        server = PgServer()
        with contextlib.ExitStack() as stack:
            sink = Sink(args.sink, notes)
            stack.callback(sink.stop)
            sink.start()
            log(f"sink: {sink.label} on {HOST}:{sink.port}")
            raw = measure_raw(sink, min(args.n, RAW_MAX), 16, 2)
            log(f"raw: {fmt_int(raw.rate)} msg/s")
            configs = [("SQLite", 1, None)]
            configs += [("PostgreSQL", p, server) for p in args.process_counts]
            runs = []
            for backend, processes, where in configs:
                tries = [
                    run_one(backend, processes, args.n, sink, raw, where, args)
                    for _ in range(max(1, args.repeat))
                ]
                runs.append(max(tries, key=lambda r: r.result.e2e_rate or 0.0))
            claims = []
            rows = min(args.n, CLAIM_ROWS)
            with tempfile.TemporaryDirectory(prefix="notifier-claim-") as folder:
                log(f"claiming overhead on SQLite: {fmt_int(rows)} rows …")
                claims.append(
                    measure_claiming(
                        "SQLite", f"sqlite+aiosqlite:///{folder}/claim.db", rows, 1, args.batch_size
                    )
                )
            for claimers in CLAIMERS:
                name = server.create()
                try:
                    log(f"claiming overhead on PostgreSQL, {claimers} process(es) …")
                    claims.append(
                        measure_claiming(
                            "PostgreSQL", server.url(name), rows, claimers, args.batch_size
                        )
                    )
                finally:
                    server.drop(name)
            report(args.n, runs, claims, server, raw, sink, args)
            for note in notes:
                print(f"  NOTE: {note}")
    except KeyboardInterrupt:
        log("interrupted: everything started was stopped")
        return 130
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        if server is not None:
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
