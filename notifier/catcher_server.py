"""The built-in mail catcher's SMTP side: an aiosmtpd server that stores every message it
receives in a :class:`~notifier.catcher.MailStore`.

Apart from the store so that the processes that only read caught mails (the web pages, the
command line) or send elsewhere do without aiosmtpd."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Self

from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session

from .catcher import MailStore
from .logs import log_form
from .smtp_server import SmtpServer

logger = logging.getLogger(__name__)


def advertise_pipelining(session: Session, hostname: str, responses: list[str]) -> list[str]:
    """EHLO replies with PIPELINING added: aiosmtpd reads pipelined commands one by one, as RFC
    2920 asks, but does not say so, and senders pipeline only when told."""
    session.host_name = hostname  # what aiosmtpd does itself when there is no EHLO hook
    return [*responses[:-1], "250-PIPELINING", responses[-1]]


class _Handler:
    def __init__(self, store: MailStore) -> None:
        self.store = store

    async def handle_EHLO(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        return advertise_pipelining(session, hostname, responses)

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        number = await asyncio.to_thread(
            self.store.save, envelope.mail_from or "", list(envelope.rcpt_tos), content
        )
        logger.info(
            "catcher: message %d for %s stored",
            number,
            ", ".join(log_form(to) for to in envelope.rcpt_tos),
        )
        return "250 Message accepted for delivery"


class MailCatcher(SmtpServer):
    """Serve SMTP on ``host:port`` (0: any free port) until the context exits."""

    def __init__(self, directory: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.store = MailStore(directory)
        super().__init__(
            _Handler(self.store),
            host=host,
            port=port,
            hostname="notifier-catcher",
            data_size_limit=50 * 2**20,
            what="Mail-Catcher",
            hint="[catcher] port in config.toml ändern, 0 wählt einen freien Port",
        )

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        logger.info(
            "mail catcher listening on %s:%d, storing in %s",
            self.host,
            self.port,
            self.store.directory,
        )
        return self
