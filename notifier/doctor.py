"""``notifier doctor``: the configuration and the environment checked as an administrator would.

Each check is an async function of the settings that returns findings (✓ or ✗, and for a ✗ what
to do); :data:`CHECKS` lists them in the order they are shown. A new check is one function and
one line in that list. The checks run concurrently, each under a deadline, so one server that
does not answer cannot hold up the others. Nothing is changed: no migration, no folder created,
no message sent.
"""

from __future__ import annotations

import asyncio
import tempfile
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .config import Settings

# The longest any one check may take (sources and servers have shorter limits of their own).
CHECK_SECONDS = 20.0
# Connecting to the SMTP server, fetching one source: at most this long.
NETWORK_SECONDS = 10.0


@dataclass(frozen=True)
class Finding:
    """One line of the checklist: ``ok`` or not, what was found, and for a ✗ what to do."""

    ok: bool
    text: str
    hint: str = ""


def passed(text: str) -> Finding:
    return Finding(True, text)


def failed(text: str, hint: str) -> Finding:
    return Finding(False, text, hint)


Check = Callable[[Settings], Awaitable[Sequence[Finding]]]


# -- database -------------------------------------------------------------------------------


async def check_database(settings: Settings) -> Sequence[Finding]:
    """Reachable, and migrated to this version's newest schema (read only: never migrates)."""
    from sqlalchemy import inspect, text

    from .db import Database
    from .db.engine import head_revision, sqlite_path
    from .db.failures import database_error, where

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
        state = ", ".join(revisions) or "kein Schema"
        return [
            passed(f"Datenbank {shown} erreichbar"),
            failed(
                f"Datenbank-Schema: Stand {state}, diese Version braucht {head}",
                "Führen Sie `notifier migrate` aus (das tut auch jeder Start von `notifier run`).",
            ),
        ]
    return [passed(f"Datenbank {shown} erreichbar, Schema auf dem neuesten Stand ({head})")]


# -- SMTP -------------------------------------------------------------------------------------


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


# -- templates --------------------------------------------------------------------------------


def _template_place(exc: BaseException) -> str:
    """``email/base.html, Zeile 3`` for an error raised in a template, if it says where."""
    import jinja2

    if isinstance(exc, jinja2.TemplateSyntaxError):
        name = exc.filename or exc.name or "?"
        return f"{name}, Zeile {exc.lineno}"
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith((".html", ".txt"))
    ]
    if frames:
        return f"{frames[-1].filename}, Zeile {frames[-1].lineno}"
    return ""


def _sample_items() -> list[Any]:
    from .db.models import Item, ItemKind, ItemStatus

    now = datetime.now(UTC)
    common: dict[str, Any] = {
        "topics": [],
        "scope": [],
        "roles": [],
        "important": False,
        "send_at": now,
        "status": ItemStatus.routed,
        "created_at": now,
        "created_by": "doctor",
        "source": "beispiel",
        "link": "https://www.example.org/beitrag",
        "published_at": now,
        "content_hash": "0" * 64,
        "all_day": False,
        "event_cancelled": False,
        "change_count": 0,
        "location": None,
        "starts_at": None,
        "ends_at": None,
    }
    return [
        Item(
            id=1, kind=ItemKind.announcement, subject="Probe", body="**Text** der Probe.", **common
        ),
        Item(
            id=2,
            kind=ItemKind.update,
            subject="Neuigkeit",
            body="Kurztext.",
            external_key="n1",
            **common,
        ),
        Item(
            id=3,
            kind=ItemKind.event,
            subject="Termin",
            body="Beschreibung.",
            external_key="t1",
            **{
                **common,
                "starts_at": now + timedelta(days=7),
                "ends_at": now + timedelta(days=7, hours=2),
                "location": "Bitburg",
            },
        ),
    ]


