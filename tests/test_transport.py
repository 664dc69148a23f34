"""The SMTP transport against a scripted server on loopback that checks how the client talks.

Where the server offers PIPELINING, MAIL, RCPT and DATA must arrive in one batch: the server
below answers nothing until it has all three, so a client that waited for each reply would time
out. Its replies come split in every way a network may split them (byte by byte, or together),
and its refusals, 421 closes and silences check that every reply is paired with its command.
Where the server does not offer PIPELINING, no command may arrive before the previous reply.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

from notifier.config import SmtpSettings
from notifier.delivery import SmtpTransport
from notifier.delivery.transport import _data_block
from notifier.errors import PermanentDeliveryError, TemporaryDeliveryError

SENDER = "projektbuero@eifelkreis.example"
MESSAGE = (
    b"From: Projektbuero <projektbuero@eifelkreis.example>\r\n"
    b"To: <anna@vg.example>\r\n"
    b"Subject: Test\r\n"
    b"\r\n"
    b"Erste Zeile\r\n"
    b".Zeile mit Punkt am Anfang\r\n"
    b"..zwei Punkte\r\n"
    b".\r\n"
    b"Letzte Zeile\r\n"
)


@dataclass
class ScriptedSMTP:
    """A small SMTP server on 127.0.0.1 with scripted replies.

    ``rcpt`` maps a recipient to its RCPT reply (default 250); ``data`` is the reply to DATA
    after a refused recipient (default 554, as RFC 2920 asks; "354" opens it anyway);
    ``close_after_mail`` answers MAIL with 421 and closes; ``silent`` never answers the end of
    a message. ``split`` sends every reply byte by byte.
    """

    pipelining: bool = True
    split: bool = False
    # if set: after the first reply of a group, the others wait until this event is set
    hold: asyncio.Event | None = None
    rcpt: dict[str, str] = field(default_factory=dict)
    data_after_refusal: str = "554 5.5.1 Keine gültigen Empfänger"
    close_after_mail: bool = False
    silent: bool = False
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    connections: int = 0
    # the commands of each read from the socket, to see what arrived together
    batches: list[list[bytes]] = field(default_factory=list)
    # commands that arrived while a reply to an earlier one was still owed
    early: list[bytes] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _sessions: list[tuple[asyncio.Task[None], asyncio.StreamWriter]] = field(default_factory=list)

    async def __aenter__(self) -> ScriptedSMTP:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task, writer in self._sessions:
            writer.close()
            task.cancel()
        await asyncio.gather(*(task for task, _ in self._sessions), return_exceptions=True)
        await self._server.wait_closed()

    async def _reply(self, writer: asyncio.StreamWriter, line: str) -> None:
        data = (line + "\r\n").encode()
        if self.split:
            for i in range(len(data)):
                writer.write(data[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0)
        else:
            writer.write(data)
            await writer.drain()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._sessions.append((task, writer))
        buffer = b""
        owed: list[str] = []  # replies decided but not yet sent (pipelined commands)
        recipients: list[str] = []
        refused = False
        try:
            await self._reply(writer, "220 scripted ESMTP")
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                buffer += chunk
                lines = buffer.split(b"\r\n")
                buffer = lines.pop()
                if lines:
                    self.batches.append(lines)
                for line in lines:
                    if not self.pipelining and line is not lines[0]:
                        self.early.append(line)
                    verb = line[:4].upper()
                    if verb == b"EHLO":
                        extensions = ["250-scripted", "250-SIZE 10000000"]
                        if self.pipelining:
                            extensions.append("250-PIPELINING")
                        owed.append("\r\n".join([*extensions, "250 8BITMIME"]))
                    elif verb == b"MAIL":
                        if self.close_after_mail:
                            await self._reply(writer, "421 4.3.2 Dienst wird beendet")
                            writer.close()
                            return
                        recipients, refused = [], False
                        owed.append("250 2.1.0 Ok")
                    elif verb == b"RCPT":
                        address = line.split(b"<", 1)[1].split(b">", 1)[0].decode()
                        reply = self.rcpt.get(address, "250 2.1.5 Ok")
                        if reply.startswith("250"):
                            recipients.append(address)
                        else:
                            refused = True
                        owed.append(reply)
                    elif (
                        verb == b"DATA"
                        and refused
                        and not self.data_after_refusal.startswith("354")
                    ):
                        owed.append(self.data_after_refusal)
                    elif verb == b"DATA":
                        owed.append("354 Ende mit <CRLF>.<CRLF>")
                        for number, reply in enumerate(owed):
                            if number == 1 and self.hold is not None:
                                await self.hold.wait()  # the rest of the replies wait
                            await self._reply(writer, reply)
                        owed = []
                        body = await self._read_body(reader, buffer)
                        buffer = b""
                        if self.silent:
                            await asyncio.sleep(3600)
                        if not recipients:
                            await self._reply(writer, "554 5.5.1 Keine gültigen Empfänger")
                            continue
                        self.messages.append((recipients[0], body))
                        await self._reply(writer, f"250 2.0.0 Ok: queued for {recipients[0]}")
                    elif verb == b"RSET":
                        recipients, refused = [], False
                        owed.append("250 2.0.0 Ok")
                    elif verb == b"QUIT":
                        await self._reply(writer, "221 2.0.0 Bye")
                        writer.close()
                        return
                    else:
                        owed.append("500 5.5.2 Unbekannt")
                    if not self.pipelining or verb not in (b"MAIL", b"RCPT"):
                        # Lock-step, or the end of a pipelined group: answer what is owed.
                        for reply in owed:
                            await self._reply(writer, reply)
                        owed = []
        except (ConnectionError, asyncio.IncompleteReadError):
            return

    @staticmethod
    async def _read_body(reader: asyncio.StreamReader, already: bytes) -> bytes:
        data = already
        while data != b".\r\n" and not data.endswith(b"\r\n.\r\n"):
            data += await reader.read(65536)
        lines = data[: -len(b".\r\n")].split(b"\r\n")
        return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def _transport(port: int, timeout: float = 5.0) -> SmtpTransport:
    return SmtpTransport(SmtpSettings(host="127.0.0.1", port=port, tls="none", timeout=timeout))


@pytest.fixture
async def pipelining() -> AsyncIterator[ScriptedSMTP]:
    async with ScriptedSMTP(pipelining=True) as server:
        yield server


@pytest.mark.parametrize("split", [False, True], ids=["replies-together", "replies-bytewise"])
async def test_pipelined_transaction_pairs_every_reply(split: bool) -> None:
    async with ScriptedSMTP(split=split) as server, _transport(server.port) as transport:
        replies = [await transport.send(MESSAGE, SENDER, f"person{i}@vg.example") for i in range(3)]
    # The server answers MAIL only once RCPT and DATA are there too: pipelined, or it hangs.
    assert replies == [f"2.0.0 Ok: queued for person{i}@vg.example" for i in range(3)]
    envelopes = [b for b in server.batches if b and b[0].startswith(b"MAIL")]
    assert len(envelopes) == 3
    assert all([c[:4] for c in batch] == [b"MAIL", b"RCPT", b"DATA"] for batch in envelopes)
    assert envelopes[0][0] == b"MAIL FROM:<%s> SIZE=%d" % (SENDER.encode(), len(MESSAGE))
    # Periods at the start of a line were doubled on the wire and arrive as they were.
    assert server.messages == [(f"person{i}@vg.example", MESSAGE) for i in range(3)]
    assert server.connections == 1


async def test_refused_recipient_fails_alone_and_the_session_goes_on(
    pipelining: ScriptedSMTP,
) -> None:
    pipelining.rcpt["weg@vg.example"] = "550 5.1.1 Postfach unbekannt"
    async with _transport(pipelining.port) as transport:
        with pytest.raises(PermanentDeliveryError) as refused:
            await transport.send(MESSAGE, SENDER, "weg@vg.example")
        assert refused.value.code == 550
        assert refused.value.bounced
        assert "Postfach unbekannt" in refused.value.reply
        assert await transport.send(MESSAGE, SENDER, "da@vg.example") == (
            "2.0.0 Ok: queued for da@vg.example"
        )
    assert [r for r, _ in pipelining.messages] == ["da@vg.example"]
    assert pipelining.connections == 1
    assert any(b"RSET" in batch for batch in pipelining.batches)


async def test_server_that_opens_data_despite_a_refusal_gets_an_empty_message(
    pipelining: ScriptedSMTP,
) -> None:
    pipelining.rcpt["grau@vg.example"] = "451 4.7.1 Greylisting, bitte später"
    pipelining.data_after_refusal = "354 trotzdem"
    async with _transport(pipelining.port) as transport:
        with pytest.raises(TemporaryDeliveryError) as deferred:
            await transport.send(MESSAGE, SENDER, "grau@vg.example")
        assert deferred.value.code == 451
        # The empty message was refused (no recipients), the next one pairs correctly.
        assert await transport.send(MESSAGE, SENDER, "da@vg.example") == (
            "2.0.0 Ok: queued for da@vg.example"
        )
    assert [r for r, _ in pipelining.messages] == ["da@vg.example"]


async def test_421_and_close_is_temporary_and_the_next_send_reconnects(
    pipelining: ScriptedSMTP,
) -> None:
    pipelining.close_after_mail = True
    async with _transport(pipelining.port) as transport:
        with pytest.raises(TemporaryDeliveryError) as closed:
            await transport.send(MESSAGE, SENDER, "anna@vg.example")
        assert closed.value.code == 421
        pipelining.close_after_mail = False
        await transport.send(MESSAGE, SENDER, "anna@vg.example")
    assert pipelining.connections == 2
    assert [r for r, _ in pipelining.messages] == ["anna@vg.example"]


async def test_silent_server_times_out_once(pipelining: ScriptedSMTP) -> None:
    pipelining.silent = True
    async with _transport(pipelining.port, timeout=0.5) as transport:
        started = time.monotonic()
        with pytest.raises(TemporaryDeliveryError) as timed_out:
            await transport.send(MESSAGE, SENDER, "anna@vg.example")
        waited = time.monotonic() - started
    assert "Timed out" in timed_out.value.reply
    # One timeout, and no QUIT that waits for the stalled server a second time.
    assert 0.5 <= waited < 0.9


async def test_without_pipelining_every_command_waits_for_its_reply() -> None:
    async with ScriptedSMTP(pipelining=False) as server, _transport(server.port) as transport:
        server.rcpt["weg@vg.example"] = "550 5.1.1 Postfach unbekannt"
        with pytest.raises(PermanentDeliveryError):
            await transport.send(MESSAGE, SENDER, "weg@vg.example")
        for i in range(2):
            await transport.send(MESSAGE, SENDER, f"person{i}@vg.example")
    assert server.early == []
    assert server.messages == [(f"person{i}@vg.example", MESSAGE) for i in range(2)]


async def test_cancelled_send_does_not_leave_replies_for_the_next(
    pipelining: ScriptedSMTP,
) -> None:
    # The cancellation lands between the reply to MAIL and those to RCPT and DATA.
    pipelining.hold = asyncio.Event()
    async with _transport(pipelining.port) as transport:
        task = asyncio.create_task(transport.send(MESSAGE, SENDER, "erste@vg.example"))
        await _until(
            lambda: any(line.startswith(b"DATA") for b in pipelining.batches for line in b)
        )
        await asyncio.sleep(0.05)  # the reply to MAIL has arrived; the others are held
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        pipelining.hold.set()  # the held replies now go to the old session, if it still exists
        pipelining.hold = None
        reply = await transport.send(MESSAGE, SENDER, "zweite@vg.example")
    assert reply == "2.0.0 Ok: queued for zweite@vg.example"
    assert pipelining.connections == 2


async def test_warm_up_connects_once_and_the_first_send_uses_that_session(
    pipelining: ScriptedSMTP,
) -> None:
    async with _transport(pipelining.port) as transport:
        transport.warm_up()
        transport.warm_up()  # a second call while connecting starts nothing more
        await _until(
            lambda: any(line.startswith(b"EHLO") for b in pipelining.batches for line in b)
        )
        assert pipelining.messages == []
        sending = asyncio.create_task(transport.send(MESSAGE, SENDER, "anna@vg.example"))
        transport.warm_up()
        await sending
    assert pipelining.connections == 1
    assert [r for r, _ in pipelining.messages] == ["anna@vg.example"]


async def test_close_during_warm_up_leaves_no_session(pipelining: ScriptedSMTP) -> None:
    transport = _transport(pipelining.port)
    transport.warm_up()
    await transport.close()
    # A new send after the close connects afresh.
    async with transport:
        await transport.send(MESSAGE, SENDER, "anna@vg.example")
    assert [r for r, _ in pipelining.messages] == ["anna@vg.example"]


async def test_warm_up_against_a_dead_port_fails_only_the_send() -> None:
    async with ScriptedSMTP() as server:
        port = server.port  # closed when the block ends: nothing listens there any more
    async with _transport(port) as transport:
        transport.warm_up()
        await asyncio.sleep(0.1)  # the attempt fails in the background, unreported
        with pytest.raises(TemporaryDeliveryError) as refused:
            await transport.send(MESSAGE, SENDER, "anna@vg.example")
    assert "Verbindung zu 127.0.0.1" in refused.value.reply


def test_data_block_is_what_aiosmtplib_would_send() -> None:
    """Line ends made CRLF, leading periods doubled, the end marker: byte for byte as
    aiosmtplib's DATA does it, for every mix of CR, LF and periods."""
    rng = random.Random(2920)
    samples = [MESSAGE, b"", b".", b"\r", b"\n", b".\r\n.", b"a\n.b\r.c\r\n..d"]
    samples += [
        bytes(rng.choice(b"ab.\r\n") for _ in range(rng.randint(0, 40))) for _ in range(5000)
    ]
    for sample in samples:
        expected = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(sample)) + b".\r\n"
        assert _data_block(sample) == expected, sample


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)
