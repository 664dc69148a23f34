"""The pages every public body's website needs: the privacy notice (DSGVO art. 13) and the
accessibility statement (BITV 2.0 § 7), written by the operator as Markdown files named in
``[legal]`` (the package's example texts when none are named) and read once when the web
application starts."""

from __future__ import annotations

import re
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
    return markdown_html(_filled(settings, key, text))


# ``{retention.outbox_days}``, ``{web.confirm_hours}``: the configured values, so the privacy
# notice names the retention periods this installation keeps.
_PLACEHOLDER = re.compile(r"\{(retention|web)\.([a-z_]+)\}")
_WEB_VALUES = ("confirm_hours", "link_days")


def _german(value: float) -> str:
    return f"{value:,.10g}".replace(",", "\u2009").replace(".", ",").replace("\u2009", ".")


def placeholders(settings: Settings) -> dict[str, str]:
    """The values the legal texts may name, by placeholder (without braces)."""
    values = {f"retention.{k}": _german(v) for k, v in settings.retention.model_dump().items()}
    values |= {f"web.{k}": _german(getattr(settings.web, k)) for k in _WEB_VALUES}
    return values


def _filled(settings: Settings, key: str, text: str) -> str:
    values = placeholders(settings)

    def fill(match: re.Match[str]) -> str:
        name = f"{match.group(1)}.{match.group(2)}"
        if name not in values:
            known = ", ".join("{" + k + "}" for k in values)
            raise ConfigError(
                _shown(settings),
                f"legal.{key}",
                f"unbekannter Platzhalter {{{name}}} (bekannt: {known})",
            )
        return values[name]

    return _PLACEHOLDER.sub(fill, text)


def _shown(settings: Settings) -> str:
    return str(settings.config_file) if settings.config_file else "config"
