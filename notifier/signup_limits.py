"""Limits on the confirmation mails that the public sign-up form sends, so that it cannot be
used to send county-branded mail to anyone as fast as asked.

Four token buckets, in the database like the send rate limits (``rate_buckets``), so they hold
for every web process together: per client address, per recipient domain, per mailbox (seen
through plus-addresses: ``anna+1@x`` and ``anna+2@x`` are one mailbox) and for the whole
service. An attempt over any of them sends nothing; the visitor sees the same page as after a
sign-up that went through (no answer tells whether an address is known or a limit was hit).
Bucket names hold a keyed hash of the address or domain, never the address itself.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from .config import WebSettings
from .db.models import RateBucket
from .db.queries import Bucket, take_tokens

logger = logging.getLogger(__name__)

PREFIX = "signup:"
HOUR = 3600.0
DAY = 86400.0
# A bucket untouched for this long is full again (the slowest refills in a day): forget it.
FORGET_AFTER = timedelta(days=2)


def mailbox_of(address: str) -> tuple[str, str]:
    """The mailbox behind an address (lower case, without a ``+tag``) and its domain."""
    local, _, domain = address.rpartition("@")
    return local.split("+", 1)[0].lower() + "@" + domain.lower(), domain.lower()


def _hashed(kind: str, value: str, key: bytes) -> str:
    digest = hmac.new(key, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()[:24]
    return f"{PREFIX}{kind}:{digest}"


def buckets_for(settings: WebSettings, *, client: str, address: str, key: bytes) -> list[Bucket]:
    mailbox, domain = mailbox_of(address)
    per_hour = (
        ("c", client, settings.signup_per_client_per_hour),
        ("d", domain, settings.signup_per_domain_per_hour),
    )
    buckets = [Bucket(_hashed(kind, value, key), n, n / HOUR) for kind, value, n in per_hour]
    daily = settings.signup_per_mailbox_per_day
    buckets.append(Bucket(_hashed("m", mailbox, key), daily, daily / DAY))
    buckets.append(
        Bucket(f"{PREFIX}all", settings.signup_per_hour, settings.signup_per_hour / HOUR)
    )
    return buckets


async def allow_signup_mail(
    session: AsyncSession,
    settings: WebSettings,
    *,
    client: str,
    address: str,
    key: bytes,
    now: datetime,
) -> bool:
    """Whether a sign-up from ``client`` for ``address`` may send a mail now (and count it)."""
    await session.execute(
        delete(RateBucket).where(
            RateBucket.name.startswith(PREFIX),
            RateBucket.updated_at < (now - FORGET_AFTER).timestamp(),
        )
    )
    buckets = buckets_for(settings, client=client, address=address, key=key)
    granted, _ = await take_tokens(session, buckets, 1, now.timestamp())
    if not granted:
        logger.info("sign-up refused: a limit on confirmation mails is reached")
    return granted == 1
