"""Markdown as readable plain text, for the text part of e-mails.

Emphasis loses its markers (``**Prüm**`` → ``Prüm``), a link keeps its text and its address
follows on a line of its own after the paragraph (``[Anmeldung](https://…)`` → ``Anmeldung``,
then ``Anmeldung: https://…``), so no mail program breaks it and nobody reads Markdown syntax.
Lists keep a dash or their number, headings stand as a line of their own, quotes get ``> ``.
"""

from __future__ import annotations

from collections.abc import Sequence

from markdown_it import MarkdownIt
from markdown_it.token import Token

__all__ = ["PARSER", "markdown_text", "tokens_text"]

# The CommonMark parser of the e-mails (raw HTML off); rendering.py makes the HTML part with it.
PARSER = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})


def markdown_text(source: str) -> str:
    """The text of the CommonMark ``source``: paragraphs separated by a blank line, each link's
    address on its own line after the block it occurs in. Raw HTML stays as written (it is not
    interpreted in mails either)."""
    return tokens_text(PARSER.parse(source))


def tokens_text(tokens: Sequence[Token]) -> str:
    """:func:`markdown_text` of tokens :data:`PARSER` made (a long text is parsed once for both
    of a message's parts)."""
    blocks: list[tuple[str, bool]] = []  # (text, in a tight list)
    tight = False
    prefixes: list[str] = []  # what each line of the current block starts with (lists, quotes)
    ordinals: list[int | None] = []  # per open list: the next number, or None for bullets
    pending_item = ""
    for token in tokens:
        kind = token.type
        if kind == "bullet_list_open":
            ordinals.append(None)
        elif kind == "ordered_list_open":
            ordinals.append(int(token.attrGet("start") or 1))
        elif kind in ("bullet_list_close", "ordered_list_close"):
            ordinals.pop()
            blocks.append(("", False))  # what follows a list is apart from it
        elif kind == "list_item_open":
            number = ordinals[-1] if ordinals else None
            if number is None:
                pending_item = "- "
            else:
                pending_item = f"{number}. "
                ordinals[-1] = number + 1
            prefixes.append(" " * len(pending_item))
        elif kind == "list_item_close":
            prefixes.pop()
        elif kind == "blockquote_open":
            prefixes.append("> ")
        elif kind == "blockquote_close":
            prefixes.pop()
        elif kind == "paragraph_open":
            tight = token.hidden  # markdown-it hides the paragraphs of a tight list
        elif kind == "inline":
            text, links = _inline(token.children or [])
            lines = text.split("\n") + [f"{label}: {url}" for label, url in links]
            blocks.append((_indent(lines, prefixes, pending_item), tight))
            pending_item, tight = "", False
        elif kind in ("fence", "code_block", "html_block"):
            lines = token.content.rstrip("\n").split("\n")
            blocks.append((_indent(lines, prefixes, pending_item), False))
            pending_item = ""
        elif kind == "hr":
            blocks.append((_indent(["―" * 20], prefixes, ""), False))
    return _join(blocks)


def _inline(children: Sequence[Token]) -> tuple[str, list[tuple[str, str]]]:
    """The text of an inline run, and its links as (text, address)."""
    parts: list[str] = []
    links: list[tuple[str, str]] = []
    link_start: list[tuple[int, str]] = []
    for child in children:
        kind = child.type
        if kind in ("text", "code_inline", "html_inline"):
            parts.append(child.content)
        elif kind == "softbreak" or kind == "hardbreak":
            parts.append("\n")
        elif kind == "link_open":
            link_start.append((len(parts), str(child.attrGet("href") or "")))
        elif kind == "link_close" and link_start:
            start, href = link_start.pop()
            label = " ".join("".join(parts[start:]).split())
            # An autolink (<https://…>, <a@b.de>) already shows its address in the text.
            if href and label not in (href, href.removeprefix("mailto:")):
                links.append((label or href, href))
        elif kind == "image":
            alt = child.content or ""
            parts.append(alt)
            src = str(child.attrGet("src") or "")
            if src:
                links.append((alt or "Bild", src))
    text = "".join(parts)
    return text, links


def _indent(lines: list[str], prefixes: list[str], first: str) -> str:
    """Prefix each line with the open containers' prefixes; the first line of a list item gets
    its marker instead of the item's indentation."""
    outer = "".join(prefixes[:-1]) if first else "".join(prefixes)
    own = "".join(prefixes)
    out = []
    for index, line in enumerate(lines):
        lead = outer + first if index == 0 and first else own
        out.append((lead + line).rstrip())
    return "\n".join(out)


def _join(blocks: list[tuple[str, bool]]) -> str:
    """Blocks separated by a blank line; the items of a tight list by a line break only."""
    out: list[str] = []
    previous_tight = False
    for text, tight in blocks:
        if not text.strip():
            previous_tight = False
            continue
        if out:
            out.append("\n" if tight and previous_tight else "\n\n")
        out.append(text)
        previous_tight = tight
    return "".join(out).strip()
