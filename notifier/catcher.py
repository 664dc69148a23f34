"""The built-in mail catcher: an aiosmtpd server inside the process that stores every message it
receives under ``mails/`` in the data directory (``var/mails`` in the checkout), so a newcomer
sees real e-mails without an SMTP account."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Self

from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session

from .clock import utcnow
from .errors import NotFoundError
from .logs import log_form
from .smtp_server import SmtpServer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaughtMail:
    number: int
    received_at: datetime
    mail_from: str
    rcpt_tos: list[str]
    subject: str
    path: Path

    def message(self) -> EmailMessage:
        return message_from_bytes(self.path.read_bytes(), policy=policy.default)


class MailStore:
    """Numbered ``.eml`` files with a ``.json`` envelope beside each."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # Messages arrive on several connections at once; numbering and writing are one step.
        self._lock = threading.Lock()

    def _next_number(self) -> int:
        numbers = [int(p.stem) for p in self.directory.glob("*.eml") if p.stem.isdigit()]
        return max(numbers, default=0) + 1

    def save(self, mail_from: str, rcpt_tos: list[str], content: bytes) -> int:
        with self._lock:
            return self._save(mail_from, rcpt_tos, content)

    def _save(self, mail_from: str, rcpt_tos: list[str], content: bytes) -> int:
        self.directory.mkdir(parents=True, exist_ok=True)
        number = self._next_number()
        subject = str(message_from_bytes(content, policy=policy.default).get("Subject", ""))
        meta = {
            "received_at": utcnow().isoformat(),
            "mail_from": mail_from,
            "rcpt_tos": rcpt_tos,
            "subject": subject,
        }
        base = self.directory / f"{number:06d}"
        tmp = base.with_suffix(".tmp")
        tmp.write_bytes(content)
        base.with_suffix(".json").write_text(json.dumps(meta, ensure_ascii=False), "utf-8")
        os.replace(tmp, base.with_suffix(".eml"))  # the .eml appears last, whole
        return number

    def list(self) -> list[CaughtMail]:
        out = []
        for eml in sorted(self.directory.glob("*.eml")):
            meta = json.loads(eml.with_suffix(".json").read_text("utf-8"))
            out.append(
                CaughtMail(
                    int(eml.stem),
                    datetime.fromisoformat(meta["received_at"]),
                    meta["mail_from"],
                    meta["rcpt_tos"],
                    meta["subject"],
                    eml,
                )
            )
        return out

    def get(self, number: int) -> CaughtMail:
        for mail in self.list():
            if mail.number == number:
                return mail
        raise NotFoundError(f"keine Nachricht Nr. {number} in {self.directory}")


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
