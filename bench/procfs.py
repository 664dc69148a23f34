"""Processes from /proc: a child's session, a process tree's memory and CPU, the machine's CPU
(no psutil needed)."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
