"""The SMTP transport: one reused aiosmtplib connection, reconnected when it drops.

Where the server offers PIPELINING (RFC 2920; Postfix, Exim, Exchange and most providers do),
MAIL, RCPT and DATA go out in one write and their replies come back together: two round trips
per message instead of four, and half the system calls. aiosmtplib cannot do this itself (it
reads one reply per command and drops replies that arrive while another waits to be picked up),
so :class:`PipeliningProtocol` collects them.

Failures are classified where they enter: a 5xx reply for a recipient is permanent, everything
else (4xx replies, lost connections, timeouts, TLS trouble) is temporary. A session that cannot
be set up at all raises :class:`SmtpUnavailable` (nothing was tried); a message larger than the
server accepts (its SIZE, 552 or 5.3.4/5.2.3) fails for good, as no retry can make it fit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from dataclasses import dataclass, field
from types import TracebackType

import aiosmtplib
from aiosmtplib.protocol import (
    MAX_RESPONSE_LENGTH,
    SMTPProtocol,
    normalize_message_line_endings,
)
from aiosmtplib.response import SMTPResponse
from aiosmtplib.typing import SMTPStatus

from ..config import SmtpSettings
from ..errors import (
    PermanentDeliveryError,
    SmtpUnavailable,
    TemporaryDeliveryError,
    megabytes,
)

logger = logging.getLogger(__name__)

# An address that needs neither quoting nor SMTPUTF8 (what import and sign-up let through).
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+\Z")
# Enhanced status codes (RFC 3463) that say the message is too big: 5.3.4 "message too big for
# system", 5.2.3 "message length exceeds administrative limit".
_TOO_BIG = re.compile(r"\b5\.(?:3\.4|2\.3)\b")


@dataclass
class _Pending:
    """The replies awaited for one pipelined write."""

    expected: int
    done: asyncio.Future[list[SMTPResponse]]
    replies: list[SMTPResponse] = field(default_factory=list)

    def finish(self, error: BaseException | None = None) -> None:
        if self.done.done():
            return
        if error is None:
            self.done.set_result(self.replies)
        else:
            self.done.set_exception(error)
            self.done.exception()  # retrieved: nobody may be waiting any more


class PipeliningProtocol(SMTPProtocol):
    """aiosmtplib's protocol, plus :meth:`exchange`: write several commands at once and collect
    their replies in order, however the server's packets split them.

    A connected protocol is switched to this class by :class:`SmtpTransport` (aiosmtplib makes
    its protocol itself and offers no way to choose the class); it adds no state of its own
    outside an exchange, and outside one everything is aiosmtplib's.
    """

    _pending: _Pending | None = None

    async def exchange(
        self, data: bytes, replies: int, seconds: float | None
    ) -> list[SMTPResponse]:
        """Write ``data`` (``replies`` complete commands) and return their replies, waiting
        at most ``seconds`` for them (one timer for all: cheaper than ``asyncio.wait_for``).

        If the connection ends first, the replies that did arrive are returned (fewer than
        asked for): a server that says 421 and closes has given its reason.
        """
        lock = self._command_lock
        if lock is None:
            raise aiosmtplib.SMTPServerDisconnected("Server not connected")
        async with lock:
            pending = self._pending = _Pending(replies, self._loop.create_future())
            timer = None
            if seconds is not None:
                timer = self._loop.call_later(
                    seconds,
                    pending.finish,
                    aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response"),
                )
            try:
                del self._buffer[:]  # anything left is unsolicited: it answers none of these
                self.write(data)
                return await pending.done
            finally:
                self._pending = None
                if timer is not None:
                    timer.cancel()
                if pending.done.cancelled() and isinstance(self.transport, asyncio.Transport):
                    # Cancelled midway: replies still on their way would answer the next
                    # commands, so the session cannot go on.
                    self.transport.abort()

    def _take_replies(self, pending: _Pending) -> None:
        try:
            while len(pending.replies) < pending.expected:
                reply = self._read_response_from_buffer()
                if reply is None:
                    break
                pending.replies.append(reply)
        except Exception as exc:  # a malformed reply
            pending.finish(exc)
            return
        if len(pending.replies) == pending.expected:
            pending.finish()
        elif len(self._buffer) > MAX_RESPONSE_LENGTH:
            del self._buffer[:]
            pending.finish(
                aiosmtplib.SMTPResponseException(
                    SMTPStatus.invalid_response.value, "Response too long"
                )
            )

    def data_received(self, data: bytes) -> None:
        pending = self._pending
        if pending is None:
            super().data_received(data)
            return
        self._buffer.extend(data)
        self._take_replies(pending)

    def eof_received(self) -> bool:
        if self._pending is not None:
            self._pending.finish()  # the replies so far; the caller sees what is missing
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._pending is not None:
            self._pending.finish()
        super().connection_lost(exc)


class SmtpTransport:
    """An async context manager around one SMTP session; ``send`` connects on demand."""

    def __init__(
        self,
        settings: SmtpSettings,
        *,
        host: str | None = None,
        port: int | None = None,
        tls: str | None = None,
    ) -> None:
        self.settings = settings
        self.host = host or settings.host
        self.port = port or settings.port
        self.tls = tls or settings.tls
        self._smtp: aiosmtplib.SMTP | None = None
        self._connecting: asyncio.Task[aiosmtplib.SMTP] | None = None

    def warm_up(self) -> None:
        """Start connecting (greeting, EHLO) in the background unless connected: called when
        work arrives, so the first message does not wait for the session to be set up."""
        if not self._is_connected():
            self._connection_task()

    def _is_connected(self) -> bool:
        return self._smtp is not None and self._smtp.is_connected

    def _connection_task(self) -> asyncio.Task[aiosmtplib.SMTP]:
        """The connection attempt under way, or a new one: never two at once."""
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
            # A failure is raised to the send that awaits it; after a warm-up none may come.
            self._connecting.add_done_callback(lambda task: task.cancelled() or task.exception())
        return self._connecting

    async def __aenter__(self) -> SmtpTransport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _client(self) -> aiosmtplib.SMTP:
        s = self.settings
        return aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            use_tls=self.tls == "tls",
            start_tls=self.tls == "starttls",
            timeout=s.timeout,
            username=s.user or None,
            password=s.password.get_secret_value() or None,
        )

    async def _connected(self) -> aiosmtplib.SMTP:
        if self._smtp is not None and self._smtp.is_connected:
            return self._smtp
        return await self._connection_task()

    async def _connect(self) -> aiosmtplib.SMTP:
        smtp = self._client()
        try:
            await smtp.connect()
            if type(smtp.protocol) is SMTPProtocol:
                smtp.protocol.__class__ = PipeliningProtocol
            if smtp.is_ehlo_or_helo_needed:
                await smtp.ehlo()
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            smtp.close()
            raise SmtpUnavailable(
                "-", getattr(exc, "code", None), f"Verbindung zu {self.host}:{self.port}: {exc}"
            ) from exc
        self._smtp = smtp
        return smtp

    async def connect(self) -> None:
        """Set up the session now unless it is up (raises :class:`SmtpUnavailable`)."""
        await self._connected()

    @property
    def max_size(self) -> int | None:
        """The largest message the server takes (its SIZE extension, RFC 1870), if it said."""
        if self._smtp is None:
            return None
        size = self._smtp.esmtp_extensions.get("size", "")
        return int(size) if size.isdigit() and int(size) > 0 else None

    async def send(self, message: bytes, sender: str, recipient: str) -> str:
        """Send one message (as bytes, headers included) to one recipient; returns the
        server's reply.

        Raises :class:`TemporaryDeliveryError` or :class:`PermanentDeliveryError`.
        """
        if not recipient.isascii():
            # Import and sign-up refuse such addresses; one stored before that never goes out
            # (no SMTPUTF8): final, and held against the address like a refusal.
            raise PermanentDeliveryError(
                recipient,
                None,
                "Adresse mit Sonderzeichen vor dem @ nicht zustellbar",
                bounced=True,
            )
        smtp = await self._connected()
        limit = self.max_size
        if limit is not None and len(message) > limit:
            # Refused here as the server would refuse it (RFC 1870), without a round trip.
            raise PermanentDeliveryError(
                recipient, 552, too_large(limit, f"die Nachricht hat {len(message)} Bytes")
            )
        try:
            if _PLAIN_ADDRESS.match(sender) and _PLAIN_ADDRESS.match(recipient):
                if smtp.is_ehlo_or_helo_needed:
                    await smtp.ehlo()
                protocol = smtp.protocol
                if isinstance(protocol, PipeliningProtocol) and smtp.supports_extension(
                    "pipelining"
                ):
                    reply = await self._pipelined(smtp, protocol, message, sender, recipient)
                else:
                    reply = await self._transaction(smtp, message, sender, recipient)
            else:  # e.g. a non-ASCII mailbox: aiosmtplib's general path decides
                _, reply = await smtp.sendmail(sender, [recipient], message)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            await self._reset_after(None)
            refusal = exc.recipients[0] if exc.recipients else None
            code = refusal.code if refusal else None
            text = refusal.message if refusal else str(exc)
            raise _classified(recipient, code, text, bounced=True) from exc
        except aiosmtplib.SMTPSenderRefused as exc:
            await self._reset_after(exc)
            if _is_too_big(exc.code, exc.message):  # MAIL FROM … SIZE=n over the server's limit
                raise PermanentDeliveryError(
                    recipient, exc.code, too_large(self.max_size, exc.message)
                ) from exc
            # Our envelope sender was refused: nothing to hold against the recipient. Retried
            # (and logged) until the configuration is fixed or the message is too old.
            raise TemporaryDeliveryError(
                recipient, exc.code, f"Absender abgelehnt: {exc.message}"
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset_after(exc)
            if _is_too_big(exc.code, exc.message):
                raise PermanentDeliveryError(
                    recipient, exc.code, too_large(self.max_size, exc.message)
                ) from exc
            raise _classified(recipient, exc.code, exc.message) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # A timeout, a lost connection, a garbled reply: what the session is in is unknown,
            # so it ends without a QUIT (which could wait for a stalled server once more).
            self._abort()
            raise TemporaryDeliveryError(recipient, None, str(exc) or type(exc).__name__) from exc
        return reply

    @staticmethod
    async def _transaction(
        smtp: aiosmtplib.SMTP, message: bytes, sender: str, recipient: str
    ) -> str:
        """MAIL, RCPT and DATA for one recipient, as ``sendmail`` does them, for addresses
        already validated on the way in (plain ASCII, nothing to quote) and a message that
        already has CRLF line ends: this skips parsing both addresses again and measuring
        the message twice for SIZE, which took about a tenth of a sender's time."""
        options = [b"SIZE=%d" % len(message)] if smtp.supports_extension("size") else []
        response = await smtp.execute_command(
            b"MAIL", b"FROM:<" + sender.encode("ascii") + b">", *options
        )
        if response.code != 250:
            raise aiosmtplib.SMTPSenderRefused(response.code, response.message, sender)
        response = await smtp.execute_command(b"RCPT", b"TO:<" + recipient.encode("ascii") + b">")
        if response.code not in (250, 251):
            raise aiosmtplib.SMTPRecipientsRefused(
                [aiosmtplib.SMTPRecipientRefused(response.code, response.message, recipient)]
            )
        return (await smtp.data(message)).message

    async def _pipelined(
        self,
        smtp: aiosmtplib.SMTP,
        protocol: PipeliningProtocol,
        message: bytes,
        sender: str,
        recipient: str,
    ) -> str:
        """The same transaction as :meth:`_transaction`, pipelined (RFC 2920): MAIL, RCPT and
        DATA in one write, then the message in a second one."""
        timeout = self.settings.timeout
        size = b" SIZE=%d" % len(message) if smtp.supports_extension("size") else b""
        envelope = b"MAIL FROM:<%s>%s\r\nRCPT TO:<%s>\r\nDATA\r\n" % (
            sender.encode("ascii"),
            size,
            recipient.encode("ascii"),
        )
        replies = await protocol.exchange(envelope, 3, timeout)
        refusal = _envelope_refusal(replies, sender, recipient)
        if refusal is not None:
            if len(replies) == 3 and replies[2].code == 354:
                # The server opened DATA although it refused the envelope (RFC 2920 asks it
                # not to): an empty message ends it, refused for want of recipients.
                await protocol.exchange(b".\r\n", 1, timeout)
            raise refusal
        if len(replies) < 3:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        if replies[2].code != 354:
            raise aiosmtplib.SMTPDataError(replies[2].code, replies[2].message)
        replies = await protocol.exchange(_data_block(message), 1, timeout)
        if not replies:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        if replies[0].code != 250:
            raise aiosmtplib.SMTPDataError(replies[0].code, replies[0].message)
        return replies[0].message

    async def _reset_after(self, exc: aiosmtplib.SMTPResponseException | None) -> None:
        # A refused message leaves the session usable after RSET; a 421 means the server closes.
        if self._smtp is None:
            return
        if (exc is not None and exc.code == 421) or not self._smtp.is_connected:
            await self.close()
            return
        try:
            await self._smtp.rset()
        except (aiosmtplib.SMTPException, OSError):
            await self.close()

    def _abort(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()

    async def close(self) -> None:
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, TemporaryDeliveryError):
                await connecting
        smtp, self._smtp = self._smtp, None
        if smtp is None or not smtp.is_connected:
            return
        try:
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError):
            smtp.close()


