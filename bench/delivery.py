"""Delivery benchmark: the real ``notifier run`` path against an SMTP sink on loopback.

It drives the service only through stable interfaces: the ``notifier`` CLI, the ``notifier run``
process, ``config.toml`` keys and the SQLite database file (read-only while the service runs).
See bench/README.md for what is measured and how to read the output. Entry point: ``bench/run``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from types import FrameType
from typing import Any
from zoneinfo import ZoneInfo

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # every byte of this benchmark stays on loopback

# The floors of issue 4 ("Performance floor"), defined at N = 100,000 with the C sink.
FLOOR_N = 100_000
FLOOR_E2E_RATE = 1_500.0  # messages/s end to end
FLOOR_RATIO = 0.9  # end to end / raw aiosmtplib, same run
FLOOR_ROUTING_S = 5.0  # send_at -> N recipients in the outbox
FLOOR_FIRST_S = 1.0  # send_at -> first message sent
FLOOR_RSS_MB = 200.0  # peak RSS of the notifier process tree
# Issue 14 (DKIM), in the same run: the signed end to end against the unsigned one, and the
# CPU a signature adds per message against one OpenSSL RSA-2048 signature of this machine.
FLOOR_SIGNED_RATIO = 0.45
FLOOR_SIGN_CPU = 1.5  # extra CPU per signed message, in OpenSSL RSA-2048 signatures
OPENSSL_SECONDS = 2.0  # how long the in-process OpenSSL sign rate is measured
FLAT_TOLERANCE = 1.2  # "flat": peak RSS at 100,000 at most this times the one at 10,000
FLAT_SIZES = (10_000, 100_000)

RAW_MAX = 20_000  # the raw aiosmtplib figure sends min(N, RAW_MAX) messages
RAW_ROUNDS = 2  # the raw figure is the best of this many rounds
RAW_SIZE = 5_600  # bytes of the prebuilt raw message (issue 4 measured ~5.6 KB)
CLI_SAMPLE = 5_000  # --seed auto imports this many rows through the CLI first, timed

# Delivery keys the parallel engine work adds; written only if the installed notifier accepts
# them (an unknown key stops `notifier` with "key 'delivery.X': unknown key").
OPTIONAL_DELIVERY_KEYS = ("connections", "processes")

SENDER = "bench@bench.example"
ROLES = ("staff", "mayor", "deputy_mayor", "council_member", "project_office")
FIRST_NAMES = (
    "Anna", "Jürgen", "Maria", "Thomas", "Sabine", "Josef", "Claudia", "Peter", "Elke",
    "Günter", "Ursula", "Markus", "Julia", "Heinz", "Bärbel", "Stefan", "Käthe", "Bernd",
)  # fmt: skip
LAST_NAMES = (
    "Schmitz", "Müller", "Weber", "Hoffmann", "Becker", "Klein", "Thiel", "Lenz", "Kaiser",
    "Schneider", "Wagner", "Meyer", "Jäger", "Krämer", "Schäfer", "Bauer", "Kreuz", "Nöllen",
)  # fmt: skip
DOMAINS = ("kreis.example", "vg-pruem.example", "bitburg.example", "og-eifel.example")

ANNOUNCEMENT_SUBJECT = "Digitale Kümmerer: neue Sprechstunden in Prüm und Schönecken"
# Chosen so that one rendered message is about 5.6 KB with the templates of November 2026.
ANNOUNCEMENT_BODY = """\
Die **Digitalen Kümmerer** bieten ab Januar neue Sprechstunden an: jeden ersten Dienstag im Monat
im Bürgerhaus Prüm und jeden dritten Donnerstag in Schönecken.

Wer Fragen zu Smartphone, Tablet oder den digitalen Diensten der Verwaltung hat, ist herzlich
willkommen. Eine Anmeldung ist nicht nötig; bringen Sie Ihr Gerät und, wenn vorhanden, Ihre
Zugangsdaten mit.

- Prüm, Bürgerhaus: 14 bis 17 Uhr
- Schönecken, Gemeindehaus: 15 bis 18 Uhr
- Telefonisch: dienstags 9 bis 12 Uhr unter 06561 15-0

Die Kümmerer helfen auch Vereinen und Ortsgemeinden, die ihre Termine im Dorfkalender
veröffentlichen oder die Mitfahrbank digital anmelden möchten. Für Gruppen ab fünf Personen
kommen sie nach Absprache gern in Ihr Dorfgemeinschaftshaus. Die Termine für das zweite Halbjahr
folgen im Juni.

