"""The built-in mail catcher: an aiosmtpd server inside the process that stores every message it
receives under ``mails/`` in the data directory (``var/mails`` in the checkout), so a newcomer
sees real e-mails without an SMTP account."""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

from .clock import utcnow
from .errors import NotFoundError

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