def _render_emails(settings: Settings) -> int:
    """Render every e-mail kind with sample data, as the sender builds them; returns how many."""
    from .db.models import Rhythm
    from .rendering import Recipient, Renderer

    renderer = Renderer(settings)
    base = settings.mail.public_base_url
    recipient = Recipient(
        email="probe@example.org",
        name="Erika Probe",
        organisation="Eifelkreis Bitburg-Prüm",
        topics=[],
        preferences_url=f"{base}/einstellungen/x",
        unsubscribe_url=f"{base}/abmelden/x",
        confirm_url=f"{base}/bestaetigen/x",
    )
    announcement, update, event = _sample_items()
    prepared = [
        renderer.prepare(announcement),
        renderer.prepare(update),
        *(renderer.prepare(event, n) for n in ("", "reminder:1", "changed:1", "cancelled")),
        renderer.prepare_briefing(Rhythm.daily, [announcement, update, event], None),
        renderer.prepare_service("confirm"),
        renderer.prepare_service("links"),
    ]
    for one in prepared:
        renderer.build(one, recipient, message_id="<probe@example.org>", date=datetime.now(UTC))
    return len(prepared)


def _render_pages(settings: Settings) -> int:
    """Render every page template with sample data (anything a page would be given stands in
    as an empty value); returns how many."""
    import jinja2

    from .web.app import _templates

    class _Sample(jinja2.ChainableUndefined):
        """Whatever a page is given by its route: empty, callable, comparable, countable."""

        def __call__(self, *args: Any, **kwargs: Any) -> _Sample:  # type: ignore[override]
            return self

        def _false(self, other: Any) -> bool:
            return False

        def _same(self, *other: Any) -> _Sample:
            return self

        __lt__ = __le__ = __gt__ = __ge__ = _false  # type: ignore[assignment]
        __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _same  # type: ignore[assignment]
        __truediv__ = __floordiv__ = __mod__ = __neg__ = _same  # type: ignore[assignment]

    def lenient(function: Callable[..., Any]) -> Callable[..., Any]:
        # Filters that take the context or environment first (pass_context …) keep doing so.
        passes = getattr(function, "jinja_pass_arg", None)

        def apply(*args: Any, **kwargs: Any) -> Any:
            value = args[1 if passes else 0]
            if isinstance(value, jinja2.Undefined):
                return value
            return function(*args, **kwargs)

        if passes is not None:
            apply.jinja_pass_arg = passes  # type: ignore[attr-defined]
        return apply

    env = _templates(settings).env.overlay()
    env.undefined = _Sample
    # A filter given a stand-in passes it on ("default" is meant for exactly that case).
    env.filters = {
        name: f if name in ("default", "d") else lenient(f) for name, f in env.filters.items()
    }
    names = [n for n in env.list_templates() if n.endswith(".html")]
    context = {"mail": settings.mail, "csrf_field": "csrf_token", "csrf_token": "probe"}
    for name in names:
        env.get_template(name).render(context)
    return len(names)


async def check_templates(settings: Settings) -> Sequence[Finding]:
    """Every e-mail and page template renders with sample data."""
    found: list[Finding] = []
    folder = settings.path(settings.paths.templates)
    hint = (
        f"Korrigieren Sie die Vorlage in [paths] templates ({folder}), oder nehmen Sie die "
        "Vorlagen dieser notifier-Version."
    )
    for label, render in (("E-Mail-Vorlagen", _render_emails), ("Seitenvorlagen", _render_pages)):
        try:
            count = await asyncio.to_thread(render, settings)
        except Exception as exc:
            place = _template_place(exc)
            where = f" ({place})" if place else ""
            found.append(failed(f"{label}: Fehler{where}: {type(exc).__name__}: {exc}", hint))
        else:
            found.append(passed(f"{label}: {count} erstellt"))
    return found


# -- public address, paths ------------------------------------------------------------------


