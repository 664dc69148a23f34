"""What a message that came back says: a delivery status notification (RFC 3464), a complaint
(ARF, RFC 5965), a mail to the unsubscribe address, an auto-reply, or nothing usable.

Pure functions over bytes, no database: the intake (``intake.py``) matches and acts. Standard
reports are read with the ``email`` package; anything else goes to flufl.bounce, Mailman's
detectors of the many non-standard bounce formats. A message that cannot be read at all (broken
MIME, a wrong charset, a detector that trips) is ``unparseable``, never an exception.
"""

from __future__ import annotations

import email
import logging
import re
from dataclasses import dataclass, field
from email.message import Message
from email.utils import getaddresses, parseaddr

from flufl.bounce import all_failures

from ..db.models import BounceKind

logger = logging.getLogger(__name__)

# Headers of the bounce itself that may name the VERP address it was sent to.
RECIPIENT_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To")
# Out-of-office and other automatic answers (RFC 3834 and the usual private headers).
_AUTO_HEADERS = ("X-Autoreply", "X-Autorespond", "X-Auto-Response-Suppress")
_AUTO_SUBJECT = re.compile(
    r"abwesen|out of (the )?office|automatische antwort|auto(matic)?[ -]?reply|"
    r"autoresponse|urlaub|vacation|abwesenheitsnotiz",
    re.IGNORECASE,
)
_STATUS = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")
# x.2.2: mailbox full; servers send it as 5.2.2 too, but it passes.
_MAILBOX_FULL = re.compile(r"[45]\.2\.2")
DIAGNOSTIC_CHARS = 1000


@dataclass
class Finding:
    """What one incoming message is. ``address``: the failed recipient, the complainer, or who
    asked to be unsubscribed; ``original_message_id``: the Message-ID of our message it reports
    on; ``recipients``: the addresses the report was delivered to (for the VERP token)."""

    kind: BounceKind
    address: str | None = None
    status: str | None = None
    diagnostic: str | None = None
    original_message_id: str | None = None
    message_id: str | None = None
    recipients: list[str] = field(default_factory=list)
    reason: str = ""


