"""An inbound SMTP server (aiosmtpd) to which the Kreis's mail server forwards the bounce
address (and the unsubscribe address): each message goes straight to the intake.

A message is answered 250 once recorded; 451 (try again later) when the database fails, so the
forwarding server keeps it; messages over ``[bounces] max_message_bytes`` are refused with 552
by aiosmtpd before they are read whole.
"""

from __future__ import annotations

import logging
from typing import Self

from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session

from ..smtp_server import SmtpServer
from .intake import BounceIntake

logger = logging.getLogger(__name__)

MAX_RECIPIENTS = 20
TIMEOUT_SECONDS = 60.0


class _Handler:
    def __init__(self, intake: BounceIntake) -> None:
        self.intake = intake

    async def handle_RCPT(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        try:
            handled = await self.intake.handle(
                content, source="smtp", recipients=list(envelope.rcpt_tos)
            )
        except Exception:
            logger.exception("bounce listener: recording failed; the sender will try again")
            return "451 4.3.0 Temporary failure, please try again later"
        return f"250 2.0.0 Recorded as {handled.kind.value} ({handled.bounce_id})"


class BounceListener(SmtpServer):
    """Serve SMTP on ``host:port`` (0: any free port) until the context exits."""

    def __init__(self, intake: BounceIntake, host: str, port: int, max_bytes: int) -> None:
        self.intake = intake
        self.max_bytes = max_bytes
        super().__init__(
            _Handler(intake),
            host=host,
            port=port,
            hostname="notifier-bounces",
            data_size_limit=max_bytes,
            timeout=TIMEOUT_SECONDS,
            what="Bounce-Empfang",
            hint="[bounces] listen in config.toml ändern",
        )

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        logger.info("bounce listener on %s:%d", self.host, self.port)
        return self
