"""The SMTP sink on loopback: postfix's C ``smtp-sink`` (installed from Debian's packages if
needed) or the aiosmtpd fallback (pysink.py), with its running message counter."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import HOST, BenchError, free_port, log, run_cmd, wait_for_port
from procfs import kill_group

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