Mehr dazu auf [eifelkreis-verbindet.de](https://www.eifelkreis-verbindet.de/).
"""


class BenchError(Exception):
    """A step of the benchmark failed; the message says which and why."""


# --------------------------------------------------------------------------------------------
# small helpers


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def run_cmd(
    cmd: Sequence[str | Path], *, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing its output (never through a shell)."""
    return subprocess.run(  # noqa: S603
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


def kill_group(proc: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM a child started in its own session, then SIGKILL what is left of its group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    for pid in session_members(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


# --------------------------------------------------------------------------------------------
# /proc: process tree and memory


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses.
    return text[text.rfind(")") + 2 :].split()


def session_members(sid: int) -> set[int]:
    """Processes whose session is ``sid`` (children started with start_new_session=True)."""
    members: set[int] = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and len(fields) > 3 and int(fields[3]) == sid:
                members.add(int(entry.name))
    return members


def descendants(pid: int) -> set[int]:
    """``pid`` and its descendants via /proc/<pid>/task/*/children."""
    found = {pid}
    todo = [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                with contextlib.suppress(OSError):
                    for child in (task / "children").read_text().split():
                        if int(child) not in found:
                            found.add(int(child))
                            todo.append(int(child))
    return found


def _status_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _pss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_ticks(pid: int) -> int:
    """CPU time of a process (all threads, plus its waited-for children) in clock ticks."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 15:
        return 0
    return sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime


def machine_busy_ticks() -> int:
    """CPU time spent by all cores on anything but idling, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return user + nice + system + irq + softirq + steal


@dataclass
class CpuWindow:
    """CPU used between :meth:`begin` and :meth:`end` by the machine and by known processes."""

    pids: dict[str, int]  # label -> pid (processes outside the service tree)
    # label -> CPU ticks of a group of processes (e.g. a database server's), read at both ends
    groups: dict[str, Callable[[], int]] = field(default_factory=dict)
    started: float = 0.0
    seconds: float = 0.0
    machine: int = 0
    own: dict[str, int] = field(default_factory=dict)
    tree: int = 0  # ticks of the service tree (filled in by the caller)

    def begin(self, tree_ticks: int = 0) -> None:
        self.started = time.monotonic()
        self.machine = -machine_busy_ticks()
        self.own = {label: -process_ticks(pid) for label, pid in self.pids.items()}
        self.own |= {label: -ticks() for label, ticks in self.groups.items()}
        self.tree = -tree_ticks

    def end(self, tree_ticks: int = 0) -> None:
        self.seconds = time.monotonic() - self.started
        self.machine += machine_busy_ticks()
        for label, pid in self.pids.items():
            self.own[label] += process_ticks(pid)
        for label, ticks in self.groups.items():
            self.own[label] += ticks()
        self.tree += tree_ticks

    def cores(self, ticks: int) -> float:
        return ticks / CLK_TCK / self.seconds if self.seconds > 0 else 0.0

    @property
    def other_cores(self) -> float:
        """Cores used by processes that are neither the service, the sink nor the benchmark."""
        return max(0.0, self.cores(self.machine - self.tree - sum(self.own.values())))

    def describe(self) -> str:
        parts = [f"notifier {self.cores(self.tree):.2f}"] if self.tree else []
        parts += [f"{label} {self.cores(t):.2f}" for label, t in self.own.items()]
        parts.append(f"other processes {self.other_cores:.2f}")
        return ", ".join(parts) + f" (of {os.cpu_count()} cores)"


OTHER_CPU_LIMIT = 0.15  # cores used by unrelated processes above which figures are flagged


@dataclass
class TreeMemory:
    """Peak memory and CPU time of a process tree, sampled from /proc (no psutil needed)."""

    root: int
    hwm_kb: dict[int, int] = field(default_factory=dict)  # per pid: highest VmHWM seen
    names: dict[int, str] = field(default_factory=dict)
    max_rss_sum_kb: int = 0  # highest sum of VmRSS over the tree at one sample
    max_pss_sum_kb: int = 0  # the same for PSS (shared pages split between their users)
    ticks: dict[int, int] = field(default_factory=dict)  # per pid: latest CPU ticks
    _pids: set[int] = field(default_factory=set)
    _found_at: float = -math.inf

    def sample(self) -> None:
        if time.monotonic() - self._found_at >= 1.0:  # look for new processes once a second
            self._pids = descendants(self.root) | session_members(self.root)
            self._found_at = time.monotonic()
        pids = self._pids
        rss_sum = pss_sum = 0
        for pid in pids:
            hwm = _status_kb(pid, "VmHWM")
            rss = _status_kb(pid, "VmRSS")
            if hwm is None or rss is None:
                continue  # gone, or a zombie
            self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), hwm)
            self.ticks[pid] = max(self.ticks.get(pid, 0), process_ticks(pid))
            rss_sum += rss
            pss_sum += _pss_kb(pid) or 0
            if pid not in self.names:
                with contextlib.suppress(OSError):
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    self.names[pid] = " ".join(c.decode(errors="replace") for c in cmdline[:4])
        self.max_rss_sum_kb = max(self.max_rss_sum_kb, rss_sum)
        self.max_pss_sum_kb = max(self.max_pss_sum_kb, pss_sum)

    @property
    def cpu_ticks(self) -> int:
        return sum(self.ticks.values())

    @property
    def tree_peak_mb(self) -> float:
        """Sum of each process's own peak: an upper bound of the tree's peak."""
        return sum(self.hwm_kb.values()) / 1024

    @property
    def root_peak_mb(self) -> float:
        return self.hwm_kb.get(self.root, 0) / 1024


# --------------------------------------------------------------------------------------------
# the SMTP sink


POSTFIX_PID = Path("/var/spool/postfix/pid/master.pid")


def _postfix_master_running() -> bool:
    try:
        pid = int(POSTFIX_PID.read_text().split()[0])
        return Path(f"/proc/{pid}/comm").read_text().strip() == "master"
    except (OSError, ValueError, IndexError):
        return False


def find_smtp_sink() -> Path | None:
    found = shutil.which("smtp-sink")
    if found:
        return Path(found)
    for candidate in (Path("/usr/sbin/smtp-sink"), Path("/usr/bin/smtp-sink")):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def install_smtp_sink(notes: list[str]) -> Path | None:
    """Install Debian's postfix package (for smtp-sink) without configuring a mail system."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        notes.append("smtp-sink is missing and cannot be installed here (needs root and apt-get)")
        return None
    log("smtp-sink not found: installing Debian's postfix package (no configuration) …")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    selection = "postfix postfix/main_mailer_type select No configuration\n"
    subprocess.run(
        ["debconf-set-selections"],  # noqa: S607
        input=selection,
        text=True,
        capture_output=True,
        check=False,
        timeout=60,
    )
    install = ["apt-get", "install", "-y", "--no-install-recommends", "postfix"]
    was_running = _postfix_master_running()
    result = run_cmd(install, timeout=600, env=env)
    if result.returncode != 0:
        log("apt-get install failed; running apt-get update once and trying again …")
        run_cmd(["apt-get", "update"], timeout=600, env=env)
        result = run_cmd(install, timeout=600, env=env)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        notes.append("installing postfix failed: " + " / ".join(tail))
        return None
    notes.append("installed Debian's postfix package for smtp-sink (mail system not configured)")
    if not was_running and _postfix_master_running():
        # The package started a daemon: this benchmark needs none, so stop and disable it.
        run_cmd(["postfix", "stop"], timeout=60)
        if shutil.which("systemctl"):
            run_cmd(["systemctl", "disable", "--now", "postfix"], timeout=60)
        notes.append("stopped and disabled the postfix daemon the package had started")
    return find_smtp_sink()


def sink_connections(port: int) -> int:
    """Established TCP connections to the sink's port (server side), from /proc/net/tcp."""
    local = f"0100007F:{port:04X}"  # 127.0.0.1 in the kernel's little-endian hex
    count = 0
    with contextlib.suppress(OSError), open("/proc/net/tcp", encoding="ascii") as table:
        for line in table:
            fields = line.split()
            if len(fields) > 3 and fields[1] == local and fields[3] == "01":
                count += 1
    return count


_COUNTER = re.compile(rb"mesg=(\d+)")


class Sink:
    """An SMTP sink process on 127.0.0.1 whose message counter is read continuously."""

    def __init__(self, kind: str, notes: list[str]) -> None:
        self.kind = kind
        self.label = ""
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.count = 0
        # (wall-clock time, message count) each time the counter moved; 20 ms resolution.
        self.samples: list[tuple[float, int]] = [(time.time(), 0)]
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self.notes = notes

    def start(self) -> None:
        binary: Path | None = None
        if self.kind == "c":
            binary = find_smtp_sink() or install_smtp_sink(self.notes)
            if binary is None:
                self.notes.append(
                    "FALLBACK: postfix's C smtp-sink could not be had; using the aiosmtpd sink "
                    "(Python, shares the two cores): figures are NOT comparable with the floors"
                )
                self.kind = "fallback"
        elif self.kind == "python":
            self.notes.append(
                "sink: aiosmtpd (Python) as asked by --sink python: figures are NOT comparable "
                "with the floors, which assume the C sink"
            )
        for _attempt in range(3):
            self.port = free_port()
            if binary is not None:
                # -c: running counters on stdout (read below); -4: IPv4 only; -t: do not drop
                # warm idle connections for 10 minutes; -m: up to 512 sessions at once (default
                # 256). Pipelining and everything else stay on.
                cmd = [str(binary), "-c", "-4", "-t", "600", "-m", "512"]
                if os.geteuid() == 0:
                    cmd += ["-u", "nobody"]  # smtp-sink refuses to run as root without -u
                cmd += [f"{HOST}:{self.port}", "1000"]
                self.label = f"postfix smtp-sink (C), {binary}"
            else:
                cmd = [sys.executable, str(Path(__file__).with_name("pysink.py"))]
                cmd += ["--port", str(self.port)]
                self.label = (
                    "aiosmtpd sink (Python), FALLBACK: C smtp-sink unavailable"
                    if self.kind == "fallback"
                    else "aiosmtpd sink (Python), as asked by --sink python"
                )
            self.proc = subprocess.Popen(  # noqa: S603
                cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True
            )
            if wait_for_port(self.port, 10) and self.proc.poll() is None:
                break
            kill_group(self.proc, 1)
            self.proc = None
        if self.proc is None:
            raise BenchError(f"the SMTP sink ({self.label}) did not start")
        self._reader = threading.Thread(target=self._read, name="sink-counter", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        tail = b""
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            tail = (tail + chunk)[-256:]
            matches = _COUNTER.findall(tail)
            if matches:
                now = time.time()
                value = int(matches[-1])
                with self._lock:
                    if value != self.count:
                        self.count = value
                        self.samples.append((now, value))
            time.sleep(0.02)  # batch the counter lines: cheap, 20 ms resolution

    @property
    def pid(self) -> int:
        return 0 if self.proc is None else self.proc.pid

    def received(self) -> int:
        with self._lock:
            return self.count

    def first_time_above(self, baseline: int) -> float | None:
        with self._lock:
            return next((t for t, c in self.samples if c > baseline), None)

    def time_reaching(self, target: int) -> float | None:
        with self._lock:
            return next((t for t, c in self.samples if c >= target), None)

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc, 3)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None


# --------------------------------------------------------------------------------------------
# raw aiosmtplib figure


def _raw_message(text: str) -> bytes:
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["Subject"] = ANNOUNCEMENT_SUBJECT
    msg["From"] = f"EIFELKREIS VERBINDET <{SENDER}>"
    msg["To"] = "Anna Schmitz <anna.schmitz@kreis.example>"
    msg["Reply-To"] = "projektbuero@bench.example"
    msg["Message-ID"] = "<raw.1@bench.example>"
    msg["List-Id"] = "EIFELKREIS VERBINDET <newsletter.bench.example>"
    msg.set_content(text, cte="quoted-printable")
    html = "".join(f'<p style="margin:0 0 12px 0;">{line}</p>' for line in text.splitlines())
    msg.add_alternative(f"<!DOCTYPE html><html><body>{html}</body></html>", subtype="html")
    return msg.as_bytes()


def build_raw_message(size: int) -> bytes:
    """A multipart/alternative message (text + HTML, quoted-printable) of about ``size`` bytes."""
    sentence = (
        "Die Digitalen Kümmerer bieten ab Januar neue Sprechstunden in Prüm und Schönecken an. "
        "Wer Fragen zu Smartphone, Tablet oder den digitalen Diensten hat, ist willkommen."
    )
    words = sentence.split(" ")
    chars = 200
    data = b""
    for _ in range(20):
        text = ""
        for index in range(10_000):
            if len(text) >= chars:
                break
            text += words[index % len(words)] + ("\n" if index % 12 == 11 else " ")
        data = _raw_message(text)
        if abs(len(data) - size) <= 50:
            break
        # Each character of text costs about two bytes (text part plus HTML part).
        chars = max(1, chars + (size - len(data)) // 2)
    return data


@dataclass
class RawResult:
    messages: int  # per round
    connections: int
    seconds: list[float]  # per round
    size: int
    sink_received: int  # all rounds
    cpu: CpuWindow

    @property
    def rates(self) -> list[float]:
        return [self.messages / s for s in self.seconds if s > 0]

    @property
    def rate(self) -> float:
        return max(self.rates, default=0.0)


async def _raw_send(port: int, count: int, connections: int, payload: bytes) -> float:
    import aiosmtplib  # the project's own dependency, installed in .venv

    clients = [
        aiosmtplib.SMTP(hostname=HOST, port=port, use_tls=False, start_tls=False, timeout=60)
        for _ in range(connections)
    ]
    await asyncio.gather(*(c.connect() for c in clients))
    remaining = count

    async def worker(client: aiosmtplib.SMTP) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await client.sendmail(SENDER, [f"raw{remaining}@bench.example"], payload)

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in clients))
    seconds = time.perf_counter() - start
    for client in clients:
        with contextlib.suppress(Exception):
            await client.quit()
    return seconds


def measure_raw(sink: Sink, count: int, connections: int, rounds: int) -> RawResult:
    """The best of ``rounds`` timed rounds (each on fresh connections, reused within it).

    On these machines the first round in a process is often about a quarter slower than the
    next ones; the client's capacity is what the engine is compared with, so the best counts.
    """
    payload = build_raw_message(RAW_SIZE)
    before = sink.received()
    log(
        f"raw: aiosmtplib, {connections} reused connections, {fmt_int(count)} messages, "
        f"best of {rounds} round(s) …"
    )
    cpu = CpuWindow({"sink": sink.pid, "benchmark": os.getpid()})
    cpu.begin()
    times = [asyncio.run(_raw_send(sink.port, count, connections, payload)) for _ in range(rounds)]
    cpu.end()
    time.sleep(0.1)
    received = sink.received() - before
    return RawResult(count, connections, times, len(payload), received, cpu)


# --------------------------------------------------------------------------------------------
# the temporary project: config, seed data


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise BenchError(f"cannot write {type(value).__name__} as TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def dump_toml(data: dict[str, Any]) -> str:
    """Enough TOML for config.toml: tables, arrays of tables, scalars, lists, inline tables."""
    out: list[str] = []

    def table(path: list[str], body: dict[str, Any], header: str | None) -> None:
        plain = {
            k: v for k, v in body.items() if not isinstance(v, dict) and not _is_table_array(v)
        }
        if header is not None:
            out.append(header)
        out.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in plain.items())
        out.append("")
        for key, value in body.items():
            sub = [*path, _toml_key(key)]
            if isinstance(value, dict):
                table(sub, value, f"[{'.'.join(sub)}]")
            elif _is_table_array(value):
                for entry in value:
                    table(sub, entry, f"[[{'.'.join(sub)}]]")

    table([], data, None)
    text = "\n".join(out).strip() + "\n"
    if tomllib.loads(text) != data:
        raise BenchError("internal error: the written config does not read back the same")
    return text


@dataclass
class Project:
    """A throw-away project folder: config.toml, the SQLite file, CSVs, the service log."""

    folder: Path
    notifier: Path
    env: dict[str, str]
    delivery_applied: dict[str, Any] = field(default_factory=dict)
    delivery_refused: list[str] = field(default_factory=list)
    rate_limits_lifted: list[str] = field(default_factory=list)
    # Another database than the SQLite file in the folder (bench/cluster.py: PostgreSQL): its
    # URL, how to watch it and how to insert subscribers directly.
    database_url: str = ""
    watcher_factory: Callable[[Project], Any] | None = None
    cpu_groups: dict[str, Callable[[], int]] = field(default_factory=dict)
    direct_insert: Callable[[Project, Sequence[Sequence[str]]], None] | None = None

    @property
    def config(self) -> Path:
        return self.folder / "config.toml"

    @property
    def db(self) -> Path:
        return self.folder / "notifier.db"

    def watcher(self) -> Any:
        """Read-only queries on the service's database (see :class:`Watcher`)."""
        return Watcher(self.db) if self.watcher_factory is None else self.watcher_factory(self)

    def insert_rows(self, rows: Sequence[Sequence[str]]) -> None:
        if self.direct_insert is None:
            _insert_sql(self.db, rows)
        else:
            self.direct_insert(self, rows)

    def cli(self, *args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run_cmd(
            [self.notifier, "--config", self.config, *args], timeout=timeout, env=self.env
        )

    def cli_ok(self, *args: str | Path, timeout: float = 300) -> str:
        result = self.cli(*args, timeout=timeout)
        if result.returncode != 0:
            shown = " ".join(str(a) for a in args)
            raise BenchError(
                f"`notifier {shown}` failed ({result.returncode}): "
                + (result.stderr.strip() or result.stdout.strip())[-2000:]
            )
        return result.stdout


def make_project(
    folder: Path,
    port: int,
    delivery: dict[str, Any],
    database_url: str = "",
    sections: dict[str, dict[str, Any]] | None = None,
) -> Project:
    notifier = Path(sys.executable).parent / "notifier"
    if not notifier.exists():
        raise BenchError(f"{notifier} not found: run bench/run, which installs the project")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    env["PYTHONUNBUFFERED"] = "1"
    project = Project(folder, notifier, env, database_url=database_url)

    config = tomllib.loads((REPO / "config.toml").read_text(encoding="utf-8"))
    config.pop("sources", None)  # no feeds or calendars: nothing but the announcement
    url = database_url or f"sqlite+aiosqlite:///{project.db}"
    config["database"] = {**config.get("database", {}), "url": url}
    smtp = {k: v for k, v in config.get("smtp", {}).items() if k not in ("user", "password")}
    config["smtp"] = {**smtp, "catcher": False, "host": HOST, "port": port, "tls": "none"}
    config["catcher"] = {**config.get("catcher", {}), "directory": str(folder / "mails")}
    # The checkout's templates and example texts: the package's own, whichever notifier runs
    # (an empty key means the packaged ones; an older notifier reads them from the checkout).
    paths = {**config.get("paths", {}), "templates": ""}
    if (REPO / "notifier" / "templates").is_dir():
        paths["data"] = str(folder)  # the secret key beside the database
    else:
        paths["templates"] = str(REPO / "templates")
    config["paths"] = paths
    if "legal" in config:
        config["legal"] = {k: str(REPO / v) if v else "" for k, v in config["legal"].items()}
    if "web" in config:  # the web application runs as it does by default, on a free port
        config["web"] = {**config["web"], "port": 0}
    for name, values in (sections or {}).items():  # e.g. [dkim] for the signed run
        config[name] = {**config.get(name, {}), **values}
    wanted = dict(delivery)
    for key, value in config.get("delivery", {}).items():
        if key.startswith("rate_") and value:
            # A provider's rate limit would measure the limit, not the engine.
            wanted[key] = 0
            project.rate_limits_lifted.append(f"{key} = {value}")
    # Find out which delivery keys this notifier accepts: `status` names the first unknown key.
    for _ in range(len(wanted) + 1):
        config["delivery"] = {**config.get("delivery", {}), **wanted}
        project.config.write_text(dump_toml(config), encoding="utf-8")
        result = project.cli("status", timeout=120)
        if result.returncode == 0:
            break
        message = (result.stderr or result.stdout).strip()
        refused = re.search(r"key 'delivery\.(\w+)': unknown key", message)
        if refused and refused.group(1) in wanted and refused.group(1) in OPTIONAL_DELIVERY_KEYS:
            key = refused.group(1)
            project.delivery_refused.append(key)
            del wanted[key]
            config["delivery"].pop(key, None)
            continue
        raise BenchError(f"the benchmark's config is refused: {message[-1500:]}")
    else:
        raise BenchError("could not find a config the installed notifier accepts")
    project.delivery_applied = wanted
    return project


@dataclass
class Seeding:
    lines: list[str] = field(default_factory=list)
    seconds: float = 0.0


def subscriber_rows(n: int, org_keys: Sequence[str], topic_keys: Sequence[str]) -> list[list[str]]:
    """N subscribers spread over every organisation, role and topic; all on ``immediate``."""
    rng = random.Random(20261126)  # noqa: S311 - test data, not security
    rows: list[list[str]] = []
    for i in range(n):
        name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        email = f"b{i:06d}.{name.split()[1].lower()}@{DOMAINS[i % len(DOMAINS)]}"
        email = email.replace("ä", "ae").replace("ö", "oe").replace("ü", "ue")
        topics = (
            ""
            if rng.random() < 0.4
            else ";".join(sorted(rng.sample(list(topic_keys), rng.randint(1, len(topic_keys)))))
        )
        rows.append([email, name, ROLES[i % len(ROLES)], org_keys[i % len(org_keys)], topics,
                     "immediate"])  # fmt: skip
    return rows


def _write_csv(path: Path, rows: Sequence[Sequence[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "name", "role", "organisation", "topics", "rhythm"])
        writer.writerows(rows)


def _insert_sql(db: Path, rows: Sequence[Sequence[str]]) -> None:
    """Insert subscribers and subscriptions like the import does (columns of db/models.py)."""
    con = sqlite3.connect(db, timeout=30)
    try:
        columns = con.execute("PRAGMA table_info(subscribers)").fetchall()
        known = {"id", "email", "name", "role", "organisation_id", "rhythm", "all_topics",
                 "status", "created_at", "updated_at"}  # fmt: skip
        missing = [c[1] for c in columns if c[3] and c[4] is None and c[1] not in known]
        if missing:
            raise BenchError(
                "direct insert: table subscribers has new required columns "
                f"{', '.join(missing)}; use --seed cli"
            )
        orgs = dict(con.execute("SELECT key, id FROM organisations").fetchall())
        now = datetime.now(ZoneInfo("UTC")).strftime("%Y-%m-%d %H:%M:%S.%f")
        with con:
            for email, name, role, org, topics, rhythm in rows:
                cursor = con.execute(
                    "INSERT INTO subscribers (email, name, role, organisation_id, rhythm,"
                    " all_topics, status, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, 'active', ?, ?)",
                    (email, name, role, orgs[org], rhythm, 0 if topics else 1, now, now),
                )
                if topics:
                    con.executemany(
                        "INSERT INTO subscriptions (subscriber_id, topic_key) VALUES (?, ?)",
                        [(cursor.lastrowid, t) for t in topics.split(";")],
                    )
    finally:
        con.close()


def seed(project: Project, n: int, mode: str, cli_budget: float) -> Seeding:
    """Organisations by the CLI; subscribers by the CLI, or directly into SQLite if too slow."""
    info = Seeding()
    start = time.perf_counter()
    organisations = REPO / "notifier" / "data" / "organisations.csv"
    project.cli_ok("organisations", "load", organisations, timeout=300)
    with organisations.open(encoding="utf-8", newline="") as handle:
        org_keys = [row["key"] for row in csv.DictReader(handle)]
    topics = [t["key"] for t in tomllib.loads(project.config.read_text())["topics"]]
    rows = subscriber_rows(n, org_keys, topics)

    def cli_import(part: Sequence[Sequence[str]], name: str) -> float:
        path = project.folder / name
        _write_csv(path, part)
        began = time.perf_counter()
        project.cli_ok("subscribers", "import", path, timeout=max(600.0, len(part) / 20))
        return time.perf_counter() - began

    if mode == "sql":
        project.insert_rows(rows)
        info.lines.append(f"{fmt_int(n)} subscribers inserted directly (--seed sql)")
    else:
        first = rows if mode == "cli" else rows[:CLI_SAMPLE]
        seconds = cli_import(first, "subscribers-1.csv")
        rate = len(first) / seconds
        info.lines.append(
            f"`notifier subscribers import`: {fmt_int(len(first))} rows in {seconds:.1f} s "
            f"({fmt_int(rate)} rows/s)"
        )
        rest = rows[len(first) :]
        if rest:
            estimate = len(rest) / rate
            if estimate <= cli_budget:
                seconds = cli_import(rest, "subscribers-2.csv")
                info.lines.append(
                    f"`notifier subscribers import`: {fmt_int(len(rest))} more rows in "
                    f"{seconds:.1f} s"
                )
            else:
                info.lines.append(
                    f"importing all {fmt_int(n)} through the CLI would take about "
                    f"{(n / rate) / 60:.1f} min; the other {fmt_int(len(rest))} rows were "
                    "inserted directly (same columns as notifier/db/models.py)"
                )
                began = time.perf_counter()
                project.insert_rows(rest)
                info.lines[-1] += f" in {time.perf_counter() - began:.1f} s"
    info.seconds = time.perf_counter() - start
    return info


# --------------------------------------------------------------------------------------------
# the service process


class Service:
    """``notifier run`` in its own session; its output goes to service.log."""

    READY = "Beenden mit Strg+C"

    def __init__(self, project: Project) -> None:
        self.project = project
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready = threading.Event()
        self.tail: deque[str] = deque(maxlen=40)
        self.log_path = project.folder / "service.log"
        self.stop_seconds: float | None = None
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


# --------------------------------------------------------------------------------------------
# the end-to-end run


def _unix(column: str) -> str:
    """SQL for a stored UTC datetime (any ISO form) as Unix seconds (millisecond precision)."""
    return f"(julianday({column}) - 2440587.5) * 86400.0"


# The outbox's rows, and those still to be sent (the service's partial index ix_outbox_open).
PROGRESS_SQL = (
    "SELECT (SELECT COUNT(*) FROM outbox),"
    " (SELECT COUNT(*) FROM outbox WHERE state IN ('queued', 'deferred', 'sending'))"
)


class Watcher:
    """Read-only queries on the service's SQLite file."""

    def __init__(self, db: Path) -> None:
        self.con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        self.con.isolation_level = None  # autocommit: never hold a read transaction open

    def states(self) -> dict[str, int]:
        return dict(self.con.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state"))

    def progress(self) -> tuple[int, int]:
        """(rows, open rows): polled often, so only what the indexes answer cheaply; counting
        by state reads every row, which would cost the machine more than it measures."""
        row = self.con.execute(PROGRESS_SQL).fetchone()
        return int(row[0]), int(row[1])

    def item(self, item_id: int) -> tuple[str, float, float | None, int | None]:
        row = self.con.execute(
            f"SELECT status, {_unix('send_at')}, {_unix('routed_at')}, recipient_count"  # noqa: S608
            " FROM items WHERE id = ?",
            (item_id,),
        ).fetchone()
        if row is None:
            raise BenchError(f"item {item_id} is not in the database")
        return row[0], row[1], row[2], row[3]

    def last_item_id(self) -> int | None:
        row = self.con.execute("SELECT MAX(id) FROM items").fetchone()
        return None if row is None else row[0]

    def sent_span(self) -> tuple[float | None, float | None, int]:
        row = self.con.execute(
            f"SELECT MIN({_unix('sent_at')}), MAX({_unix('sent_at')}), COUNT(sent_at)"  # noqa: S608
            " FROM outbox WHERE state = 'sent'"
        ).fetchone()
        return row[0], row[1], row[2]

    def failures(self, limit: int = 3) -> list[tuple[str, int | None, str | None]]:
        return self.con.execute(
            "SELECT state, last_code, last_reply FROM outbox"
            " WHERE state IN ('failed', 'deferred') AND last_reply IS NOT NULL LIMIT ?",
            (limit,),
        ).fetchall()

    def close(self) -> None:
        self.con.close()


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


def run_e2e(result: Result, project: Project, sink: Sink, args: argparse.Namespace) -> None:
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
        while True:
            now = time.time()
            total, open_rows = watcher.progress()
            done = total - open_rows  # sent, or failed for good
            if result.cpu is None and now >= send_at:
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
            if result.outbox_full_s is None and total >= n:
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
            if total >= n and open_rows == 0:
                states = watcher.states()
                if states.get("sent", 0) >= n:
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
        time.sleep(0.2)  # let the sink's last counter line arrive
        memory.sample()
        if result.cpu is not None:
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
        log("stopping `notifier run` with SIGTERM …")
        service.stop()
        result.stop_s = service.stop_seconds
        result.killed = service.killed


# --------------------------------------------------------------------------------------------
# the signed run (issue 14)


def openssl_sign_rate(seconds: float = OPENSSL_SECONDS) -> float:
    """RSA-2048 PKCS#1 v1.5 SHA-256 signatures per CPU second of one core, made by OpenSSL
    through ``cryptography`` in this process (as ``openssl speed rsa2048`` would, but counted
    in CPU time, so other work on the machine does not lower it)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pad, digest, data = padding.PKCS1v15(), hashes.SHA256(), b"x" * 1024
    key.sign(data, pad, digest)
    count = 0
    started = time.process_time()
    while (spent := time.process_time() - started) < seconds:
        for _ in range(20):
            key.sign(data, pad, digest)
        count += 20
    return count / spent


def snapshot(db: Path, to: Path) -> None:
    """A consistent copy of a SQLite file (WAL included), through SQLite's backup API."""
    with (
        contextlib.closing(sqlite3.connect(db)) as src,
        contextlib.closing(sqlite3.connect(to)) as dst,
    ):
        src.backup(dst)


def signed_project(
    folder: Path, port: int, delivery: dict[str, Any], seeded: Path, algorithm: str
) -> Project:
    """A second project beside the first, signing with a key made by ``notifier dkim keygen``,
    its database a copy of the seeded one (same subscribers, an empty outbox)."""
    folder.mkdir()
    dkim = {
        "enabled": True,
        "algorithm": algorithm,
        "private_key_file": str(folder / "dkim.key"),
        "ed25519_key_file": str(folder / "dkim-ed25519.key"),
    }
    project = make_project(folder, port, delivery, sections={"dkim": dkim})
    project.cli_ok("dkim", "keygen", timeout=120)
    if "ed25519" in algorithm:
        project.cli_ok("dkim", "keygen", "--ed25519", timeout=120)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{project.db}{suffix}").unlink(missing_ok=True)
    snapshot(seeded, project.db)
    return project


# --------------------------------------------------------------------------------------------
# report


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "BELOW")


def report(result: Result) -> list[bool | None]:
    """Print the table; returns the verdict of each floor (None: not measurable)."""
    n = result.n
    raw = result.raw
    memory = result.memory
    rows: list[tuple[str, str, str, str]] = []
    verdicts: list[bool | None] = []

    def floor(name: str, value: float | None, unit: str, text: str, ok: bool | None) -> None:
        digits = 1 if unit == "MB" else 2
        shown = (
            "—" if value is None else (fmt_int(value) if unit == "msg/s" else f"{value:.{digits}f}")
        )
        rows.append((name, f"{shown} {unit}".strip(), text, _verdict(ok)))
        verdicts.append(ok)

    e2e, ratio = result.e2e_rate, result.ratio
    floor("end to end (send_at → last sent)", e2e, "msg/s", f"≥ {fmt_int(FLOOR_E2E_RATE)} msg/s",
          None if e2e is None else e2e >= FLOOR_E2E_RATE)  # fmt: skip
    floor("end to end / raw aiosmtplib", ratio, "", f"≥ {FLOOR_RATIO:.2f}",
          None if ratio is None else ratio >= FLOOR_RATIO)  # fmt: skip
    routing = result.outbox_full_s
    floor(f"routing {fmt_int(n)} into the outbox", routing, "s", f"≤ {FLOOR_ROUTING_S:g} s",
          None if routing is None else routing <= FLOOR_ROUTING_S)  # fmt: skip
    first = result.first_sent_s
    floor("first message sent after send_at", first, "s", f"≤ {FLOOR_FIRST_S:g} s",
          None if first is None else first <= FLOOR_FIRST_S)  # fmt: skip
    rss = None if memory is None else memory.tree_peak_mb
    floor("peak RSS, notifier process tree", rss, "MB", f"≤ {FLOOR_RSS_MB:g} MB",
          None if rss is None else rss <= FLOOR_RSS_MB)  # fmt: skip
    rows.append(("raw aiosmtplib, same run", f"{fmt_int(raw.rate)} msg/s", "(reference)", ""))

    width = max(len(r[0]) for r in rows)
    print()
    print(f"notifier delivery benchmark: N = {fmt_int(n)} subscribers, one announcement to all")
    print(f"  sink:      {result.sink_label} on {HOST}")
    print(f"  machine:   {os.cpu_count()} cores; commit {git_revision()}")
    applied = ", ".join(f"{k} = {v}" for k, v in result.delivery_applied.items())
    print(f"  [delivery] {applied}")
    if result.delivery_refused:
        print(f"             not accepted by this notifier: {', '.join(result.delivery_refused)}")
    for line in result.seeding.lines:
        print(f"  seeding:   {line}")
    print(
        f"  raw:       aiosmtplib, {raw.connections} reused connections, prebuilt "
        f"{fmt_int(raw.size)}-byte message, {fmt_int(raw.messages)} messages"
        + (f" (fixed {fmt_int(RAW_MAX)}: N is larger)" if n > RAW_MAX else " (= N)")
        + " a round"
    )
    print(
        f"             best of {len(raw.seconds)} round(s): "
        + " / ".join(f"{fmt_int(r)}" for r in raw.rates)
        + f" msg/s; the sink counted {fmt_int(raw.sink_received)} of "
        + fmt_int(raw.messages * len(raw.seconds))
    )
    print()
    print(f"  {'figure':<{width}}  {'value':>12}  {'floor':<15} result")
    print(f"  {'-' * width}  {'-' * 12}  {'-' * 15} ------")
    for name, value, text, verdict in rows:
        print(f"  {name:<{width}}  {value:>12}  {text:<15} {verdict}")
    print()
    print("  details")

    def detail(label: str, value: str) -> None:
        print(f"    {label:<44} {value}")

    def secs(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f} s"

    steady = result.steady_rate
    detail("sending rate (first sent → last sent)", "—" if steady is None else
           f"{fmt_int(steady)} msg/s")  # fmt: skip
    detail("last message sent after send_at", secs(result.last_sent_s))
    detail("items.routed_at − send_at (service's record)", secs(result.routed_at_s))
    detail("recipients routed (items.recipient_count)",
           "—" if result.recipient_count is None else fmt_int(result.recipient_count))  # fmt: skip
    detail("sink: first message received after send_at", secs(result.sink_first_s))
    detail("sink: last message received after send_at", secs(result.sink_last_s))
    sink_rate = (
        None
        if result.sink_last_s is None or result.sink_last_s <= 0
        else result.sink_received / result.sink_last_s
    )
    detail("sink: end to end (send_at → last received)",
           "—" if sink_rate is None else f"{fmt_int(sink_rate)} msg/s")  # fmt: skip
    detail("sink: messages received in the e2e phase",
           f"{fmt_int(result.sink_received)} of {fmt_int(n)}")  # fmt: skip
    states = ", ".join(f"{k} {fmt_int(v)}" for k, v in sorted(result.states.items())) or "empty"
    detail("outbox at the end", states)
    detail("SMTP connections open at the sink (peak)", str(result.peak_connections))
    if memory is not None:
        detail("peak RSS: main process (VmHWM)", f"{memory.root_peak_mb:.1f} MB")
        detail("peak RSS: sum of VmRSS at one sample", f"{memory.max_rss_sum_kb / 1024:.1f} MB")
        detail("peak PSS: sum at one sample", f"{memory.max_pss_sum_kb / 1024:.1f} MB")
        detail("processes seen in the tree", str(len(memory.hwm_kb)))
    if result.cpu is not None:
        detail("CPU, delivery phase", result.cpu.describe())
    detail("CPU, raw phase", raw.cpu.describe())
    detail("service start until ready", secs(result.startup_s))
    detail("announcement stored before send_at by", secs(result.lead_s))
    detail("seeding took", secs(result.seeding.seconds))
    detail(
        "stop after SIGTERM",
        "did not exit within 20 s (killed)" if result.stop_s is None else secs(result.stop_s),
    )
    if result.killed:
        detail("processes left after the stop (killed)", " ".join(map(str, result.killed)))
    for state, code, reply in result.failures:
        detail(f"sample {state} reply", f"{code} {reply}")
    busy = [
        f"{name} phase {window.other_cores:.2f}"
        for name, window in (("raw", raw.cpu), ("delivery", result.cpu))
        if window is not None and window.other_cores > OTHER_CPU_LIMIT
    ]
    if busy:
        result.notes.append(
            "DISTURBED: other processes used CPU during the run (cores: "
            + ", ".join(busy)
            + "); the figures are lower than on an idle machine"
        )
    if not result.complete:
        result.notes.append("the run did not complete: throughput figures are not given")
    if n != FLOOR_N or "smtp-sink" not in result.sink_label:
        result.notes.append(
            f"the floors are defined at N = {fmt_int(FLOOR_N)} with the C sink: this run is "
            "indicative"
        )
    for note in result.notes:
        print(f"  NOTE: {note}")
    return verdicts


def report_signed(result: Result) -> list[bool | None]:
    """The DKIM table: the signed run beside the unsigned one of the same run."""
    signed = result.signed
    if signed is None:
        return []
    n = result.n
    verdicts: list[bool | None] = []
    rows: list[tuple[str, str, str, str]] = []

    def floor(name: str, shown: str, text: str, ok: bool | None) -> None:
        rows.append((name, shown, text, _verdict(ok) if text else ""))
        if text:
            verdicts.append(ok)

    unsigned_rate, signed_rate = result.e2e_rate, signed.e2e_rate
    floor("end to end, unsigned (above)", "—" if unsigned_rate is None else
          f"{fmt_int(unsigned_rate)} msg/s", "", None)  # fmt: skip
    floor("end to end, signed", "—" if signed_rate is None else
          f"{fmt_int(signed_rate)} msg/s", "", None)  # fmt: skip
    ratio = None if unsigned_rate is None or signed_rate is None else signed_rate / unsigned_rate
    floor("signed / unsigned end to end", "—" if ratio is None else f"{ratio:.2f}",
          f"≥ {FLOOR_SIGNED_RATIO:.2f}", None if ratio is None else
          ratio >= FLOOR_SIGNED_RATIO)  # fmt: skip
    rate = result.openssl_rate
    one = None if not rate else 1000 / rate  # ms of CPU per signature
    floor("OpenSSL RSA-2048 signatures, one core", "—" if rate is None else
          f"{fmt_int(rate)}/s", "(reference)", None)  # fmt: skip
    rows[-1] = (*rows[-1][:3], f"{one:.3f} ms each" if one else "")
    extra = None
    if result.cpu is not None and signed.cpu is not None and result.complete and signed.complete:
        extra = (signed.cpu.tree - result.cpu.tree) / CLK_TCK / n * 1000  # ms per message
    limit = None if one is None else FLOOR_SIGN_CPU * one
    floor("extra CPU per signed message", "—" if extra is None else f"{extra:.3f} ms",
          "—" if limit is None else f"≤ {limit:.3f} ms", None if extra is None or limit is None
          else extra <= limit)  # fmt: skip
    rss = None if signed.memory is None else signed.memory.tree_peak_mb
    floor("peak RSS, notifier process tree, signed", "—" if rss is None else f"{rss:.1f} MB",
          f"≤ {FLOOR_RSS_MB:g} MB", None if rss is None else rss <= FLOOR_RSS_MB)  # fmt: skip

    width = max(len(r[0]) for r in rows)
    print()
    print(
        f"DKIM (issue 14): the same announcement signed ({result.dkim_algorithm}, 2048-bit RSA "
        "key), on a copy of the seeded database"
    )
    print(f"  {'figure':<{width}}  {'value':>12}  {'floor':<15} result")
    print(f"  {'-' * width}  {'-' * 12}  {'-' * 15} ------")
    for name, value, text, verdict in rows:
        print(f"  {name:<{width}}  {value:>12}  {text:<15} {verdict}")
    print()
    print("  details")
    cpu_ms = [None if r.cpu is None else r.cpu.tree / CLK_TCK / n * 1000 for r in (result, signed)]
    print(
        "    notifier CPU per message (delivery phase)   "
        + " / ".join("—" if c is None else f"{c:.3f} ms" for c in cpu_ms)
        + " (unsigned / signed)"
    )
    if signed.cpu is not None:
        print(f"    CPU, signed delivery phase                   {signed.cpu.describe()}")
        if signed.cpu.other_cores > OTHER_CPU_LIMIT:
            signed.notes.append(
                f"DISTURBED: other processes used {signed.cpu.other_cores:.2f} cores during "
                "the signed run"
            )
    steady = signed.steady_rate
    print(
        "    signed: sending rate (first → last sent)     "
        + ("—" if steady is None else f"{fmt_int(steady)} msg/s")
    )
    states = ", ".join(f"{k} {fmt_int(v)}" for k, v in sorted(signed.states.items()))
    print("    signed: outbox at the end                    " + (states or "empty"))
    for note in signed.notes:
        print(f"  NOTE: {note}")
    return verdicts


_REVISION: str | None = None


def git_revision() -> str:
    global _REVISION
    if _REVISION is None:
        try:
            head = run_cmd(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], timeout=10)
            dirty = run_cmd(["git", "-C", REPO, "status", "--porcelain", "notifier"], timeout=10)
            _REVISION = head.stdout.strip() or "unknown"
            if dirty.stdout.strip():
                _REVISION += " + uncommitted changes in notifier/"
        except (OSError, subprocess.SubprocessError):
            _REVISION = "unknown"
    return _REVISION


# --------------------------------------------------------------------------------------------
# main


def bench_once(n: int, args: argparse.Namespace) -> Result:
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        sink = Sink(args.sink, notes)
        stack.callback(sink.stop)
        sink.start()
        log(f"sink: {sink.label} on {HOST}:{sink.port}")
        folder = Path(tempfile.mkdtemp(prefix="notifier-bench-"))
        if args.keep:
            log(f"keeping the project folder {folder}")
        else:
            stack.callback(shutil.rmtree, folder, True)
        delivery = {
            "connections": args.connections,
            "processes": args.processes,
            "batch_size": args.batch_size,
        }
        log(f"project folder {folder}: config, migrations, accepted [delivery] keys …")
        project = make_project(folder, sink.port, delivery)
        if project.rate_limits_lifted:
            notes.append(
                "config.toml's rate limits were set to 0 (no limit) for the benchmark: "
                + ", ".join(project.rate_limits_lifted)
            )
        log(f"seeding {fmt_int(n)} subscribers …")
        seeding = seed(project, n, args.seed, args.cli_budget)
        for line in seeding.lines:
            log(f"  {line}")
        seeded = folder / "seeded.db"
        if args.dkim != "off":
            snapshot(project.db, seeded)  # the signed run starts from the same subscribers
        raw = measure_raw(sink, min(n, RAW_MAX), args.raw_connections, args.raw_rounds)
        log(f"raw: {fmt_int(raw.rate)} msg/s")
        result = Result(
            n=n,
            sink_label=sink.label,
            raw=raw,
            seeding=seeding,
            delivery_applied=project.delivery_applied,
            delivery_refused=project.delivery_refused,
            notes=notes,
        )
        args_timeout = n / 50 + 120 if args.timeout is None else args.timeout
        run_args = argparse.Namespace(**{**vars(args), "timeout": args_timeout})
        run_e2e(result, project, sink, run_args)
        if args.dkim != "off" and result.complete:
            result.dkim_algorithm = {"rsa": "rsa-sha256", "both": "rsa-sha256+ed25519-sha256"}[
                args.dkim
            ]
            result.openssl_rate = openssl_sign_rate()
            log(f"OpenSSL RSA-2048: {fmt_int(result.openssl_rate)} signatures/s on one core")
            log("the signed run: a second project with a DKIM key, the seeded subscribers …")
            try:
                signed_folder = signed_project(
                    folder / "signed", sink.port, delivery, seeded, result.dkim_algorithm
                )
            except BenchError as exc:
                notes.append(f"the signed run was skipped: {exc}")
            else:
                result.signed = Result(
                    n=n,
                    sink_label=sink.label,
                    raw=raw,
                    seeding=seeding,
                    delivery_applied=signed_folder.delivery_applied,
                    delivery_refused=signed_folder.delivery_refused,
                )
                run_e2e(result.signed, signed_folder, sink, run_args)
        return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run",
        description="End-to-end delivery benchmark of notifier against an SMTP sink on loopback "
        "(the floors of issue 4).",
    )
    parser.add_argument("--n", type=int, default=FLOOR_N, help="subscribers (default 100000)")
    parser.add_argument(
        "--flat",
        action="store_true",
        help="run N = 10,000 and N = 100,000 and compare peak RSS (ignores --n)",
    )
    parser.add_argument(
        "--sink", choices=("c", "python"), default="c", help="postfix smtp-sink or aiosmtpd"
    )
    parser.add_argument("--connections", type=int, default=16, help="[delivery] connections")
    parser.add_argument("--processes", type=int, default=2, help="[delivery] processes")
    parser.add_argument("--batch-size", type=int, default=500, help="[delivery] batch_size")
    parser.add_argument("--raw-connections", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument(
        "--raw-rounds",
        type=int,
        default=RAW_ROUNDS,
        help=f"rounds of the raw figure, the best counts (default {RAW_ROUNDS})",
    )
    parser.add_argument(
        "--seed",
        choices=("auto", "cli", "sql"),
        default="auto",
        help="subscribers through `notifier subscribers import` (cli), directly into SQLite "
        f"(sql), or auto: the first {fmt_int(CLI_SAMPLE)} through the CLI, timed, the rest "
        "too if that takes at most --cli-budget seconds, else directly",
    )
    parser.add_argument("--cli-budget", type=float, default=60.0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--lead", type=float, default=4.0, help="seconds from announcing to send_at (default 4)"
    )
    parser.add_argument(
        "--poll", type=float, default=0.2, help="seconds between database polls (default 0.2)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="limit for the delivery phase in seconds (default N/50 + 120)",
    )
    parser.add_argument(
        "--stall",
        type=float,
        default=60.0,
        help="give up when nothing was sent for this many seconds (default 60)",
    )
    parser.add_argument(
        "--dkim",
        choices=("rsa", "both", "off"),
        default="rsa",
        help="after the unsigned run, the same announcement DKIM-signed: rsa-sha256 (rsa, the "
        "default), with a second ed25519-sha256 signature (both), or no signed run (off; "
        "--flat implies it)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary project folder")
    parser.add_argument(
        "--check", action="store_true", help="exit with status 3 if a figure is below its floor"
    )
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    if args.raw_rounds < 1:
        parser.error("--raw-rounds must be at least 1")
    if args.flat:
        args.dkim = "off"  # the memory comparison needs the unsigned runs only
    return args


_interrupted = threading.Event()


def _terminate(signum: int, _frame: FrameType | None) -> None:
    """The first Ctrl-C / SIGTERM unwinds (stopping what was started); later ones wait for it."""
    if _interrupted.is_set():
        log("already stopping: the service, the sink and temporary files are being cleaned up")
        return
    _interrupted.set()
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, _terminate)  # also when started with SIGINT ignored
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    sizes: Iterator[int] = iter(FLAT_SIZES if args.flat else (args.n,))
    results: list[Result] = []
    all_verdicts: list[bool | None] = []
    try:
        for n in sizes:
            result = bench_once(n, args)
            all_verdicts += report(result)
            all_verdicts += report_signed(result)
            results.append(result)
            if not result.complete:
                break
    except KeyboardInterrupt:
        log("interrupted: everything started was stopped")
        return 130
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    if args.flat and len(results) == len(FLAT_SIZES):
        small, large = (r.memory.tree_peak_mb if r.memory else math.nan for r in results)
        flat = large <= small * FLAT_TOLERANCE
        all_verdicts.append(flat)
        print()
        print(
            f"flat memory: peak RSS {small:.1f} MB at N = {fmt_int(FLAT_SIZES[0])}, "
            f"{large:.1f} MB at N = {fmt_int(FLAT_SIZES[1])} (ratio {large / small:.2f}, "
            f"flat means ≤ {FLAT_TOLERANCE:.2f})  {_verdict(flat)}"
        )
    if not results or not results[-1].complete:
        return 1
    return 3 if args.check and not all(all_verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
