"""The raw figure: what one aiosmtplib client process pushes through the same sink."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY

from common import ANNOUNCEMENT_SUBJECT, HOST, SENDER, fmt_int, log
from procfs import CpuWindow
from sink import Sink

RAW_MAX = 20_000  # the raw aiosmtplib figure sends min(N, RAW_MAX) messages
RAW_ROUNDS = 2  # the raw figure is the best of this many rounds
RAW_SIZE = 5_600  # bytes of the prebuilt raw message (issue 4 measured ~5.6 KB)


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
