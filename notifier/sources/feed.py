"""Parsing RSS 2.0 and Atom feeds into plain, mail-ready entries."""

from __future__ import annotations

import calendar
import hashlib
import io
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import feedparser  # type: ignore[import-untyped,unused-ignore]

from ..errors import SourceError

logger = logging.getLogger(__name__)

SUMMARY_LIMIT = 1000
# The key of an entry with neither id nor link starts so (see FeedEntry.key).
FALLBACK_PREFIX = "ohne-id:"

# Control characters never belong in text shown to people, and CR/LF in a title would break the
# mail headers it ends up in; whitespace-like ones become spaces, the rest go.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f]")
_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "figcaption",
        "figure", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main",
        "nav", "ol", "p", "pre", "section", "table", "tr", "ul",
    }
)  # fmt: skip
_HIDDEN_TAGS = frozenset({"script", "style", "template"})
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class FeedEntry:
    """One entry of a feed, cleaned for display.

    ``key`` is the entry's guid/id, else its link, else :data:`FALLBACK_PREFIX` and a hash of
    title, date and content (an entry that changes those is then a new one); ``title`` is one
    line of plain text; ``summary`` is plain text of at most :data:`SUMMARY_LIMIT` characters
    (paragraphs separated by a blank line), taken from the content when the summary is empty;
    ``link`` is an http(s) URL (relative ones resolved) or ``None``; ``published`` is aware
    UTC; ``content_hash`` is the SHA-256 of title, summary and link, to notice a changed entry.
    """

    key: str
    title: str
    summary: str
    link: str | None
    published: datetime | None
    categories: tuple[str, ...]
    content_hash: str


def parse_feed(name: str, data: bytes, url: str | None = None) -> list[FeedEntry]:
    """Parse ``data`` (an RSS or Atom document) of source ``name`` into its entries, in document
    order. Relative links resolve against ``url`` (where the feed was fetched from). Entries with
    neither id nor link get a fallback key (see :class:`FeedEntry`); entries with nothing to show
    are skipped, as are repeats of a key already seen.

    A well-formed feed without entries gives ``[]``. Raises :class:`SourceError` (a German
    message that repeats nothing of the document; the parser's words in ``detail``) when
    ``data`` is not a recognisable feed.
    """
    # A BytesIO, never the bytes themselves: feedparser treats a bytes or str argument as a
    # possible file name or URL and would open or fetch it. Content-Location is the base
    # relative links resolve against.
    headers = {"content-location": url} if url else None
    parsed = feedparser.parse(io.BytesIO(data), response_headers=headers)
    entries: list[Any] = list(parsed.get("entries") or [])
    version = str(parsed.get("version") or "")
    problem = parsed.get("bozo_exception") if parsed.get("bozo") else None
    if not entries and not version:
        detail = str(problem) if problem is not None else None
        raise SourceError(name, f"fehlerhafter Feed: {_not_a_feed(data)}", detail=detail)
    if problem is not None:
        logger.warning("%s: feed is not well-formed, parsed leniently: %s", name, problem)

    result: list[FeedEntry] = []
    seen: set[str] = set()
    for number, raw in enumerate(entries, start=1):
        entry = _entry(raw)
        if entry is None:
            logger.warning(
                "%s: entry %d has neither id, link, title nor text, skipped", name, number
            )
        elif entry.key in seen:
            logger.warning("%s: entry %d repeats key %r, skipped", name, number, entry.key)
        else:
            seen.add(entry.key)
            result.append(entry)
    return result


def _not_a_feed(data: bytes) -> str:
    """Why ``data`` is no feed, in words that repeat nothing of it."""
    head = data.lstrip()[:512].lower()
    if not head:
        return "das Dokument ist leer"
    if head.startswith((b"{", b"[")):
        if b"jsonfeed.org" in data[:4096].lower():
            return "JSON Feed wird nicht unterstützt (erwartet ist RSS oder Atom)"
        return "JSON statt RSS oder Atom"
    if b"<html" in head or b"<!doctype html" in head:
        return "eine HTML-Seite statt RSS oder Atom"
    return "kein lesbares RSS oder Atom"


