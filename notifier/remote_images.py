"""Images on other hosts in an announcement's text. Each such image tells its host who opened
the mail and when, so an announcement is refused when it is scheduled if its text (Markdown, or
raw HTML, which the renderer escapes but a copy into another program would not) loads an image
from a host that ``[mail] image_hosts`` does not list."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from urllib.parse import urlsplit

from markdown_it import MarkdownIt
from markdown_it.token import Token

from .errors import RemoteImageError

# As the renderer parses the text (notifier.rendering), so the same images are found.
_MARKDOWN = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
# An HTML start tag (bounded, so a text full of "<a" without ">" stays linear enough).
_TAG = re.compile(r"<[A-Za-z][^<>]{0,4000}>")
_ATTRIBUTE = re.compile(
    r"""(?:\b(?:src|srcset|background|poster|xlink:href|lowsrc|dynsrc)\s*=\s*"""
    r"""("[^"]*"|'[^']*'|[^\s>]+))|url\(\s*(["']?)([^"')\s]+)""",
    re.IGNORECASE,
)
# Characters browsers drop from a URL before reading it.
_DROPPED = re.compile(r"[\t\n\r\x00]")


def url_host(url: str) -> str | None:
    """The host a URL loads from (lower case), or None for a relative, ``data:`` or ``cid:``
    URL. ``//host/…`` and ``https:\\\\host`` (which browsers read as ``https://host``) count."""
    text = _DROPPED.sub("", url).strip().replace("\\", "/")
    if not text.startswith("//") and not re.match(r"[A-Za-z][A-Za-z0-9+.\-]*://", text):
        return None
    try:
        host = urlsplit(text).hostname
    except ValueError:
        return "(ungültige Adresse)"
    return host.rstrip(".") if host else "(ungültige Adresse)"


def _markdown_images(tokens: Sequence[Token]) -> Iterator[str]:
    for token in tokens:
        if token.type == "image":
            src = token.attrGet("src")
            if isinstance(src, str):
                yield src
        if token.children:
            yield from _markdown_images(token.children)


def _html_urls(text: str) -> Iterator[str]:
    for tag in _TAG.finditer(text):
        for match in _ATTRIBUTE.finditer(tag.group()):
            value = match.group(1)
            if value is not None:
                value = value.strip("\"'")
                # srcset: "a.png 1x, //b/c.png 2x"
                for candidate in value.split(","):
                    parts = candidate.split()
                    if parts:
                        yield parts[0]
            else:
                yield match.group(3)


def remote_image_hosts(text: str) -> list[str]:
    """Every host the text loads an image (or other content of a tag) from, sorted."""
    urls = [*_markdown_images(_MARKDOWN.parse(text)), *_html_urls(text)]
    return sorted({h for h in map(url_host, urls) if h is not None})


def check_remote_images(text: str, allowed: Sequence[str]) -> None:
    """Raise :class:`~notifier.errors.RemoteImageError` naming every host the text loads from
    that ``allowed`` (``[mail] image_hosts``) does not list."""
    listed = {h.lower() for h in allowed}
    foreign = [h for h in remote_image_hosts(text) if h not in listed]
    if foreign:
        raise RemoteImageError(foreign, list(allowed))


__all__ = ["check_remote_images", "remote_image_hosts", "url_host"]
