"""Messages that come back to a sender, as real mail servers and providers write them: a DSN
(RFC 3464, as Postfix sends it), an ARF complaint (RFC 5965), an out-of-office reply, a mail to
the unsubscribe address, and hostile ones."""

from __future__ import annotations

import uuid

REPORTER = "mx.example.net"


def _headers(to: str, subject: str, sender: str, extra: str = "") -> str:
    return (
        f"Return-Path: <>\r\n"
        f"From: {sender}\r\n"
        f"To: {to}\r\n"
        f"Subject: {subject}\r\n"
        f"Date: Thu, 03 Dec 2026 10:00:00 +0100\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@{REPORTER}>\r\n"
        f"MIME-Version: 1.0\r\n"
        f"{extra}"
    )


def dsn(
    to: str,
    recipient: str,
    status: str,
    original_message_id: str,
    *,
    action: str = "failed",
    diagnostic: str = "smtp; 550 5.1.1 <user>: Recipient address rejected: User unknown",
) -> bytes:
    """A delivery status notification for ``recipient`` sent to the envelope sender ``to``."""
    boundary = "dsn-" + uuid.uuid4().hex
    return (
        _headers(
            to,
            "Undelivered Mail Returned to Sender",
            f"MAILER-DAEMON@{REPORTER} (Mail Delivery System)",
            "Auto-Submitted: auto-replied\r\n"
            "Content-Type: multipart/report; report-type=delivery-status;\r\n"
            f' boundary="{boundary}"\r\n',
        )
        + "\r\n"
        + f"--{boundary}\r\n"
        "Content-Description: Notification\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        "I'm sorry to have to inform you that your message could not\r\n"
        "be delivered to one or more recipients.\r\n\r\n"
        f"--{boundary}\r\n"
        "Content-Description: Delivery report\r\n"
        "Content-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; {REPORTER}\r\n"
        "Arrival-Date: Thu,  3 Dec 2026 10:00:00 +0100 (CET)\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Original-Recipient: rfc822;{recipient}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        f"Remote-MTA: dns; mx.{recipient.rpartition('@')[2]}\r\n"
        f"Diagnostic-Code: {diagnostic}\r\n\r\n"
        f"--{boundary}\r\n"
        "Content-Description: Undelivered Message Headers\r\n"
        "Content-Type: text/rfc822-headers\r\n\r\n"
        "From: EIFELKREIS VERBINDET <newsletter@eifelkreis-verbindet.example>\r\n"
        f"To: {recipient}\r\n"
        "Subject: Hinweis\r\n"
        f"Message-ID: {original_message_id}\r\n\r\n"
        f"--{boundary}--\r\n"
    ).encode("ascii")


def arf(to: str, recipient: str, original_message_id: str) -> bytes:
    """A provider's complaint report (feedback loop) about our message to ``recipient``."""
    boundary = "arf-" + uuid.uuid4().hex
    return (
        _headers(
            to,
            "Complaint about message from newsletter@eifelkreis-verbindet.example",
            "feedback@fbl.example.net",
            "Content-Type: multipart/report; report-type=feedback-report;\r\n"
            f' boundary="{boundary}"\r\n',
        )
        + "\r\n"
        + f"--{boundary}\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        "This is an email abuse report for an email message received from IP 192.0.2.1.\r\n\r\n"
        f"--{boundary}\r\n"
        "Content-Type: message/feedback-report\r\n\r\n"
        "Feedback-Type: abuse\r\n"
        "User-Agent: SomeGenerator/1.0\r\n"
        "Version: 1\r\n"
        "Original-Mail-From: <newsletter@eifelkreis-verbindet.example>\r\n"
        f"Original-Rcpt-To: <{recipient}>\r\n"
        "Arrival-Date: Thu, 3 Dec 2026 10:00:00 +0100\r\n\r\n"
        f"--{boundary}\r\n"
        "Content-Type: message/rfc822\r\n\r\n"
        "From: EIFELKREIS VERBINDET <newsletter@eifelkreis-verbindet.example>\r\n"
        f"To: {recipient}\r\n"
        "Subject: Hinweis\r\n"
        f"Message-ID: {original_message_id}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        "Text.\r\n\r\n"
        f"--{boundary}--\r\n"
    ).encode("ascii")


def out_of_office(to: str, sender: str) -> bytes:
    return (
        _headers(
            to,
            "Abwesenheitsnotiz: Hinweis",
            sender,
            "Auto-Submitted: auto-replied\r\nX-Autoreply: yes\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n",
        )
        + "\r\nIch bin bis zum 7. Dezember nicht im Büro. In dringenden Fällen …\r\n"
    ).encode("utf-8")


def unsubscribe_request(to: str, sender: str) -> bytes:
    return (
        _headers(to, "unsubscribe", sender, "Content-Type: text/plain; charset=us-ascii\r\n")
        + "\r\n\r\n"
    ).encode("ascii")


def no_report(to: str) -> bytes:
    """A mail to the bounce address that is neither a report nor an auto-reply."""
    return (
        _headers(to, "Frage", "jemand@example.org", "Content-Type: text/plain\r\n")
        + "\r\nGuten Tag, ich habe eine Frage zum Newsletter.\r\n"
    ).encode("ascii")


def broken_charset(to: str) -> bytes:
    """A report-like message in a charset that does not exist, with bytes that fit none."""
    return (
        _headers(
            to,
            "=?x-unknown?B?//79/A==?=",
            "MAILER-DAEMON@mx.example.net",
            'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n',
        ).encode("ascii")
        + b"\r\n--b\r\nContent-Type: text/plain; charset=x-unknown\r\n\r\n\xff\xfe\xfd\r\n"
        b"--b\r\nContent-Type: message/delivery-status; charset=x-unknown\r\n\r\n"
        b"Final-Recipient: \xff\xfe\r\nStatus: 9.9.9\r\n\r\n--b"
    )


def huge(to: str, megabytes: int) -> bytes:
    line = b"A" * 998 + b"\r\n"
    head = _headers(to, "Riesig", "MAILER-DAEMON@mx.example.net", "Content-Type: text/plain\r\n")
    return head.encode("ascii") + b"\r\n" + line * (megabytes * 1_000_000 // len(line))
