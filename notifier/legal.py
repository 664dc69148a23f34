"""The pages every public body's website needs: the privacy notice (DSGVO art. 13) and the
accessibility statement (BITV 2.0 § 7), written by the operator as Markdown files named in
``[legal]`` (the package's example texts when none are named) and read once when the web
application starts."""

from __future__ import annotations

from dataclasses import dataclass

from markupsafe import Markup

from .config import Settings
from .errors import ConfigError, os_reason
from .rendering import markdown_html


@dataclass(frozen=True)
class LegalPages:
    """The two statements as HTML (raw HTML in the Markdown is escaped)."""

    privacy: Markup
    accessibility: Markup


def load_legal_pages(settings: Settings) -> LegalPages:
    """Read and render the files of ``[legal]``.

    Raises :class:`ConfigError` naming the key and the path when a file cannot be read.
    """
    return LegalPages(
        privacy=_read(settings, "privacy_file"),
        accessibility=_read(settings, "accessibility_file"),
    )


def _read(settings: Settings, key: str) -> Markup:
    path = settings.legal_file(key)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problem = f"Datei {path}: {os_reason(exc)}"
        raise ConfigError(_shown(settings), f"legal.{key}", problem) from exc
    except UnicodeDecodeError as exc:
        problem = f"Datei {path} ist kein UTF-8-Text ({exc.reason} an Byte {exc.start})"
        raise ConfigError(_shown(settings), f"legal.{key}", problem) from exc
    return markdown_html(text)


def _shown(settings: Settings) -> str:
    return str(settings.config_file) if settings.config_file else "config"
