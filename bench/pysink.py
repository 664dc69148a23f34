"""Fallback SMTP sink (aiosmtpd) for the delivery benchmark, run as its own process.

Used only when postfix's C ``smtp-sink`` cannot be had, or with ``bench/run --sink python``.
It accepts every message on 127.0.0.1, throws it away and writes a running counter to stdout in
the same shape as ``smtp-sink -c`` ("sess=S quit=Q mesg=M\\r"), so the benchmark reads both
alike. Being Python, it competes with the service for the two cores and caps the measurable rate
far below the C sink: figures taken with it are not comparable with the floors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


class Counter:
    """Counts messages; aiosmtpd calls :meth:`handle_DATA` once per accepted message."""

    def __init__(self) -> None:
        self.messages = 0
        self.sessions = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages += 1
        return "250 2.0.0 Ok"

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        # Like smtp-sink, offer PIPELINING (aiosmtpd handles it but does not advertise it).
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]


async def serve(host: str, port: int) -> None:
    counter = Counter()
    loop = asyncio.get_running_loop()

    def factory() -> SMTP:
        counter.sessions += 1
        return SMTP(counter, hostname="pysink", ident="pysink", data_size_limit=None)

    server = await loop.create_server(factory, host=host, port=port, backlog=1000)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    shown = -1
    out: Any = sys.stdout
    out.write(f"listening {host}:{port}\n")
    out.flush()
    while not stop.is_set():
        # A line every 10 ms at most (only when something changed), not one per message.
        if counter.messages != shown:
            shown = counter.messages
            out.write(f"sess={counter.sessions} quit=0 mesg={shown}\r")
            out.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.01)
    server.close()
    await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
