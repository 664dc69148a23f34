"""Checks of what the service connects to: the database, the SMTP server, the sources."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from ..config import Settings
from .findings import NETWORK_SECONDS, Finding, failed, passed


async def check_database(settings: Settings) -> Sequence[Finding]:
    """Reachable, and migrated to this version's newest schema (read only: never migrates)."""
    from sqlalchemy import inspect, text

    from ..db import Database
    from ..db.engine import head_revision, sqlite_path
    from ..db.failures import database_error, where

    url = settings.database_url
    file = sqlite_path(url)
    if file is not None and not file.is_file():
        return [
            failed(
                f"Datenbank {file} existiert noch nicht",
                "Legen Sie sie mit `notifier migrate` an (oder prüfen Sie [database] url).",
            )
        ]
    try:
        async with Database(url, role="doctor") as db, db.engine.connect() as connection:
            migrated = await connection.run_sync(
                lambda sync: inspect(sync).has_table("alembic_version")
            )
            revisions: list[str] = []
            if migrated:
                found = await connection.execute(text("SELECT version_num FROM alembic_version"))
                revisions = [str(r) for r in found.scalars()]
    except Exception as exc:
        error = database_error(exc, url)
        if error is None:
            raise
        return [
            failed(
                str(error),
                "Prüfen Sie [database] url (bzw. NOTIFIER_DATABASE__URL), ob der Server läuft "
                "und die Rechte.",
            )
        ]
    head = head_revision()
    shown = where(url)
    if revisions != [head]:
        state = f"Stand {', '.join(revisions)}" if revisions else "noch nicht angelegt"
        return [
            passed(f"Datenbank {shown} erreichbar"),
            failed(
                f"Datenbank-Schema: {state}, diese Version braucht {head}",
                "Führen Sie `notifier migrate` aus (das tut auch jeder Start von `notifier run`).",
            ),
        ]
    return [passed(f"Datenbank {shown} erreichbar, Schema auf dem neuesten Stand ({head})")]


async def check_smtp(settings: Settings) -> Sequence[Finding]:
    """Connect, EHLO, STARTTLS when configured, AUTH when a user is set; nothing is sent."""
    import ssl

    import aiosmtplib

    smtp = settings.smtp
    if smtp.catcher:
        return [
            passed(
                "SMTP: eingebauter Mail-Catcher ([smtp] catcher = true) – es geht keine "
                "E-Mail hinaus; für echten Versand [smtp] catcher = false und host/port setzen"
            )
        ]
    where = f"{smtp.host}:{smtp.port}"
    client = aiosmtplib.SMTP(
        hostname=smtp.host,
        port=smtp.port,
        use_tls=smtp.tls == "tls",
        start_tls=False,  # done below, as its own step
        timeout=min(smtp.timeout, NETWORK_SECONDS),
    )
    found: list[Finding] = []
    step = "connect"
    try:
        await client.connect()
        step = "ehlo"
        await client.ehlo()
        tls = " über TLS" if smtp.tls == "tls" else ""
        found.append(passed(f"SMTP-Server {where} erreichbar{tls}, EHLO beantwortet"))
        if smtp.tls == "starttls":
            step = "starttls"
            if not client.supports_extension("starttls"):
                found.append(
                    failed(
                        f"SMTP-Server {where} bietet kein STARTTLS an",
                        "Fragen Sie den Betreiber nach Port 587 mit STARTTLS, oder "
                        '[smtp] tls = "tls" mit Port 465; tls = "none" nur für ein Relay im '
                        "eigenen Netz.",
                    )
                )
                return found
            await client.starttls()
            found.append(passed("SMTP: STARTTLS, Zertifikat gültig"))
        if smtp.user:
            step = "auth"
            await client.login(smtp.user, smtp.password.get_secret_value())
            found.append(passed(f"SMTP: Anmeldung als {smtp.user} angenommen"))
    except aiosmtplib.SMTPAuthenticationError as exc:
        found.append(
            failed(
                f"SMTP: Anmeldung als {smtp.user} abgelehnt ({exc.code} {exc.message})",
                "Prüfen Sie [smtp] user und das Passwort (NOTIFIER_SMTP__PASSWORD).",
            )
        )
    except (aiosmtplib.SMTPException, OSError, ssl.SSLError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        if step == "starttls" or isinstance(exc, ssl.SSLError):
            found.append(
                failed(
                    f"SMTP: TLS mit {where} gescheitert ({reason})",
                    "Prüfen Sie [smtp] tls und port (587: starttls, 465: tls) und das "
                    "Zertifikat des Servers.",
                )
            )
        elif step == "auth":
            found.append(
                failed(
                    f"SMTP: Anmeldung an {where} nicht möglich ({reason})",
                    "Prüfen Sie [smtp] tls und user: viele Server bieten die Anmeldung erst "
                    'nach STARTTLS an (tls = "starttls" mit Port 587).',
                )
            )
        else:
            found.append(
                failed(
                    f"SMTP-Server {where} nicht erreichbar ({reason})",
                    "Prüfen Sie [smtp] host und port, ob der Server läuft und ob eine Firewall "
                    "die Verbindung sperrt.",
                )
            )
    finally:
        if client.is_connected:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()
    return found


async def check_sources(settings: Settings) -> Sequence[Finding]:
    """Each source answers (HTTP 2xx within a short time and its size limit, or a readable
    file); all are asked at once."""
    from ..errors import SourceError
    from ..sources.http import fetch
    from ..sources.poller import http_client

    if not settings.sources.all:
        return [passed("Quellen: keine konfiguriert")]

    async with http_client() as client:

        async def one(source: Any) -> Finding:
            url = source.url if "://" in source.url else str(settings.path(source.url))
            try:
                fetched = await fetch(
                    client,
                    source.name,
                    url,
                    etag=None,
                    last_modified=None,
                    timeout=min(source.timeout, NETWORK_SECONDS),
                    max_bytes=source.max_bytes,
                )
            except SourceError as exc:
                return failed(
                    f"Quelle {source.name}: {exc.problem}",
                    f"Prüfen Sie die Adresse {source.url} (im Browser oder mit curl) und ob dieser "
                    "Rechner sie erreicht (Proxy, Firewall).",
                )
            return passed(
                f"Quelle {source.name}: {source.url} erreichbar ({len(fetched.body)} Bytes)"
            )

        return await asyncio.gather(*(one(s) for s in settings.sources.all))