def _text(value: object, limit: int = DIAGNOSTIC_CHARS) -> str:
    """A header value as one clean line (any charset trouble replaced), at most ``limit``."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = " ".join(str(value).split())
    return text[:limit]


def _address(value: object) -> str | None:
    """The bare address of ``rfc822; someone@example.org`` or ``Name <someone@…>``."""
    text = _text(value, 400)
    if ";" in text:
        text = text.split(";", 1)[1]
    _, address = parseaddr(text.strip())
    address = address.strip().strip("<>").lower()
    return address if "@" in address else None


def _payload_messages(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    return []


def _original_headers(msg: Message) -> Message | None:
    """The headers of the reported message (message/rfc822 or text/rfc822-headers part)."""
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            inner = _payload_messages(part)
            if inner:
                return inner[0]
        elif ctype == "text/rfc822-headers":
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                return email.message_from_bytes(raw)
    return None


def _report_part(msg: Message, ctype: str) -> Message | None:
    for part in msg.walk():
        if part.get_content_type() == ctype:
            return part
    return None


def _fields(part: Message) -> list[Message]:
    """The field blocks of a message/delivery-status or message/feedback-report part."""
    blocks = _payload_messages(part)
    if blocks:
        return blocks
    raw = part.get_payload(decode=True)
    if isinstance(raw, bytes):
        return [email.message_from_bytes(b) for b in re.split(rb"\r?\n\r?\n", raw) if b.strip()]
    return []


def _read_dsn(finding: Finding, status_part: Message) -> None:
    blocks = _fields(status_part)
    worst: tuple[int, BounceKind | None, Message | None] = (0, None, None)
    for block in blocks[1:] or blocks:  # the first block is about the message
        action = _text(block.get("Action", "")).lower()
        status_text = _text(block.get("Status", ""))
        found = _STATUS.search(status_text)
        status = found.group(0) if found else None
        diagnostic = _text(block.get("Diagnostic-Code", ""))
        kind: BounceKind | None = None
        rank = 0
        if action in ("delivered", "relayed", "expanded"):
            kind, rank = BounceKind.ignored, 1
        elif action == "delayed":
            # A warning: the message may still arrive; counted as a soft bounce only when it
            # fails. Recorded, nothing done.
            kind, rank = BounceKind.ignored, 1
        elif action == "failed" or (status and action == ""):
            full = _MAILBOX_FULL.search(status_text) or "mailbox full" in diagnostic.lower()
            if status and status.startswith("5") and not full:
                kind, rank = BounceKind.hard, 3
            else:
                kind, rank = BounceKind.soft, 2
        if kind is not None and rank > worst[0]:
            worst = (rank, kind, block)
            finding.status = status
            finding.diagnostic = diagnostic or None
            finding.address = _address(block.get("Original-Recipient", "")) or _address(
                block.get("Final-Recipient", "")
            )
    if worst[1] is None:
        finding.kind = BounceKind.unparseable
        finding.reason = "Zustellbericht ohne auswertbaren Empfänger (Action/Status fehlen)"
        return
    finding.kind = worst[1]
    if finding.kind is BounceKind.ignored:
        finding.reason = "Zustellbericht ohne Fehler (zugestellt, weitergeleitet oder verzögert)"


def _read_arf(finding: Finding, report: Message, original: Message | None) -> None:
    blocks = _fields(report)
    fields = blocks[0] if blocks else Message()
    feedback = _text(fields.get("Feedback-Type", "")).lower()
    finding.address = _address(fields.get("Original-Rcpt-To", ""))
    if finding.address is None and original is not None:
        finding.address = _address(original.get("To", ""))
    finding.diagnostic = f"Feedback-Type: {feedback or '?'}"
    if feedback == "not-spam":
        finding.kind, finding.reason = BounceKind.ignored, "Meldung „kein Spam“"
    else:
        finding.kind = BounceKind.complaint


def _is_auto_reply(msg: Message) -> bool:
    # Auto-Submitted alone says little: bounces carry "auto-replied" too.
    precedence = _text(msg.get("Precedence", "")).lower()
    return (
        any(msg.get(h) is not None for h in _AUTO_HEADERS)
        or precedence in ("auto_reply", "junk")
        or bool(_AUTO_SUBJECT.search(_text(msg.get("Subject", ""))))
    )


def classify(
    raw: bytes, envelope_recipients: list[str] | None = None, unsubscribe_mailto: str = ""
) -> Finding:
    """Read one incoming message (the caller has kept it within the size limit)."""
    finding = Finding(BounceKind.unparseable, recipients=list(envelope_recipients or []))
    try:
        msg = email.message_from_bytes(raw)
        finding.message_id = _text(msg.get("Message-ID", ""), 300) or None
        for header in RECIPIENT_HEADERS:
            for _, address in getaddresses([_text(v, 2000) for v in msg.get_all(header, [])]):
                if address:
                    finding.recipients.append(address)
        _classify(finding, msg, unsubscribe_mailto.lower())
    except Exception as exc:  # hostile input: whatever trips the parser makes it unparseable
        logger.info("bounce: message not readable: %r", exc)
        finding.kind = BounceKind.unparseable
        finding.reason = f"nicht lesbar: {type(exc).__name__}: {_text(exc, 200)}"
    return finding


def _classify(finding: Finding, msg: Message, unsubscribe_mailto: str) -> None:
    ctype = msg.get_content_type()
    report_type = _text(msg.get_param("report-type", "") or "").lower()
    original = _original_headers(msg) if ctype.startswith("multipart/") else None
    if original is not None:
        finding.original_message_id = _text(original.get("Message-ID", ""), 300) or None
    if ctype == "multipart/report" or _report_part(msg, "message/feedback-report") is not None:
        feedback = _report_part(msg, "message/feedback-report")
        if report_type == "feedback-report" or feedback is not None:
            if feedback is None:
                finding.reason = "ARF-Bericht ohne message/feedback-report-Teil"
                return
            _read_arf(finding, feedback, original)
            return
        status_part = _report_part(msg, "message/delivery-status")
        if status_part is not None:
            _read_dsn(finding, status_part)
            return
    if unsubscribe_mailto and any(r.lower() == unsubscribe_mailto for r in finding.recipients):
        if _is_auto_reply(msg):
            finding.kind, finding.reason = BounceKind.ignored, "automatische Antwort"
            return
        finding.kind = BounceKind.unsubscribe
        finding.address = _address(msg.get("From", ""))
        if finding.address is None:
            finding.kind, finding.reason = BounceKind.unparseable, "Abmeldung ohne Absender"
        return
    if ctype != "multipart/report" and _is_auto_reply(msg) and not _looks_like_bounce(msg):
        finding.kind, finding.reason = BounceKind.ignored, "automatische Antwort (Abwesenheit)"
        finding.address = _address(msg.get("From", ""))
        return
    temporary, permanent = all_failures(msg)
    addresses = [a.decode("utf-8", "replace").lower() for a in (*permanent, *temporary)]
    if addresses:
        finding.kind = BounceKind.hard if permanent else BounceKind.soft
        finding.address = addresses[0]
        finding.diagnostic = "erkannt von flufl.bounce (kein Standardbericht)"
        return
    if _is_auto_reply(msg):
        finding.kind, finding.reason = BounceKind.ignored, "automatische Antwort"
        return
    finding.kind = BounceKind.unparseable
    finding.reason = "kein Zustellbericht und keine Beschwerde erkennbar"


def _looks_like_bounce(msg: Message) -> bool:
    sender = _text(msg.get("From", "")).lower()
    return "mailer-daemon" in sender or "postmaster" in sender
