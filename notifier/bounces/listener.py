"""An inbound SMTP server (aiosmtpd) to which the Kreis's mail server forwards the bounce
address (and the unsubscribe address): each message goes straight to the intake.

A message is answered 250 once recorded; 451 (try again later) when the database fails, so the
forwarding server keeps it; messages over ``[bounces] max_message_bytes`` are refused with 552
by aiosmtpd before they are read whole.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any

from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session

from ..errors import NotifierError
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


class BounceListener:
    """Serve SMTP on ``host:port`` (0: any free port) until the context exits."""

    def __init__(self, intake: BounceIntake, host: str, port: int, max_bytes: int) -> None:
        self.intake = intake
        self.host = host
        self.port = port
        self.max_bytes = max_bytes
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> BounceListener:
        handler = _Handler(self.intake)
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: SMTPServer(
                    handler,
                    hostname="notifier-bounces",
                    data_size_limit=self.max_bytes,
                    timeout=TIMEOUT_SECONDS,
                ),
                host=self.host,
                port=self.port,
            )
        except OSError as exc:
            raise NotifierError(
                f"Bounce-Empfang kann nicht auf {self.host}:{self.port} lauschen: {exc.strerror} "
                "([bounces] listen in config.toml ändern)"
            ) from exc
        sockname: Any = self._server.sockets[0].getsockname()
        self.port = int(sockname[1])
        logger.info("bounce listener on %s:%d", self.host, self.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
