"""The DKIM keys, when signing is on: present, readable, the right kind and size, and the
records published in the DNS match them (asked of ``[dkim] nameserver`` or the system's
resolver)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ..config import Settings
from .findings import Finding, failed, passed

DNS_SECONDS = 5.0


def _txt(name: str, nameserver: str) -> list[str]:
    """The TXT records of ``name`` (each joined from its strings); empty if there is none.
    Raises ``dns.exception.DNSException`` when the DNS cannot answer."""
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=not nameserver)
    if nameserver:
        host, _, port = nameserver.partition(":")
        resolver.nameservers = [host]
        resolver.port = int(port) if port else 53
    resolver.lifetime = DNS_SECONDS
    try:
        answer = resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    return [b"".join(r.strings).decode("ascii", "replace") for r in answer]


def _published(settings: Settings) -> list[Finding]:
    import dns.exception

    from .. import dkim_keys

    found: list[Finding] = []
    where = settings.dkim.nameserver or "DNS des Systems"
    show = "Veröffentlichen Sie den Eintrag, den `notifier dkim show` zeigt"
    for name, value in dkim_keys.expected_records(settings):
        try:
            records = _txt(name, settings.dkim.nameserver)
        except (dns.exception.DNSException, OSError) as exc:
            found.append(
                failed(
                    f"DKIM: DNS-Eintrag {name} nicht abfragbar ({where}: {type(exc).__name__})",
                    "Prüfen Sie die Namensauflösung, oder setzen Sie [dkim] nameserver auf "
                    "einen DNS-Server, der die öffentliche Zone sieht.",
                )
            )
            continue
        keys = [dkim_keys.tags(r).get("p") for r in records if "p=" in r]
        if not keys:
            found.append(failed(f"DKIM: kein DNS-Eintrag {name} ({where})", f"{show}."))
        elif dkim_keys.tags(value)["p"] not in keys:
            found.append(
                failed(
                    f"DKIM: der DNS-Eintrag {name} gehört zu einem anderen Schlüssel",
                    f"{show}, oder stellen Sie den Schlüssel ein, zu dem der Eintrag gehört.",
                )
            )
        else:
            found.append(passed(f"DKIM: Schlüssel nutzbar, DNS-Eintrag {name} passt dazu"))
    return found


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
    return await asyncio.to_thread(_published, settings)
