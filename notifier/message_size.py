"""How large a message may be. Announcements are refused when they are scheduled if their
message, rendered as the sender builds it, would exceed :func:`message_size_limit`."""

from __future__ import annotations

from .config import Settings
from .errors import MessageTooLargeError


def message_size_limit(settings: Settings) -> int:
    """The largest message in bytes, headers and every part included:
    ``[mail] max_message_bytes``."""
    return settings.mail.max_message_bytes


def check_message_size(size: int, limit: int) -> None:
    """Raise :class:`MessageTooLargeError` when ``size`` exceeds ``limit`` (both in bytes)."""
    if size > limit:
        raise MessageTooLargeError(size, limit)


__all__ = ["check_message_size", "message_size_limit"]
