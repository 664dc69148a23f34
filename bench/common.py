"""What every part of the delivery benchmark shares: where it runs, what it sends, its error
and small helpers (logging, commands, ports)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # every byte of this benchmark stays on loopback

SENDER = "bench@bench.example"
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


_interrupted = threading.Event()


def terminate(signum: int, _frame: FrameType | None) -> None:
    """The first Ctrl-C / SIGTERM unwinds (stopping what was started); later ones wait for it."""
    if _interrupted.is_set():
        log("already stopping: the service, the sink and temporary files are being cleaned up")
        return
    _interrupted.set()
    raise KeyboardInterrupt(f"signal {signum}")
