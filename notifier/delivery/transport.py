"""The SMTP transport: one reused aiosmtplib connection, reconnected when it drops.

Failures are classified where they enter: a 5xx reply for a recipient is permanent, everything
else (4xx replies, lost connections, timeouts, TLS trouble) is temporary.
"""

from __future__ import annotations

import logging
import re
import ssl
from types import TracebackType

import aiosmtplib

from ..config import SmtpSettings
from ..errors import PermanentDeliveryError, TemporaryDeliveryError

logger = logging.getLogger(__name__)

# An address that needs neither quoting nor SMTPUTF8 (what import and sign-up let through).
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+\Z")


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
        self._smtp = self._client()
        try:
            await self._smtp.connect()
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            self._smtp = None
            raise TemporaryDeliveryError(
                "-", getattr(exc, "code", None), f"Verbindung zu {self.host}:{self.port}: {exc}"
            ) from exc
        return self._smtp

    async def send(self, message: bytes, sender: str, recipient: str) -> str:
        """Send one message (as bytes, headers included) to one recipient; returns the
        server's reply.

        Raises :class:`TemporaryDeliveryError` or :class:`PermanentDeliveryError`.
        """
        smtp = await self._connected()
        try:
            if _PLAIN_ADDRESS.match(sender) and _PLAIN_ADDRESS.match(recipient):
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
            # Our envelope sender was refused: nothing to hold against the recipient. Retried
            # (and logged) until the configuration is fixed or the message is too old.
            await self._reset_after(exc)
            raise TemporaryDeliveryError(
                recipient, exc.code, f"Absender abgelehnt: {exc.message}"
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset_after(exc)
            raise _classified(recipient, exc.code, exc.message) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await self.close()
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
        if smtp.is_ehlo_or_helo_needed:
            await smtp.ehlo()
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

    async def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None or not smtp.is_connected:
            return
        try:
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError):
            smtp.close()


def _classified(
    recipient: str, code: int | None, reply: str, *, bounced: bool = False
) -> TemporaryDeliveryError | PermanentDeliveryError:
    if code is not None and 500 <= code < 600:
        return PermanentDeliveryError(recipient, code, reply, bounced=bounced)
    return TemporaryDeliveryError(recipient, code, reply)
