"""The click storm of issue 12: the web pages under load while the same service sends.

``bench/run --storm`` runs the normal send (bench/service.py), then the same announcement again
on a fresh copy of the seeded database while a load generator in its own process (``python
bench/storm.py worker``, a small asyncio HTTP/1.1 client with keep-alive) sends what recipients
do in the first minutes: they open their preferences page (``GET /einstellungen/<token>``) and
press one-click unsubscribe (``POST /abmelden/<token>`` with ``List-Unsubscribe=One-Click``,
RFC 8058), with real signed links made by notifier's own ``Links`` and the project's secret key.
After each unsubscribe that got 200, the load generator reads that person's outbox row: it must
be cancelled (or already sent, or in flight), never still queued; after the run the benchmark
checks that nothing cancelled was sent later. Then a third copy: the office imports a
100,000-row CSV through ``POST /buero/abonnenten/import`` while the announcement is sent, and a
probe in its own process times ``GET /healthz`` all along. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import REPO, BenchError, fmt_int, log
from procfs import OTHER_CPU_LIMIT, kill_group
from project import Project, make_project
from report import verdict_word
from seeding import subscriber_rows
from service import Result, Service, run_e2e
from sink import Sink

# The worker (``python bench/storm.py worker``) needs nothing but the standard library and
# the modules above (which need nothing else); notifier is imported where links are made.

STORM_CLIENTS = 20  # concurrent clients of the load generator (--storm-clients)
UNSUBSCRIBE_SHARE = 0.2  # of the storm's requests, one-click unsubscribes (--storm-unsubscribe)
IMPORT_ROWS = 100_000  # rows of the office's CSV import (--storm-import-rows; 0: no import run)
PAGE_TOKENS = 20_000  # distinct preferences links requested (cycled)
UNSUBSCRIBE_TOKENS = 20_000  # at most this many distinct people unsubscribe
IMPORT_TIMEOUT = 900.0  # seconds for the office's import request
REQUEST_TIMEOUT = 10.0  # seconds; a request taking longer counts as an error
HEALTHZ_INTERVAL = 0.02  # seconds between two /healthz probes (one client)
OFFICE_USER = "bench-buero"
# 200 samples/s, without stopping the service (--nonblocking), as collapsed stacks (raw).
PY_SPY_OPTIONS = ("--rate", "200", "--format", "raw", "--nonblocking")

# Floors of issue 12, on the 2-core machine, during the send.
FLOOR_STORM_RPS = 300.0
FLOOR_STORM_P99_MS = 250.0
FLOOR_STORM_SENDING = 0.7  # sending rate with the storm / without, same run
# "The import must not stall /healthz or the sender" (today 4.1 s): no /healthz answer during
# the import slower than this, and the sender keeps the storm's share of its rate.
FLOOR_HEALTHZ_MAX_MS = 1000.0

GET_PAGE, POST_UNSUBSCRIBE, GET_HEALTHZ = "preferences", "unsubscribe", "healthz"
KIND_CODES = {GET_PAGE: 0, POST_UNSUBSCRIBE: 1, GET_HEALTHZ: 2}
KINDS = {code: kind for kind, code in KIND_CODES.items()}
OK_STATES = ("cancelled", "none", "sent", "sending")  # seen right after an unsubscribe's 200


# --------------------------------------------------------------------------------------------
# the load generator (its own process)


class Http:
    """One keep-alive HTTP/1.1 connection: small and cheap, so the generator leaves the cores
    to the service (a client library would cost several times the CPU per request)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        reused = self.writer is not None
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if method == "POST":
            head += (
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: {len(body)}\r\n"
            )
        self.writer.write(head.encode("ascii") + b"\r\n" + body)
        await self.writer.drain()
        line = await self.reader.readline()
        if not line:
            self.close()
            if reused:  # the server closed the idle connection: once more on a new one
                return await self.request(method, path, body)
            raise ConnectionError("connection closed before the answer")
        status = int(line.split(None, 2)[1])
        length: int | None = None
        chunked = close = False
        while (header := await self.reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = header.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value
            elif name == b"connection":
                close = value == b"close"
        if chunked:
            data = b""
            while size := int((await self.reader.readline()).split(b";")[0], 16):
                data += await self.reader.readexactly(size + 2)
            await self.reader.readline()
        elif length is not None:
            data = await self.reader.readexactly(length)
        else:
            data, close = await self.reader.read(), True
        if close:
            self.close()
        return status, data


@dataclass
class Recorder:
    """What the generator saw: every request, the errors, and each unsubscribe's check."""

    started: float = 0.0
    stopped: float = 0.0
    # (kind code, wall-clock start, seconds, HTTP status or 0 for no answer)
    requests: list[tuple[int, float, float, int]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    # (subscriber id, wall-clock time of the 200, outbox states of that person right after)
    unsubscribed: list[tuple[int, float, str]] = field(default_factory=list)

    def dump(self, path: Path) -> None:
        data = {
            "started": self.started,
            "stopped": self.stopped,
            "cpu_seconds": time.process_time(),
            "requests": self.requests,
            "errors": dict(self.errors),
            "unsubscribed": self.unsubscribed,
        }
        path.write_text(json.dumps(data), encoding="utf-8")


async def _client(
    number: int,
    spec: dict[str, Any],
    stop: asyncio.Event,
    pages: deque[str],
    unsubscribes: deque[list[Any]],
    outbox: sqlite3.Connection | None,
    rec: Recorder,
) -> None:
    rng = random.Random(number)  # noqa: S311 - a request mix, not security
    http = Http(spec["host"], spec["port"])
    mode, share, interval = spec["mode"], spec.get("share", 0.0), spec.get("interval", 0.0)
    while not stop.is_set():
        subscriber = 0
        if mode == GET_HEALTHZ:
            kind, method, path, body = GET_HEALTHZ, "GET", "/healthz", b""
        elif unsubscribes and rng.random() < share:
            subscriber, path = unsubscribes.popleft()
            kind, method, body = POST_UNSUBSCRIBE, "POST", b"List-Unsubscribe=One-Click"
        else:
            path = pages[0]
            pages.rotate(-1)
            kind, method, body = GET_PAGE, "GET", b""
        began_wall, began = time.time(), time.perf_counter()
        status = 0
        try:
            async with asyncio.timeout(spec["timeout"]):
                status, data = await http.request(method, path, body)
        except TimeoutError:
            http.close()
            rec.errors[f"{kind}: no answer within {spec['timeout']:g} s"] += 1
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            http.close()
            rec.errors[f"{kind}: {type(exc).__name__}: {exc}"[:160]] += 1
        else:
            if status != 200:
                rec.errors[f"{kind}: HTTP {status}"] += 1
            elif kind == POST_UNSUBSCRIBE and data != b"Abgemeldet.":
                rec.errors[f"{kind}: 200 with an unexpected body {data[:60]!r}"] += 1
        seconds = time.perf_counter() - began
        rec.requests.append((KIND_CODES[kind], began_wall, seconds, status))
        if kind == POST_UNSUBSCRIBE and status == 200 and outbox is not None:
            # The 200 came after the commit: the person's queued message must be cancelled.
            try:
                rows = outbox.execute(
                    "SELECT state FROM outbox WHERE subscriber_id = ?", (subscriber,)
                ).fetchall()
            except sqlite3.Error as exc:
                seen = f"unread ({exc})"
            else:
                seen = ",".join(sorted(row[0] for row in rows)) or "none"
            rec.unsubscribed.append((subscriber, began_wall + seconds, seen))
        if interval:
            await asyncio.sleep(max(0.0, interval - seconds))
    http.close()


async def _generate(spec: dict[str, Any], rec: Recorder) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    pages: deque[str] = deque(spec.get("pages", []))
    unsubscribes: deque[list[Any]] = deque(spec.get("unsubscribes", []))
    outbox = None
    if spec.get("db"):
        outbox = sqlite3.connect(f"file:{spec['db']}?mode=ro", uri=True, timeout=10)
        outbox.isolation_level = None  # autocommit: no read transaction stays open
    rec.started = time.time()
    await asyncio.gather(
        *(_client(i, spec, stop, pages, unsubscribes, outbox, rec) for i in range(spec["clients"]))
    )
    rec.stopped = time.time()
    if outbox is not None:
        outbox.close()


def worker(spec_path: Path, out_path: Path) -> int:
    """Run the clients of the spec until SIGTERM, then write what they saw to ``out_path``."""
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    rec = Recorder()
    asyncio.run(_generate(spec, rec))
    rec.dump(out_path)
    return 0


# --------------------------------------------------------------------------------------------
# figures of one generator run


def percentile(values: Sequence[float], share: float) -> float | None:
    """Nearest-rank percentile of ``values`` (``share`` 0.5 = median); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))]


@dataclass
class Traffic:
    """The generator's output (see :class:`Recorder`)."""

    started: float
    stopped: float
    cpu_seconds: float
    requests: list[tuple[int, float, float, int]]
    errors: dict[str, int]
    unsubscribed: list[tuple[int, float, str]]

    @classmethod
    def read(cls, path: Path) -> Traffic:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            data["started"],
            data["stopped"],
            data["cpu_seconds"],
            [tuple(r) for r in data["requests"]],
            data["errors"],
            [tuple(u) for u in data["unsubscribed"]],
        )

    @property
    def seconds(self) -> float:
        return max(1e-9, self.stopped - self.started)

    @property
    def rate(self) -> float:
        return len(self.requests) / self.seconds

    def latencies(
        self, kind: str | None = None, between: tuple[float, float] | None = None
    ) -> list[float]:
        return [
            seconds
            for code, began, seconds, _status in self.requests
            if (kind is None or KINDS[code] == kind)
            and (between is None or between[0] <= began <= between[1])
        ]

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


# --------------------------------------------------------------------------------------------
# the generator and the profiler as the benchmark's load (service.Load)


def _py_spy() -> Path | None:
    local = Path(sys.executable).parent / "py-spy"
    if local.exists():
        return local
    import shutil

    found = shutil.which("py-spy")
    return Path(found) if found else None


class Generator:
    """The load generator process, started at send_at and stopped when the send is done."""

    def __init__(self, folder: Path, spec: dict[str, Any], label: str) -> None:
        self.folder, self.spec, self.label = folder, spec, label
        self.proc: subprocess.Popen[bytes] | None = None
        self.traffic: Traffic | None = None
        self.out = folder / f"{label}.json"

    def start(self, web_url: str) -> None:
        match = re.fullmatch(r"http://([^:/]+):(\d+)", web_url)
        if match is None:
            raise BenchError(f"the service named no web address (got {web_url!r})")
        spec_path = self.folder / f"{self.label}-spec.json"
        spec = {**self.spec, "host": match.group(1), "port": int(match.group(2))}
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        with (self.folder / f"{self.label}.log").open("wb") as errors:
            self.proc = subprocess.Popen(  # noqa: S603
                [sys.executable, __file__, "worker", str(spec_path), str(self.out)],
                stdout=subprocess.DEVNULL,
                stderr=errors,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def stop(self) -> None:

        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(REQUEST_TIMEOUT + 20)
        kill_group(proc, 0)
        if not self.out.exists():
            log_text = (self.folder / f"{self.label}.log").read_text(errors="replace")[-1500:]
            raise BenchError(f"the load generator ({self.label}) wrote no figures: {log_text}")
        self.traffic = Traffic.read(self.out)


class Profiler:
    """``py-spy record`` on the service's main process (the web application's) while loaded."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.proc: subprocess.Popen[bytes] | None = None
        self.problem = ""

    def start(self, pid: int) -> None:
        binary = _py_spy()
        if binary is None:
            self.problem = "py-spy is not installed (.venv/bin/pip install py-spy)"
            return
        command = [str(binary), "record", "--pid", str(pid), *PY_SPY_OPTIONS]
        self.proc = subprocess.Popen(  # noqa: S603
            [*command, "--output", str(self.output)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            _out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate()
        if not self.output.exists():
            self.problem = "py-spy wrote no profile: " + err.decode(errors="replace")[-500:]


class StormLoad:
    """The click storm during the send (service.Load)."""

    def __init__(self, folder: Path, spec: dict[str, Any], profile: Path | None) -> None:
        self.generator = Generator(folder, spec, "storm")
        self.profiler = Profiler(profile) if profile is not None else None

    def start(self, service: Service, send_at: float) -> None:
        self.generator.start(service.web_url)
        if self.profiler is not None and service.proc is not None:
            self.profiler.start(service.proc.pid)

    def stop(self, wait: bool = True) -> None:
        try:
            self.generator.stop()
        finally:
            if self.profiler is not None:
                self.profiler.stop()

    @property
    def cpu_pids(self) -> dict[str, int]:
        proc = self.generator.proc
        return {} if proc is None else {"load generator": proc.pid}


@dataclass
class Import:
    """The office's CSV import through the web page, timed."""

    rows: int
    began: float = 0.0
    ended: float = 0.0
    status: int = 0
    problem: str = ""
    routed_wait: float = 0.0  # seconds from send_at until routing was done and it began


_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def _csrf(html: str, page: str) -> str:

    match = _CSRF.search(html)
    if match is None:
        raise BenchError(f"{page}: no CSRF field in the page")
    return match.group(1)


class ImportLoad:
    """During the send: the office's import of a large CSV, and /healthz probed throughout."""

    def __init__(self, folder: Path, csv_data: bytes, rows: int, password: str, db: Path) -> None:
        self.probe = Generator(
            folder,
            {
                "mode": GET_HEALTHZ,
                "clients": 1,
                "interval": HEALTHZ_INTERVAL,
                "timeout": REQUEST_TIMEOUT * 3,
            },
            "healthz",
        )
        self.csv_data, self.password, self.db = csv_data, password, db
        self.result = Import(rows)
        self.thread: threading.Thread | None = None

    def start(self, service: Service, send_at: float) -> None:
        self.probe.start(service.web_url)
        self.thread = threading.Thread(
            target=self._run, args=(service.web_url, send_at), name="office-import", daemon=True
        )
        self.thread.start()

    def _run(self, url: str, send_at: float) -> None:
        try:
            self._wait_for_routing(send_at)
            self._import(url)
        except Exception as exc:
            self.result.problem = f"{type(exc).__name__}: {exc}"[:500]

    def _wait_for_routing(self, send_at: float) -> None:
        """The import begins once the announcement is routed: its new subscribers must not
        join the send (the figure is the send of N beside the import)."""
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            while time.time() < send_at + 120:
                row = con.execute("SELECT MAX(recipient_count) FROM items").fetchone()
                if row and row[0] is not None:
                    break
                time.sleep(0.05)
        finally:
            con.close()
        self.result.routed_wait = time.time() - send_at

    def _import(self, url: str) -> None:
        import httpx  # the project's dependency, installed in .venv

        with httpx.Client(base_url=url, timeout=IMPORT_TIMEOUT, follow_redirects=False) as client:
            page = client.get("/buero/anmelden")
            login = client.post(
                "/buero/anmelden",
                data={
                    "name": OFFICE_USER,
                    "password": self.password,
                    "next": "/buero/abonnenten/import",
                    "csrf_token": _csrf(page.text, "/buero/anmelden"),
                },
            )
            if login.status_code != 303:
                self.result.problem = f"login answered {login.status_code}"
                return
            form = client.get("/buero/abonnenten/import")
            token = _csrf(form.text, "/buero/abonnenten/import")
            self.result.began = time.time()
            answer = client.post(
                "/buero/abonnenten/import",
                data={"csrf_token": token},
                files={"file": ("abonnenten.csv", self.csv_data, "text/csv")},
            )
            self.result.ended = time.time()
            self.result.status = answer.status_code
            if answer.status_code != 200:
                self.result.problem = f"the import answered {answer.status_code}"

    def stop(self, wait: bool = True) -> None:
        try:
            if self.thread is not None:
                self.thread.join(timeout=IMPORT_TIMEOUT if wait else 0)
        finally:
            self.probe.stop()

    @property
    def cpu_pids(self) -> dict[str, int]:
        proc = self.probe.proc
        return {} if proc is None else {"healthz probe": proc.pid}


# --------------------------------------------------------------------------------------------
# the storm run and the import run, on copies of the seeded database


@dataclass
class Check:
    """The one-click unsubscribes that got 200, against the outbox after the run."""

    checked: int = 0
    cancelled: int = 0  # the message cancelled by the unsubscribe
    not_routed: int = 0  # unsubscribed before routing reached them: no message at all
    already_sent: int = 0  # sent before the 200
    in_flight: int = 0  # claimed by a sender before the unsubscribe, sent after
    unread: int = 0  # the generator could not read the outbox right after the 200
    violations: list[str] = field(default_factory=list)


@dataclass
class StormResult:
    clients: int
    share: float
    storm: Result | None = None  # the send with the storm
    traffic: Traffic | None = None
    check: Check | None = None
    profile: Path | None = None
    profile_problem: str = ""
    imported: Result | None = None  # the send with the import
    office_import: Import | None = None
    healthz: Traffic | None = None
    subscribers_after_import: int | None = None
    notes: list[str] = field(default_factory=list)


def _seeded_people(db: Path) -> list[tuple[int, int]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT id, token_version FROM subscribers ORDER BY id").fetchall()
    finally:
        con.close()


def _links(project: Project) -> Any:
    """notifier's own Links with the project's settings and secret key (made here if new)."""
    from notifier.config import load_settings
    from notifier.links import Links

    return Links(load_settings(project.config, environ=project.env))


def storm_spec(
    project: Project, people: list[tuple[int, int]], share: float, clients: int
) -> dict[str, Any]:
    """Preferences links of people spread over all, and unsubscribe links of people from the
    later half in random order: their messages are queued longest (claims go by outbox id,
    which follows the subscribers), so most unsubscribes find a message to cancel."""
    from notifier.links import PERSONAL

    links = _links(project)
    rng = random.Random(20261203)  # noqa: S311 - test data
    step = max(1, len(people) // PAGE_TOKENS)
    pages = [
        f"/einstellungen/{links.token(PERSONAL, sid, version)}" for sid, version in people[::step]
    ]
    rng.shuffle(pages)
    later = people[len(people) // 2 :]
    chosen = rng.sample(later, min(len(later), UNSUBSCRIBE_TOKENS)) if share > 0 else []
    unsubscribes = [
        [sid, f"/abmelden/{links.token(PERSONAL, sid, version)}"] for sid, version in chosen
    ]
    return {
        "mode": "storm",
        "clients": clients,
        "share": share,
        "pages": pages,
        "unsubscribes": unsubscribes,
        "db": str(project.db),
        "timeout": REQUEST_TIMEOUT,
    }


def check_unsubscribes(db: Path, traffic: Traffic) -> Check:
    """Each one-click unsubscribe that got 200: the person's outbox row, seen right after the
    200 and at the end. Cancelled or not routed stays so; sent before the 200, or in flight
    (claimed before the unsubscribe committed), may be sent; queued after the 200, or sent
    after having been seen cancelled, is a violation."""
    check = Check()
    seen = {sid: (at, state) for sid, at, state in traffic.unsubscribed}
    final: dict[int, list[tuple[str, float | None]]] = {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        ids = list(seen)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for sid, state, sent_at in con.execute(
                "SELECT subscriber_id, state, (julianday(sent_at) - 2440587.5) * 86400.0"  # noqa: S608
                f" FROM outbox WHERE subscriber_id IN ({marks})",
                chunk,
            ):
                final.setdefault(sid, []).append((state, sent_at))
    finally:
        con.close()
    for sid, (at, state) in seen.items():
        check.checked += 1
        rows = final.get(sid, [])
        end = ",".join(sorted(s for s, _ in rows)) or "none"
        sent_after = [t for s, t in rows if s == "sent" and t is not None and t > at]
        if state.startswith("unread"):
            check.unread += 1
        elif state not in OK_STATES:
            check.violations.append(f"subscriber {sid}: still {state} after the 200 (end: {end})")
        elif state in ("cancelled", "none"):
            if end not in ("cancelled", "none"):
                check.violations.append(
                    f"subscriber {sid}: {state} after the 200, {end} at the end"
                )
            elif end == "none":
                check.not_routed += 1
            else:
                check.cancelled += 1
        elif state == "sending":
            check.in_flight += 1
        elif sent_after:
            check.violations.append(f"subscriber {sid}: sent after the 200 though seen sent")
        else:
            check.already_sent += 1
    return check


def import_csv(rows: int, project: Project) -> bytes:
    """``rows`` new subscribers (other addresses than the seeded ones) as the office's CSV."""
    import csv
    import io
    import tomllib

    with (REPO / "notifier" / "data" / "organisations.csv").open(encoding="utf-8") as handle:
        org_keys = [row["key"] for row in csv.DictReader(handle)]
    topics = [t["key"] for t in tomllib.loads(project.config.read_text())["topics"]]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["email", "name", "role", "organisation", "topics", "rhythm"])
    for row in subscriber_rows(rows, org_keys, topics):
        writer.writerow(["i" + row[0][1:], *row[1:]])  # b000001.… → i000001.…
    return out.getvalue().encode("utf-8")


def run_storm(
    folder: Path,
    sink: Sink,
    delivery: dict[str, Any],
    seeded: Path,
    normal: Result,
    args: argparse.Namespace,
) -> StormResult:
    """The send with the storm, then (unless --storm-import-rows 0) the send with the import,
    each on a fresh copy of the seeded database, with the same sink as the normal send."""

    storm = StormResult(clients=args.storm_clients, share=args.storm_unsubscribe)

    def fresh(name: str) -> Project:
        (folder / name).mkdir()
        project = make_project(folder / name, sink.port, delivery)
        project.restore(seeded)
        return project

    def result_for(project: Project) -> Result:
        return Result(
            n=normal.n,
            sink_label=normal.sink_label,
            raw=normal.raw,
            seeding=normal.seeding,
            delivery_applied=project.delivery_applied,
            delivery_refused=project.delivery_refused,
        )

    project = fresh("storm")
    people = _seeded_people(project.db)
    log(f"storm: {fmt_int(len(people))} people; signing their links with the project's key …")
    spec = storm_spec(project, people, storm.share, storm.clients)
    storm.profile = Path(args.profile).resolve() if args.profile else None
    load = StormLoad(project.folder, spec, storm.profile)
    storm.storm = result_for(project)
    log(f"the send with the storm: {storm.clients} clients from send_at until all is sent …")
    run_e2e(storm.storm, project, sink, args, load)
    storm.traffic = load.generator.traffic
    if load.profiler is not None:
        storm.profile_problem = load.profiler.problem
    if storm.traffic is not None:
        storm.check = check_unsubscribes(project.db, storm.traffic)
        log(
            f"storm: {fmt_int(len(storm.traffic.requests))} requests, "
            f"{storm.traffic.rate:.0f}/s, {storm.traffic.error_count} errors"
        )

    if args.storm_import_rows > 0:
        project = fresh("import")
        password = secrets.token_urlsafe(24)
        project.cli_ok("users", "add", OFFICE_USER, "--password", password, timeout=120)
        data = import_csv(args.storm_import_rows, project)
        load_import = ImportLoad(project.folder, data, args.storm_import_rows, password, project.db)
        storm.imported = result_for(project)
        log(
            f"the send with the office's import of {fmt_int(args.storm_import_rows)} rows "
            f"({len(data) / 1e6:.1f} MB) and /healthz probed …"
        )
        import_args = argparse.Namespace(**{**vars(args), "stall": max(args.stall, 600.0)})
        run_e2e(storm.imported, project, sink, import_args, load_import)
        storm.office_import = load_import.result
        storm.healthz = load_import.probe.traffic
        con = sqlite3.connect(f"file:{project.db}?mode=ro", uri=True)
        with contextlib.closing(con):
            storm.subscribers_after_import = con.execute(
                "SELECT COUNT(*) FROM subscribers"
            ).fetchone()[0]
    return storm


# --------------------------------------------------------------------------------------------
# report


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.0f} ms"


def report_storm(normal: Result, storm: StormResult) -> list[bool | None]:
    """The storm's table beside the normal send of the same run; the verdict of each floor."""

    rows: list[tuple[str, str, str, str]] = []
    verdicts: list[bool | None] = []

    def floor(name: str, value: str, text: str, ok: bool | None) -> None:
        rows.append((name, value, text, verdict_word(ok) if text else ""))
        if text:
            verdicts.append(ok)

    traffic, run, check = storm.traffic, storm.storm, storm.check
    base = normal.steady_rate
    rate = None if run is None else run.steady_rate
    ratio = None if base is None or rate is None or base <= 0 else rate / base
    floor("sending rate without the storm (above)",
          "—" if base is None else f"{fmt_int(base)} msg/s", "", None)  # fmt: skip
    floor("sending rate during the storm", "—" if rate is None else f"{fmt_int(rate)} msg/s",
          "", None)  # fmt: skip
    floor("storm / without", "—" if ratio is None else f"{ratio:.2f}",
          f"≥ {FLOOR_STORM_SENDING:.2f}", None if ratio is None else
          ratio >= FLOOR_STORM_SENDING)  # fmt: skip
    rps = None if traffic is None else traffic.rate
    floor(f"requests/s, {storm.clients} clients", "—" if rps is None else f"{rps:.0f}/s",
          f"≥ {FLOOR_STORM_RPS:.0f}/s", None if rps is None else
          rps >= FLOOR_STORM_RPS)  # fmt: skip
    latencies = [] if traffic is None else traffic.latencies()
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    floor("p50 latency", _ms(p50), "", None)
    floor("p99 latency", _ms(p99), f"≤ {FLOOR_STORM_P99_MS:.0f} ms",
          None if p99 is None else p99 * 1000 <= FLOOR_STORM_P99_MS)  # fmt: skip
    errors = None if traffic is None else traffic.error_count
    floor("errors", "—" if errors is None else fmt_int(errors), "0",
          None if errors is None else errors == 0)  # fmt: skip
    floor("one-click unsubscribes (200) checked",
          "—" if check is None else f"{fmt_int(check.checked)}", "all cancel",
          None if check is None else not check.violations)  # fmt: skip
    imp, healthz = storm.office_import, storm.healthz
    window = None
    if imp is not None and imp.began and imp.ended:
        window = (imp.began, imp.ended)
    during = [] if healthz is None or window is None else healthz.latencies(between=window)
    worst = max(during) if during else None
    if imp is not None:
        floor(f"/healthz during the {fmt_int(imp.rows)}-row import, max", _ms(worst),
              f"≤ {FLOOR_HEALTHZ_MAX_MS:.0f} ms", None if worst is None else
              worst * 1000 <= FLOOR_HEALTHZ_MAX_MS)  # fmt: skip
        irate = None if storm.imported is None else storm.imported.steady_rate
        iratio = None if base is None or irate is None or base <= 0 else irate / base
        floor("sending rate during the import / without",
              "—" if iratio is None else f"{iratio:.2f}", f"≥ {FLOOR_STORM_SENDING:.2f}",
              None if iratio is None else iratio >= FLOOR_STORM_SENDING)  # fmt: skip

    width = max(len(r[0]) for r in rows)
    print()
    print(
        f"click storm (issue 12): {storm.clients} clients, "
        f"{storm.share:.0%} one-click unsubscribes, the rest preferences pages, from send_at "
        "until all is sent, on a copy of the seeded database"
    )
    print(f"  {'figure':<{width}}  {'value':>12}  {'floor':<15} result")
    print(f"  {'-' * width}  {'-' * 12}  {'-' * 15} ------")
    for name, value, text, result in rows:
        print(f"  {name:<{width}}  {value:>12}  {text:<15} {result}")
    print()
    print("  details")

    def detail(label: str, value: str) -> None:
        print(f"    {label:<44} {value}")

    notes = list(storm.notes)
    if traffic is not None:
        detail("storm: requests, seconds", f"{fmt_int(len(traffic.requests))} in "
               f"{traffic.seconds:.1f} s")  # fmt: skip
        for kind in (GET_PAGE, POST_UNSUBSCRIBE):
            values = traffic.latencies(kind)
            detail(
                f"  {kind}",
                f"{fmt_int(len(values))}, p50 {_ms(percentile(values, 0.5))}, "
                f"p90 {_ms(percentile(values, 0.9))}, p99 {_ms(percentile(values, 0.99))}, "
                f"max {_ms(max(values) if values else None)}",
            )
        for text, count in sorted(traffic.errors.items(), key=lambda e: -e[1])[:5]:
            detail("  error", f"{count} × {text}")
        detail("load generator CPU", f"{traffic.cpu_seconds / traffic.seconds:.2f} cores")
    if run is not None:
        e2e = run.e2e_rate
        detail("storm run: end to end (send_at → last sent)",
               "—" if e2e is None else f"{fmt_int(e2e)} msg/s (without: "
               + ("—" if normal.e2e_rate is None else fmt_int(normal.e2e_rate)) + ")")  # fmt: skip
        states = ", ".join(f"{k} {fmt_int(v)}" for k, v in sorted(run.states.items()))
        detail("storm run: outbox at the end", states or "empty")
        if run.memory is not None:
            detail("storm run: peak RSS, notifier tree", f"{run.memory.tree_peak_mb:.1f} MB")
        if run.cpu is not None:
            detail("storm run: CPU", run.cpu.describe())
            if run.cpu.other_cores > OTHER_CPU_LIMIT:
                notes.append(
                    f"DISTURBED: other processes used {run.cpu.other_cores:.2f} cores during "
                    "the storm run"
                )
        notes += run.notes
    if check is not None:
        detail(
            "unsubscribes: cancelled / not routed / sent before / in flight",
            f"{fmt_int(check.cancelled)} / {fmt_int(check.not_routed)} / "
            f"{fmt_int(check.already_sent)} / {fmt_int(check.in_flight)}",
        )
        if check.unread:
            notes.append(f"{check.unread} unsubscribes could not be checked (outbox unread)")
        for violation in check.violations[:5]:
            detail("  VIOLATION", violation)
        if check.violations:
            notes.append(f"{len(check.violations)} unsubscribes did not stop their message")
    if storm.profile is not None:
        detail("profile (py-spy, main process)", storm.profile_problem or str(storm.profile))
        if not storm.profile_problem:
            notes.append("the storm run was profiled: py-spy's sampling lowers its figures")
    if imp is not None:
        seconds = imp.ended - imp.began if imp.began and imp.ended else None
        detail("import: HTTP status, seconds",
               f"{imp.status or '—'}, " + ("—" if seconds is None else
               f"{seconds:.1f} s ({fmt_int(imp.rows / seconds)} rows/s)"))  # fmt: skip
        detail("import: began after send_at (routing done)", f"{imp.routed_wait:.2f} s")
        if storm.subscribers_after_import is not None:
            detail("import: subscribers after it",
                   f"{fmt_int(storm.subscribers_after_import)} (N + rows = "
                   f"{fmt_int(normal.n + imp.rows)})")  # fmt: skip
        if during:
            detail(
                "/healthz during the import",
                f"{fmt_int(len(during))} probes, p50 {_ms(percentile(during, 0.5))}, "
                f"p99 {_ms(percentile(during, 0.99))}, max {_ms(worst)}",
            )
        if healthz is not None:
            every = healthz.latencies()
            detail("/healthz over the whole run", f"{fmt_int(len(every))} probes, max "
                   + _ms(max(every) if every else None))  # fmt: skip
        if imp.problem:
            notes.append(f"the import failed: {imp.problem}")
        imported = storm.imported
        if imported is not None:
            if imported.last_sent_s is not None and seconds is not None:
                overlap = imported.last_sent_s - imp.routed_wait
                detail("import run: send after the import began", f"{overlap:.1f} s of it "
                       f"(the import took {seconds:.1f} s)")  # fmt: skip
            if imported.cpu is not None:
                detail("import run: CPU", imported.cpu.describe())
            notes += imported.notes
    for note in notes:
        print(f"  NOTE: {note}")
    return verdicts


# --------------------------------------------------------------------------------------------
# profile summary


def summarise_profile(path: Path, top: int = 25) -> list[str]:
    """py-spy's raw (collapsed) stacks: the frames with the most samples, inclusive (the
    frame or anything it called) and self (the frame itself), as lines of text."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        total += count
        for frame in set(frames):
            inclusive[_short(frame)] += count
        if frames:
            own[_short(frames[-1])] += count
            packages[_package(frames[-1])] += count
    lines = [f"{total} samples", "self, by package:"]
    lines += [f"  {c / total:6.1%}  {f}" for f, c in packages.most_common(top)]
    lines.append("inclusive:")
    lines += [f"  {c / total:6.1%}  {f}" for f, c in inclusive.most_common(top)]
    lines.append("self:")
    lines += [f"  {c / total:6.1%}  {f}" for f, c in own.most_common(top)]
    return lines


def _package(frame: str) -> str:
    """The package a frame's code belongs to: ``jinja2``, ``sqlalchemy``, ``notifier`` …, the
    standard library's module (``asyncio``, ``sqlite3``), or the template (``<template>``)."""
    match = re.fullmatch(r".*? \((.*?)(?::\d+)?\)", frame)
    file = match.group(1) if match else frame
    if "site-packages/" in file:
        return file.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/notifier/" in file:
        return "notifier/templates" if file.endswith(".html") else "notifier"
    if file.endswith((".html", ".txt")):
        return "<template>"
    if "/lib/python3" in file:
        rest = file.split("/lib/python3", 1)[1].split("/", 2)
        return "stdlib " + (rest[1].removesuffix(".py") if len(rest) > 1 else "?")
    return file


def _short(frame: str) -> str:
    """``function (/long/path/site-packages/pkg/mod.py:12)`` → ``function (pkg/mod.py)``."""
    match = re.fullmatch(r"(.*?) \((.*?)(?::\d+)?\)", frame)
    if match is None:
        return frame
    name, file = match.groups()
    for marker in ("site-packages/", "/notifier/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            if marker == "/notifier/":
                file = "notifier/" + file
            break
    return f"{name} ({file})"


def main(argv: Sequence[str]) -> int:
    if len(argv) == 3 and argv[0] == "worker":
        return worker(Path(argv[1]), Path(argv[2]))
    if len(argv) == 2 and argv[0] == "profile":
        print("\n".join(summarise_profile(Path(argv[1]))))
        return 0
    print(
        "usage: storm.py worker SPEC OUT (started by bench/run --storm)\n"
        "       storm.py profile FILE (py-spy's raw output: the frames with most samples)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