async def check_public_url(settings: Settings) -> Sequence[Finding]:
    """``[mail] public_base_url`` uses HTTPS, unless it names this machine (trying it out)."""
    from .service import is_loopback_url

    url = settings.mail.public_base_url
    if url.startswith("https://"):
        return [passed(f"Öffentliche Adresse {url} verwendet HTTPS")]
    if is_loopback_url(url):
        return [passed(f"Öffentliche Adresse {url}: nur auf diesem Rechner (zum Ausprobieren)")]
    return [
        failed(
            f"Öffentliche Adresse {url} verwendet http://",
            "Setzen Sie [mail] public_base_url auf die https://-Adresse des Reverse-Proxys: "
            "Abmelden mit einem Klick geht bei den E-Mail-Anbietern nur über HTTPS.",
        )
    ]


def _data_paths(settings: Settings) -> list[tuple[str, Path]]:
    """(key, folder) of what the service writes."""
    from .db.engine import sqlite_path

    paths: list[tuple[str, Path]] = []
    database = sqlite_path(settings.database_url)
    if database is not None:
        paths.append(("[database] url", database.parent))
    if not settings.web.secret_key.get_secret_value():
        paths.append(("[web] secret_key_file", settings.path(settings.web.secret_key_file).parent))
    if settings.smtp.catcher:
        paths.append(("[catcher] directory", settings.path(settings.catcher.directory)))
    return paths


def _writable(folder: Path) -> str:
    """Empty if the service can write in ``folder`` (or create it); else the reason."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} ist kein Verzeichnis"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return f"{existing}: {exc.strerror or exc}"
    return ""


async def check_paths(settings: Settings) -> Sequence[Finding]:
    """The folders the service writes exist (or can be made) and are writable."""
    found: list[Finding] = []
    for key, folder in _data_paths(settings):
        problem = await asyncio.to_thread(_writable, folder)
        if problem:
            found.append(
                failed(
                    f"{key}: {folder} nicht beschreibbar ({problem})",
                    f"Legen Sie {folder} an und geben Sie dem Benutzer, unter dem der Dienst "
                    f"läuft, Schreibrechte darauf, oder ändern Sie {key}.",
                )
            )
        else:
            found.append(passed(f"{key}: {folder} beschreibbar"))
    return found


# -- sources ----------------------------------------------------------------------------------


async def check_sources(settings: Settings) -> Sequence[Finding]:
    """Each source answers (HTTP 2xx within a short time and its size limit, or a readable
    file); all are asked at once."""
    from .errors import SourceError
    from .sources.http import fetch
    from .sources.poller import http_client

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


CHECKS: list[tuple[str, Check]] = [
    ("Datenbank", check_database),
    ("SMTP", check_smtp),
    ("Vorlagen", check_templates),
    ("Öffentliche Adresse", check_public_url),
    ("Datenpfade", check_paths),
    ("Quellen", check_sources),
]


async def _bounded(name: str, check: Check, settings: Settings) -> Sequence[Finding]:
    try:
        async with asyncio.timeout(CHECK_SECONDS):
            return await check(settings)
    except TimeoutError:
        return [
            failed(
                f"{name}: keine Antwort innerhalb von {CHECK_SECONDS:g} Sekunden",
                "Prüfen Sie, ob der Server erreichbar ist.",
            )
        ]


async def run_checks(
    settings: Settings, checks: Sequence[tuple[str, Check]] = CHECKS
) -> list[Finding]:
    """Every check at once; the findings in the order of ``checks``."""
    results = await asyncio.gather(*(_bounded(n, c, settings) for n, c in checks))
    return [finding for found in results for finding in found]


def lines(findings: Sequence[Finding]) -> list[str]:
    """The checklist: ``✓ …`` or ``✗ …`` with ``→ what to do`` below."""
    out: list[str] = []
    for finding in findings:
        out.append(f"{'✓' if finding.ok else '✗'} {finding.text}")
        if not finding.ok and finding.hint:
            out.append(f"    → {finding.hint}")
    return out


__all__ = [
    "CHECKS",
    "Check",
    "Finding",
    "failed",
    "lines",
    "passed",
    "run_checks",
]
