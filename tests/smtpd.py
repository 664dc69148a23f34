"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, port 0, in a thread of its own.

It records every message it accepts and can be told to refuse chosen recipients (4xx or 5xx) or
to answer slowly, so tests see exactly what a mail server would see.

It can also be hostile (every option is off by default): refuse chosen recipients only for their
first few attempts (``transient``; a 421 reply also closes the connection, as real servers do),
stall before storing a message (``stall``), and drop connections at random (``drop_rate``, drawn
from a seeded ``random.Random``) at RCPT or in DATA before the message is stored. A stalled or
dropped message is never stored, so none of this can create a duplicate. ``refuse_sender`` answers
MAIL FROM with the given reply. It offers PIPELINING unless ``pipelining`` is off.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from notifier.catcher_server import advertise_pipelining


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    at: float

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]


@dataclass
class RecordingSMTP:
    host: str = "127.0.0.1"
    port: int = 0
    received: list[Received] = field(default_factory=list)
    # recipient address -> SMTP reply to RCPT, e.g. "550 5.1.1 Unbekannt" or "451 4.7.1 Später"
    refuse: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before accepting each message
    # recipient address -> (reply, K): RCPT is answered with reply for the first K attempts
    transient: dict[str, tuple[str, int]] = field(default_factory=dict)
    # recipient address -> K: its first K messages stall in DATA (before being stored) for
    # stall_seconds, i.e. longer than the client waits; the message is never stored
    stall: dict[str, int] = field(default_factory=dict)
    stall_seconds: float = 5.0
    # chance that a connection is dropped at RCPT, and again in DATA before storing
    drop_rate: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    # e.g. "553 5.7.1 Absender nicht erlaubt": the reply to every MAIL FROM
    refuse_sender: str = ""
    # offer PIPELINING in the EHLO reply, as most real servers do (aiosmtpd reads pipelined
    # commands correctly but does not advertise them); False tests the one-by-one path
    pipelining: bool = True
    # the SIZE it announces and enforces (aiosmtpd answers 552 to a larger MAIL FROM … SIZE=)
    data_size_limit: int = 33_554_432
    # user -> password: offer AUTH (PLAIN, LOGIN; without TLS, on loopback) and check it
    logins: dict[str, str] = field(default_factory=dict)
    # what happened: RCPT commands and stalls per recipient address, drops per stage
    attempts: Counter[str] = field(default_factory=Counter)
    stalls: Counter[str] = field(default_factory=Counter)
    drops: Counter[str] = field(default_factory=Counter)  # "RCPT" / "DATA" -> connections dropped
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    # aiosmtpd handler hooks
    async def handle_EHLO(
        self,
        server: Any,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        if self.pipelining:
            return advertise_pipelining(session, hostname, responses)
        session.host_name = hostname
        return responses

    async def handle_MAIL(
        self,
        server: Any,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.refuse_sender:
            return self.refuse_sender
        # What aiosmtpd does itself when there is no hook.
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: Any,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        with self._lock:
            self.attempts[address] += 1
            attempt = self.attempts[address]
        reply, times = self.transient.get(address, ("", 0))
        if attempt <= times:
            if reply.startswith("421"):
                # "Service not available, closing transmission channel": close after replying.
                asyncio.get_running_loop().call_soon(server.transport.close)
            return reply
        reply = self.refuse.get(address, "")
        if reply:
            return reply
        if self.drop_rate and self.rng.random() < self.drop_rate:
            return await self._drop(server, "RCPT")
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        for address in envelope.rcpt_tos:
            with self._lock:
                stalled = self.stalls[address] < self.stall.get(address, 0)
                if stalled:
                    self.stalls[address] += 1
            if stalled:
                # The client gives up first and closes the connection, which cancels this
                # handler; should it not, the message is refused rather than stored.
                await asyncio.sleep(self.stall_seconds)
                return "451 4.4.2 Zu langsam"
        if self.drop_rate and self.rng.random() < self.drop_rate:
            return await self._drop(server, "DATA")
        with self._lock:
            self.received.append(
                Received(
                    envelope.mail_from or "",
                    list(envelope.rcpt_tos),
                    envelope.original_content or b"",
                    time.time(),
                )
            )
        return "250 2.0.0 Ok: queued"

    def _authenticate(
        self, server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and self.logins.get(data.login.decode()) == data.password.decode()
        )
        return AuthResult(success=ok, handled=False)

    async def _drop(self, server: Any, stage: str) -> str:
        """Drop the connection without an answer; aiosmtpd then cancels this handler."""
        with self._lock:
            self.drops[stage] += 1
        server.transport.abort()
        await asyncio.sleep(3600)
        return "421 4.4.2 Verbindung verloren"  # not reached: the handler is cancelled

    def start(self) -> RecordingSMTP:
        ready = threading.Event()
        protocols: list[SMTPServer] = []

        def factory() -> SMTPServer:
            protocol = SMTPServer(
                self,
                hostname="test-smtp",
                loop=self._loop,
                data_size_limit=self.data_size_limit,
                authenticator=self._authenticate if self.logins else None,
                auth_require_tls=False,
            )
            protocols.append(protocol)
            return protocol

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            # port 0 (the default): any free port; a given port: e.g. to come back after an outage
            server = loop.run_until_complete(
                loop.create_server(factory, host=self.host, port=self.port)
            )
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            # Close the open sessions too: server.close() only stops accepting new ones.
            server.close()
            for protocol in protocols:
                if protocol.transport is not None:
                    protocol.transport.close()
            loop.run_until_complete(server.wait_closed())
            loop.run_until_complete(asyncio.sleep(0.05))
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=serve, name="recording-smtp", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def turn_hostile(
        self,
        *,
        bouncing: set[str],
        closing: set[str],
        greylisted: set[str],
        stalling: set[str],
        drop_rate: float,
        seed: int,
    ) -> None:
        """Behave like a difficult server: ``bouncing`` addresses are refused for good (550),
        ``closing`` ones get 421 for their first 2 attempts, ``greylisted`` ones 451 for their
        first 3, the first DATA of ``stalling`` ones stalls 3 s, and connections drop at random
        (``drop_rate``, reproducible by ``seed``)."""
        self.refuse.update({a: "550 5.1.1 Postfach unbekannt" for a in bouncing})
        self.transient.update({a: ("421 4.3.2 Dienst wird beendet", 2) for a in closing})
        self.transient.update({a: ("451 4.7.1 Greylisting, bitte spaeter", 3) for a in greylisted})
        self.stall.update(dict.fromkeys(stalling, 1))
        self.stall_seconds = 3
        self.drop_rate = drop_rate
        self.rng = random.Random(seed)

    def messages(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def recipients(self) -> list[str]:
        return sorted(r for m in self.messages() for r in m.rcpt_tos)

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        """Block until at least ``count`` messages arrived (or fail after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.messages()
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"expected {count} messages, got {len(self.messages())}")
