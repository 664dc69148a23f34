"""Fast MIME building for bulk mail.

The standard library's ``EmailMessage`` spends milliseconds per message on header policies;
a bulk send builds the same headers thousands of times. Here what is the same for every
recipient (From, Subject, List-Id …, a calendar attachment) is encoded once per message kind,
and each recipient's copy only encodes To, Date, Message-ID and the two bodies (quoted-printable,
done in C by :mod:`binascii`). The result parses to the same headers and contents as the message
:meth:`notifier.rendering.Renderer.build` makes; the tests compare the two.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.header import Header
from email.headerregistry import Address
from email.utils import format_datetime, formataddr

_POLICY = policy.SMTP


def _header(name: str, value: str | Address) -> bytes:
    """One header, encoded and folded by the standard library (used for the shared ones).

    Raises ``ValueError`` for a line break in the value (header injection)."""
    if isinstance(value, str) and ("\r" in value or "\n" in value):
        raise ValueError(f"header {name} contains CR or LF")
    if name == "Subject" and isinstance(value, str) and not value.isascii():
        return _encoded_subject(value)
    folded = _POLICY.fold_binary(name, _POLICY.header_factory(name, value))
    return folded


def _encoded_subject(subject: str) -> bytes:
    """A non-ASCII subject as RFC 2047 encoded words only, folded between them.

    The policy's folder may end a line with the space before an encoded word and start the next
    with another ("am 1. \\r\\n =?utf-8?q?M=C3=A4rz?="), which readers show as a double space.
    Between two encoded words folding whitespace is ignored, so this form reads back exactly."""
    encoded = Header(subject, "utf-8", header_name="Subject").encode(linesep="\r\n")
    return b"Subject: " + encoded.encode("ascii") + b"\r\n"


def _qp(text: str, lines: dict[str, bytes] | None = None, *, learn: bool = False) -> bytes:
    """Quoted-printable with CRLF line ends.

    With ``lines`` (shared by the copies of one message) each line is looked up before it is
    encoded: quoted-printable encodes every line on its own, so the lines that are the same for
    every recipient (nearly all of them) are encoded once. ``learn`` (the first copy) fills it;
    later copies only read it, so recipients' personal lines are not kept.
    """
    # A text part ends with a line break, as EmailMessage.set_content makes it.
    if not text.endswith("\n"):
        text += "\n"
    if lines is None:
        return binascii.b2a_qp(text.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")
    parts: list[bytes] = []
    for line in text[:-1].split("\n"):
        encoded = lines.get(line)
        if encoded is None:
            encoded = binascii.b2a_qp((line + "\n").encode("utf-8"), istext=True)
            encoded = encoded.replace(b"\n", b"\r\n")
            if learn:
                lines[line] = encoded
        parts.append(encoded)
    return b"".join(parts)


@dataclass(frozen=True)
class SharedHeaders:
    """The encoded headers and attachment that are the same for every recipient."""

    head: bytes
    attachment: bytes | None  # a whole MIME part, without its boundary line
    # What follows the URL in List-Unsubscribe (through List-Unsubscribe-Post); empty for a
    # message that is no bulk mail, which carries neither.
    unsubscribe_tail: bytes = b""
    # Quoted-printable lines of the bodies, shared by every copy (see _qp).
    qp_lines: dict[str, bytes] = field(default_factory=dict, compare=False)


def shared_headers(
    *,
    subject: str,
    sender_name: str,
    sender_address: str,
    reply_to: str,
    list_id: str,
    attachment: tuple[bytes, str] | None,
    attachment_name: str = "termin.ics",
    bulk: bool = True,
    feedback_id: str = "",
    unsubscribe_mailto: str = "",
) -> SharedHeaders:
    """Encode the common headers once: List-Id, Feedback-ID (if given) and Precedence only
    for ``bulk`` mail; the calendar ``attachment`` is named ``attachment_name`` (a plain ASCII
    file name). Raises ``ValueError`` on a line break in any of them."""
    head = b"".join(
        [
            _header("Subject", subject),
            _header("From", Address(sender_name, addr_spec=sender_address)),
            _header("Reply-To", reply_to) if reply_to else b"",
            _header("List-Id", f"{sender_name} <{list_id}>") if bulk else b"",
            _header("Feedback-ID", feedback_id) if bulk and feedback_id else b"",
            b"Precedence: bulk\r\n" if bulk else b"",
            b"Auto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n",
        ]
    )
    tail = b""
    if bulk:
        # The per-recipient header is "List-Unsubscribe: <" + URL + this.
        after = list_unsubscribe("", unsubscribe_mailto).removeprefix("<")
        tail = (after + "\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n").encode()
    part = None
    if attachment is not None:
        data, method = attachment
        encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
        part = (
            f'Content-Type: text/calendar; method="{method}"; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: base64\r\n"
            f'Content-Disposition: attachment; filename="{attachment_name}"\r\n\r\n'
        ).encode("ascii") + encoded
    return SharedHeaders(head, part, tail)


def list_unsubscribe(url: str, mailto: str = "") -> str:
    """The List-Unsubscribe value (RFC 2369): the HTTPS link (one-click, RFC 8058) first, then
    with ``mailto`` an address for mail programs that send a message instead."""
    if not mailto:
        return f"<{url}>"
    return f"<{url}>, <mailto:{mailto}?subject=unsubscribe>"


def personal_message(
    shared: SharedHeaders,
    *,
    to_name: str,
    to_address: str,
    message_id: str,
    date: datetime,
    text: str,
    html: str,
    unsubscribe_url: str = "",
) -> bytes:
    """One recipient's message as bytes (CRLF line ends). With an ``unsubscribe_url`` a bulk
    message carries ``List-Unsubscribe`` and ``List-Unsubscribe-Post`` (RFC 8058 one-click).

    Raises ``ValueError`` if the name, address, Message-ID or URL carries a line break."""
    for value in (to_name, to_address, message_id, unsubscribe_url):
        if "\r" in value or "\n" in value:
            raise ValueError("address parts cannot contain CR or LF")
    to = formataddr((to_name, to_address), charset="utf-8")
    learn = not shared.qp_lines  # the first copy teaches the shared lines to the others
    alternative = "alt-" + secrets.token_hex(12)
    body = b"".join(
        [
            f"--{alternative}\r\n".encode(),
            b'Content-Type: text/plain; charset="utf-8"\r\n',
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
            _qp(text, shared.qp_lines, learn=learn),
            f"\r\n--{alternative}\r\n".encode(),
            b'Content-Type: text/html; charset="utf-8"\r\n',
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
            _qp(html, shared.qp_lines, learn=learn),
            f"\r\n--{alternative}--\r\n".encode(),
        ]
    )
    personal = (
        f"To: {to}\r\nDate: {format_datetime(date)}\r\nMessage-ID: {message_id}\r\n"
    ).encode("ascii")
    if unsubscribe_url and shared.unsubscribe_tail:
        personal += (
            b"List-Unsubscribe: <" + unsubscribe_url.encode("ascii") + shared.unsubscribe_tail
        )
    if shared.attachment is None:
        content_type = f'Content-Type: multipart/alternative; boundary="{alternative}"\r\n\r\n'
        return shared.head + personal + content_type.encode() + body
    mixed = "mix-" + secrets.token_hex(12)
    return b"".join(
        [
            shared.head,
            personal,
            f'Content-Type: multipart/mixed; boundary="{mixed}"\r\n\r\n'.encode(),
            f"--{mixed}\r\n".encode(),
            f'Content-Type: multipart/alternative; boundary="{alternative}"\r\n\r\n'.encode(),
            body,
            f"--{mixed}\r\n".encode(),
            shared.attachment,
            f"\r\n--{mixed}--\r\n".encode(),
        ]
    )