def _envelope_refusal(
    replies: list[SMTPResponse], sender: str, recipient: str
) -> aiosmtplib.SMTPException | None:
    """The refusal among the replies to MAIL and RCPT, as aiosmtplib would raise it."""
    if replies and replies[0].code != 250:
        return aiosmtplib.SMTPSenderRefused(replies[0].code, replies[0].message, sender)
    if len(replies) > 1 and replies[1].code not in (250, 251):
        return aiosmtplib.SMTPRecipientsRefused(
            [aiosmtplib.SMTPRecipientRefused(replies[1].code, replies[1].message, recipient)]
        )
    return None


def _data_block(message: bytes) -> bytes:
    """The message as it goes after DATA: CRLF line ends, leading periods doubled, ended by a
    line with a single period; the same bytes as aiosmtplib's DATA makes. Our messages already
    have CRLF line ends (checked, not assumed), and lines starting with a period are common in
    them (quoted-printable breaks lines anywhere): counting and ``bytes.replace`` do in C what
    aiosmtplib's regular expressions took about 50 µs per message for."""
    crlf = message.count(b"\r\n")
    if message.count(b"\r") != crlf or message.count(b"\n") != crlf:
        message = normalize_message_line_endings(message)
    elif not message.endswith(b"\r\n"):
        message += b"\r\n"
    if message.startswith(b"."):
        message = b"." + message
    return message.replace(b"\n.", b"\n..") + b".\r\n"


def _is_too_big(code: int, reply: str) -> bool:
    """552 is "exceeded storage allocation" at MAIL and DATA; 5.3.4 and 5.2.3 say "too big"
    whatever the basic code (a 554 after DATA, say)."""
    return code == 552 or (500 <= code < 600 and _TOO_BIG.search(reply) is not None)


def too_large(limit: int | None, reply: str) -> str:
    """The reply kept for a message the server refused for its size, in German."""
    if limit is None:
        return f"zu groß für den Mailserver: {reply}"
    return f"zu groß für den Mailserver (max. {megabytes(limit)}): {reply}"


def _classified(
    recipient: str, code: int | None, reply: str, *, bounced: bool = False
) -> TemporaryDeliveryError | PermanentDeliveryError:
    if code is not None and 500 <= code < 600:
        return PermanentDeliveryError(recipient, code, reply, bounced=bounced)
    return TemporaryDeliveryError(recipient, code, reply)
