"""The DKIM key, when signing is on: present, readable, the right kind and size."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ..config import Settings
from .findings import Finding, failed, passed


async def check_dkim(settings: Settings) -> Sequence[Finding]:
    from .. import dkim

    if not settings.dkim.enabled:
        return [passed("DKIM: aus ([dkim] enabled = false); Nachrichten werden nicht signiert")]
    problem = await asyncio.to_thread(dkim.check, settings)
    if problem is not None:
        return [
            failed(
                f"DKIM: {problem}",
                "Schlüssel anlegen mit `notifier dkim keygen` (oder [dkim] private_key_file "
                "korrigieren) und den DNS-Eintrag aus `notifier dkim show` veröffentlichen.",
            )
        ]
    name = f"{settings.dkim.selector}._domainkey.{dkim.domain_of(settings)}"
    return [
        passed(
            f"DKIM: Schlüssel nutzbar; der TXT-Eintrag {name} muss dem von "
            "`notifier dkim show` gleichen"
        )
    ]