def _entry(raw: Mapping[str, Any]) -> FeedEntry | None:
    raw_link = _string(raw.get("link")).strip()
    title = _one_line(_text(raw.get("title"), raw.get("title_detail")))
    text = _text(raw.get("summary"), raw.get("summary_detail"))
    if not text:
        text = _content(raw.get("content"))
    summary = _shorten(text, SUMMARY_LIMIT)
    # Only fall back to updated_parsed when published_parsed is missing: asking feedparser
    # for it then is free of its deprecation warning.
    published = _utc(raw.get("published_parsed") or raw.get("updated_parsed"))
    key = _string(raw.get("id")).strip() or raw_link
    if not key:
        if not title and not summary:
            return None
        seed = "\x1f".join([title, published.isoformat() if published else "", summary])
        key = FALLBACK_PREFIX + hashlib.sha256(seed.encode("utf-8")).hexdigest()[:32]
    link = _http_link(raw_link)
    digest = hashlib.sha256("\x1f".join([title, summary, link or ""]).encode("utf-8"))
    return FeedEntry(
        key=key,
        title=title,
        summary=summary,
        link=link,
        published=published,
        categories=_categories(raw.get("tags") or []),
        content_hash=digest.hexdigest(),
    )


def _string(value: object) -> str:
    return value if isinstance(value, str) else ""


def _text(value: object, detail: object) -> str:
    """Plain text of a feed text construct, stripping HTML only when it is HTML (a plain-text
    title may well contain '<')."""
    text = _string(value)
    kind = _string(detail.get("type")) if isinstance(detail, Mapping) else "text/html"
    if "html" in kind:
        text = html_to_text(text)
    return _clean_lines(text)


def _content(value: object) -> str:
    """The plain text of the first non-empty Atom ``<content>`` (RSS ``content:encoded``)."""
    for part in value if isinstance(value, list) else []:
        if isinstance(part, Mapping):
            text = _text(part.get("value"), part)
            if text:
                return text
    return ""


def _one_line(text: str) -> str:
    return " ".join(_CONTROL.sub(" ", text).split())


def _clean_lines(text: str) -> str:
    """Collapse spaces within lines, and runs of blank lines into one blank line."""
    lines = [_one_line(line) for line in _CONTROL.sub(" ", text).splitlines()]
    paragraphs: list[list[str]] = [[]]
    for line in lines:
        if line:
            paragraphs[-1].append(line)
        elif paragraphs[-1]:
            paragraphs.append([])
    return "\n\n".join("\n".join(p) for p in paragraphs if p)


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = max(cut.rfind(" "), cut.rfind("\n"))
    if space > limit * 3 // 4:  # end on a whole word unless that loses too much
        cut = cut[:space]
    return cut.rstrip() + "…"


def _http_link(link: str) -> str | None:
    if not link or any(c.isspace() for c in link) or _CONTROL.search(link):
        return None
    try:
        parts = urlsplit(link)
    except ValueError:
        return None
    return link if parts.scheme.lower() in ("http", "https") and parts.netloc else None


def _utc(value: object) -> datetime | None:
    """feedparser's parsed dates are UTC ``time.struct_time``s."""
    if not isinstance(value, time.struct_time):
        return None
    try:
        return datetime.fromtimestamp(calendar.timegm(value), tz=UTC)
    except (ValueError, OverflowError, OSError):
        return None


def _categories(tags: Iterable[Any]) -> tuple[str, ...]:
    found: dict[str, None] = {}
    for tag in tags:
        if not isinstance(tag, Mapping):
            continue
        term = _one_line(_string(tag.get("term")) or _string(tag.get("label")))
        if term:
            found.setdefault(term)
    return tuple(found)


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN_TAGS:
            self._hidden += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN_TAGS:
            self._hidden = max(0, self._hidden - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            # Line breaks in HTML source are just spaces; only block elements break lines.
            self.parts.append(_SPACES.sub(" ", data))


def html_to_text(markup: str) -> str:
    """The text of an HTML fragment: tags removed, entities decoded, a line break at each
    block element, the content of script and style dropped."""
    extractor = _TextExtractor()
    extractor.feed(markup)
    extractor.close()
    return "".join(extractor.parts)
