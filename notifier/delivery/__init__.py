"""Delivery: outbox claiming and state, SMTP transport."""

from .sender import Sender
from .transport import SmtpTransport

__all__ = ["Sender", "SmtpTransport"]
