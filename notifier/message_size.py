"""How large a message may be. Announcements are refused when they are scheduled if their
message, rendered as the sender builds it, would exceed :func:`message_size_limit`."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from .config import Settings
from .db import queries
from .errors import MessageTooLargeError


async def message_size_limit(session: AsyncSession, settings: Settings) -> int:
    """The largest message in bytes, headers and every part included: ``[mail]
    max_message_bytes``, or less when the SMTP server announced a smaller SIZE to a sender
    (recorded by the senders; unknown before the first send)."""
    server = await queries.smtp_size_limit(session)
    limit = settings.mail.max_message_bytes
    return min(limit, server) if server else limit


def check_message_size(size: int, limit: int) -> None:
    """Raise :class:`MessageTooLargeError` when ``size`` exceeds ``limit`` (both in bytes)."""
    if size > limit:
        raise MessageTooLargeError(size, limit)


__all__ = ["check_message_size", "message_size_limit"]
