"""How ``notifier run`` logs: readable lines or one JSON object per line, and recipients in a
form that does not say who they are.

JSON lines carry ``time`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``, every field a
log call passes with ``extra=`` (``outbox_id``, ``item_id``, ``source``, ``smtp_code``,
``smtp_reply``, ``recipient``), and ``exception`` with the traceback when there is one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, Literal

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# What every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's copy of the message with terminal colours
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(
    fmt: Literal["text", "json"], level: str, *, stream: Any = None
) -> logging.Handler:
    """Replace the root logger's handlers by one writing ``fmt`` at ``level`` to ``stream``
    (standard error); returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def log_form(address: str) -> str:
    """An e-mail address as the log shows it: a short hash of the whole address and its domain
    (``3f9a1c0e@example.org``). One address always gives the same form, so the lines about one
    recipient can be followed without the log saying who it is."""
    normalised = address.strip().lower()
    local, at, domain = normalised.rpartition("@")
    digest = hashlib.sha256(normalised.encode()).hexdigest()[:8]
    return f"{digest}@{domain}" if at and local else digest


def without_address(text: str, address: str) -> str:
    """``text`` (an SMTP reply, an error) with ``address`` replaced by its :func:`log_form`:
    servers often repeat the refused recipient in their reply."""
    if not address or not text:
        return text
    return re.sub(re.escape(address), log_form(address), text, flags=re.IGNORECASE)
