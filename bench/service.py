"""The end-to-end run: `notifier run` in its own session, one announcement to everyone, and
the send watched in the database, at the sink and in /proc until it is done."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

from common import ANNOUNCEMENT_BODY, ANNOUNCEMENT_SUBJECT, BenchError, fmt_int, log
from procfs import CpuWindow, TreeMemory, kill_group, session_members
from project import Project
from raw import RawResult
from seeding import Seeding
from sink import Sink, sink_connections

if TYPE_CHECKING:
    from storm import StormResult


class Service:
    """``notifier run`` in its own session; its output goes to service.log."""

    READY = "Beenden mit Strg+C"
    # "  Web:         http://127.0.0.1:PORT/anmelden …": where the web application listens.
    WEB = re.compile(r"Web:\s+(http://[^/\s]+)/")

    def __init__(self, project: Project) -> None:
        self.project = project
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready = threading.Event()
        self.tail: deque[str] = deque(maxlen=40)
        self.log_path = project.folder / "service.log"
        self.stop_seconds: float | None = None
        self.web_url = ""  # http://host:port of the web application, once it is ready
        self.killed: list[int] = []

    def start(self, timeout: float) -> float:
        began = time.perf_counter()
        self.proc = subprocess.Popen(  # noqa: S603
            [str(self.project.notifier), "--config", str(self.project.config), "run"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.project.env,
            start_new_session=True,
        )
        threading.Thread(target=self._read, name="service-log", daemon=True).start()
        while not self.ready.wait(0.1):
            if self.proc.poll() is not None:
                raise BenchError("`notifier run` exited at start:\n" + self.last_lines())
            if time.perf_counter() - began > timeout:
                raise BenchError("`notifier run` was not ready in time:\n" + self.last_lines())
        return time.perf_counter() - began

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with self.log_path.open("wb") as sink:
            for raw in self.proc.stdout:
                sink.write(raw)
                line = raw.decode("utf-8", "replace").rstrip()
                self.tail.append(line)
                web = self.WEB.search(line)
                if web and not self.web_url:
                    self.web_url = web.group(1)
                if self.READY in line:
                    self.ready.set()

    def last_lines(self) -> str:
        return "\n".join(f"    | {line}" for line in self.tail)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM to the service (as a supervisor would), then SIGKILL whatever is left."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            began = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
            if proc.poll() is not None:
                self.stop_seconds = time.perf_counter() - began
        self.killed = sorted(session_members(proc.pid))
        kill_group(proc, 0)


@dataclass
class Result:
    n: int
    sink_label: str
    raw: RawResult
    seeding: Seeding
    delivery_applied: dict[str, Any]
    delivery_refused: list[str]
    notes: list[str] = field(default_factory=list)
    startup_s: float = 0.0
    lead_s: float = 0.0
    complete: bool = False
    states: dict[str, int] = field(default_factory=dict)
    recipient_count: int | None = None
    routed_at_s: float | None = None  # items.routed_at - send_at
    outbox_full_s: float | None = None  # first poll with N rows in the outbox - send_at
    first_sent_s: float | None = None  # min(sent_at) - send_at
    last_sent_s: float | None = None  # max(sent_at) - send_at
    sent_count: int = 0
    sink_first_s: float | None = None
    sink_last_s: float | None = None
    sink_received: int = 0
    memory: TreeMemory | None = None
    stop_s: float | None = None
    killed: list[int] = field(default_factory=list)
    failures: list[tuple[str, int | None, str | None]] = field(default_factory=list)
    peak_connections: int = 0  # established SMTP connections at the sink, highest sample
    cpu: CpuWindow | None = None  # the delivery phase: send_at until the end of the wait
    # Issue 14: the same announcement signed with DKIM, on a copy of the seeded database.
    signed: Result | None = None
    dkim_algorithm: str = ""
    openssl_rate: float | None = None  # RSA-2048 signatures per CPU second, this process
    # Issue 12: the same announcement under a click storm and during an import (bench/storm.py).
    storm: StormResult | None = None

    @property
    def e2e_rate(self) -> float | None:
        """N / (last sent - send_at): routing, claiming, rendering, building and SMTP."""
        if self.last_sent_s is None or self.last_sent_s <= 0 or not self.complete:
            return None
        return self.sent_count / self.last_sent_s

    @property
    def steady_rate(self) -> float | None:
        """N / (last sent - first sent): the sending phase alone."""
        if self.first_sent_s is None or self.last_sent_s is None or not self.complete:
            return None
        span = self.last_sent_s - self.first_sent_s
        return self.sent_count / span if span > 0 else None

    @property
    def ratio(self) -> float | None:
        rate = self.e2e_rate
        return None if rate is None or self.raw.rate <= 0 else rate / self.raw.rate


def write_announcement(path: Path, send_at_local: str) -> None:
    path.write_text(
        "+++\n"
        f'subject = "{ANNOUNCEMENT_SUBJECT}"\n'
        f'send_at = "{send_at_local}"\n'
        "important = false\n"
        "+++\n" + ANNOUNCEMENT_BODY,
        encoding="utf-8",
    )


def _progress_line(result: Result, total: int, open_rows: int, started: float) -> str:
    return (
        f"  {time.time() - started:6.1f} s  outbox {fmt_int(total):>7}  "
        f"done {fmt_int(total - open_rows):>7} / {fmt_int(result.n)}  "
        f"to send {fmt_int(open_rows):>7}"
    )


class Load(Protocol):
    """Work done against the service during the send (bench/storm.py): started at send_at,
    stopped once the send is done (or given up), while the service still runs."""

    def start(self, service: Service, send_at: float) -> None: ...

    def stop(self, wait: bool = True) -> None:
        """Stop it; ``wait=False``: at once, without waiting for work still going on."""
        ...

    @property
    def cpu_pids(self) -> dict[str, int]:
        """Its own processes (label -> pid), counted apart in the CPU split."""
        ...


def run_e2e(
    result: Result,
    project: Project,
    sink: Sink,
    args: argparse.Namespace,
    load: Load | None = None,
) -> None:
    """Start the service, announce to all N, watch the send until it is done, stop the service.
    With ``load``, that load runs from send_at until the send is done; messages it cancels
    (one-click unsubscribes) count as done."""
    n = result.n
    service = Service(project)
    watcher: Any = None
    try:
        log("starting `notifier run` …")
        result.startup_s = service.start(timeout=120)
        assert service.proc is not None
        memory = TreeMemory(service.proc.pid)
        result.memory = memory
        memory.sample()
        watcher = project.watcher()

        tz = ZoneInfo(tomllib.loads(project.config.read_text())["scheduler"]["timezone"])
        target = datetime.now(tz) + timedelta(seconds=args.lead)
        send_at_local = target.strftime("%Y-%m-%dT%H:%M:%S")
        announcement = project.folder / "announcement.md"
        write_announcement(announcement, send_at_local)
        log(f"announcing one message to all {fmt_int(n)} subscribers, send_at {send_at_local} …")
        project.cli_ok("announce", announcement, timeout=120)
        item_id = watcher.last_item_id()
        if item_id is None:
            raise BenchError("`notifier announce` succeeded but no item is in the database")
        _status, send_at, _routed, _count = watcher.item(item_id)
        result.lead_s = send_at - time.time()
        if result.lead_s < 0:
            result.notes.append(
                f"the announcement was stored {-result.lead_s:.1f} s after its send_at: "
                "routing and first-message figures are too small; use a larger --lead"
            )
        baseline = sink.received()
        # CPU is counted from send_at on; memory every 0.5 s (VmHWM keeps each process's peak),
        # the connections at the sink every second: the benchmark itself stays light.
        cpu = CpuWindow({"sink": sink.pid, "benchmark": os.getpid()}, project.cpu_groups)
        next_sample = next_connections = 0.0

        deadline = time.time() + args.timeout
        last_print = 0.0
        interactive = sys.stderr.isatty()
        started = time.time()
        progress: tuple[int, int] = (-1, -1)  # (sent, received by the sink)
        last_change = started
        # The rows the send must finish: N, or with a load what routing counted (someone who
        # unsubscribed before routing gets no row).
        expected: int | None = n if load is None else None
        while True:
            now = time.time()
            total, open_rows = watcher.progress()
            done = total - open_rows  # sent, or failed for good
            if result.cpu is None and now >= send_at:
                if load is not None:
                    load.start(service, send_at)
                    cpu.pids |= load.cpu_pids
                memory.sample()
                cpu.begin(memory.cpu_ticks)
                result.cpu = cpu
            elif now >= next_sample:
                memory.sample()
                next_sample = now + 0.5
            if now >= next_connections:
                connections = sink_connections(sink.port)
                result.peak_connections = max(result.peak_connections, connections)
                next_connections = now + 0.5
            if expected is None and total:
                expected = watcher.item(item_id)[3]  # None until routing has committed
            if result.outbox_full_s is None and total >= (expected or n):
                result.outbox_full_s = now - send_at
            if now - last_print >= (1.0 if interactive else 10.0):
                line = _progress_line(result, total, open_rows, started)
                print(("\r" + line) if interactive else line, end="", file=sys.stderr, flush=True)
                if not interactive:
                    print(file=sys.stderr)
                last_print = now
            if (done, sink.received()) != progress:
                progress = (done, sink.received())
                last_change = now
            if total >= (expected or n) and open_rows == 0:
                states = watcher.states()
                cancelled = states.get("cancelled", 0) if load is not None else 0
                if states.get("sent", 0) + cancelled >= (expected or n):
                    result.complete = True
                else:
                    result.notes.append("stopped waiting: nothing to send, not all sent")
                break
            if not service.alive():
                result.notes.append(
                    "`notifier run` exited during the run:\n" + service.last_lines()
                )
                break
            if now > deadline:
                result.notes.append(
                    f"TIMEOUT: not all sent within {args.timeout:.0f} s (--timeout); "
                    "figures below are partial"
                )
                break
            if now - max(last_change, send_at) > args.stall:
                result.notes.append(
                    f"STALLED: nothing sent and nothing received by the sink for "
                    f"{args.stall:.0f} s (--stall); figures below are partial"
                )
                break
            if now < send_at:
                time.sleep(min(args.poll, send_at - now))
            else:
                time.sleep(0.05 if result.outbox_full_s is None else args.poll)
        if interactive:
            print(file=sys.stderr)
        if not result.complete:
            result.notes.append("last lines of the service's output:\n" + service.last_lines())
        if load is not None and result.cpu is not None:
            # Its processes' CPU is read before they end (/proc forgets them), then it stops.
            memory.sample()
            cpu.end(memory.cpu_ticks)
            load.stop()
        time.sleep(0.2)  # let the sink's last counter line arrive
        memory.sample()
        if result.cpu is not None and load is None:
            cpu.end(memory.cpu_ticks)
        result.states = watcher.states()  # exact, once: the polls above count cheaply

        _status, send_at, routed_at, result.recipient_count = watcher.item(item_id)
        if routed_at is not None:
            result.routed_at_s = routed_at - send_at
        first, last, result.sent_count = watcher.sent_span()
        if first is not None and last is not None:
            result.first_sent_s = first - send_at
            result.last_sent_s = last - send_at
        result.failures = watcher.failures()
        result.sink_received = sink.received() - baseline
        sink_first = sink.first_time_above(baseline)
        sink_last = sink.time_reaching(baseline + n)
        result.sink_first_s = None if sink_first is None else sink_first - send_at
        result.sink_last_s = None if sink_last is None else sink_last - send_at
    finally:
        if watcher is not None:
            watcher.close()
        try:
            if load is not None:
                load.stop(wait=False)  # on an error or Ctrl-C (a second stop does nothing)
        finally:
            log("stopping `notifier run` with SIGTERM …")
            service.stop()
            result.stop_s = service.stop_seconds
            result.killed = service.killed
