"""Checks of what the configuration decides on this machine: the public address, the paths."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..config import Settings
from .findings import Finding, failed, passed


async def check_public_url(settings: Settings) -> Sequence[Finding]:
    """``[mail] public_base_url`` uses HTTPS, unless it names this machine (trying it out)."""
    from ..service import is_loopback_url

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
    from ..db.engine import sqlite_path

    paths: list[tuple[str, Path]] = [("[paths] data", settings.data_dir)]
    database = sqlite_path(settings.database_url)
    if database is not None:
        paths.append(("[database] url", database.parent))
    if not settings.web.secret_key.get_secret_value():
        paths.append(("[web] secret_key_file", settings.secret_key_path.parent))
    if settings.smtp.catcher:
        paths.append(("[catcher] directory", settings.catcher_dir))
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
