"""Jinja2 environment and message building: one HTML and one plain-text part per recipient.

What is the same for every recipient of an item (the Markdown body turned into HTML) is worked
out once per item; only the greeting, the reason line and the addresses differ per recipient.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime as rfc2822_date
from typing import Any
from zoneinfo import ZoneInfo

import css_inline
from babel.dates import format_datetime
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markdown_it import MarkdownIt
from markupsafe import Markup

from .config import Settings
from .db.models import Item

_MARKDOWN = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
_POLICY = policy.SMTP.clone(max_line_length=998)


def german_datetime(value: datetime, tz: ZoneInfo) -> str:
    """``Montag, 7. Dezember 2026, 09:00 Uhr`` in the given zone."""
    return format_datetime(value, "EEEE, d. MMMM y, HH:mm 'Uhr'", tzinfo=tz, locale="de_DE")


def german_date(value: datetime, tz: ZoneInfo) -> str:
    return format_datetime(value, "EEEE, d. MMMM y", tzinfo=tz, locale="de_DE")


@dataclass(frozen=True)
class Recipient:
    email: str
    name: str
    organisation: str
    topics: Sequence[str]  # titles; empty: all topics


@dataclass(frozen=True)
class RenderedItem:
    """The parts of an item that are the same for every recipient."""

    subject: str
    body_html: Markup
    body_text: str
    item: Item


class Renderer:
    """Renders e-mails from ``templates/email`` and builds MIME messages."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.mail = settings.mail
        self.tz = settings.scheduler.tz
        self.topic_titles = {t.key: t.title for t in settings.topics}
        self.env = Environment(
            loader=FileSystemLoader(settings.path(settings.paths.templates) / "email"),
            autoescape=select_autoescape(["html"]),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self.env.filters["datum_zeit"] = functools.partial(german_datetime, tz=self.tz)
        self.env.filters["datum"] = functools.partial(german_date, tz=self.tz)
        self._inliner = css_inline.CSSInliner(keep_style_tags=False, load_remote_stylesheets=False)

    def prepare(self, item: Item) -> RenderedItem:
        """Turn the item's Markdown into HTML once; the text part keeps the Markdown source."""
        return RenderedItem(
            subject=item.subject,
            body_html=Markup(_MARKDOWN.render(item.body)),  # noqa: S704 - raw HTML is disabled
            body_text=item.body.strip(),
            item=item,
        )

    def topic_list(self, keys: Sequence[str]) -> list[str]:
        return [self.topic_titles.get(k, k) for k in keys]

    def render(self, prepared: RenderedItem, recipient: Recipient) -> tuple[str, str]:
        """The HTML (CSS inlined) and plain-text bodies for one recipient."""
        kind = prepared.item.kind.value
        context: Mapping[str, Any] = {
            "item": prepared.item,
            "subject": prepared.subject,
            "body_html": prepared.body_html,
            "body_text": prepared.body_text,
            "recipient": recipient,
            "mail": self.mail,
        }
        html = self.env.get_template(f"{kind}.html").render(context)
        text = self.env.get_template(f"{kind}.txt").render(context)
        return self._inliner.inline(html), text

    def message_id(self, outbox_id: int, item_id: int, subscriber_id: int) -> str:
        """A stable Message-ID per outbox row: a retried message keeps its identity."""
        digest = hashlib.sha256(f"{outbox_id}:{item_id}:{subscriber_id}".encode()).hexdigest()[:16]
        return f"<{item_id}.{outbox_id}.{digest}@{self.mail.domain}>"

    def build(
        self, prepared: RenderedItem, recipient: Recipient, *, message_id: str, date: datetime
    ) -> EmailMessage:
        """A multipart/alternative message with all headers.

        Raises ``ValueError`` if a header value would carry a line break (header injection).
        """
        html, text = self.render(prepared, recipient)
        msg = EmailMessage(policy=_POLICY)
        msg["Subject"] = prepared.subject
        msg["From"] = Address(self.mail.sender_name, addr_spec=self.mail.sender_address)
        msg["To"] = Address(recipient.name, addr_spec=recipient.email)
        if self.mail.reply_to:
            msg["Reply-To"] = self.mail.reply_to
        msg["Date"] = rfc2822_date(date)
        msg["Message-ID"] = message_id
        msg["List-Id"] = f"{self.mail.sender_name} <{self.mail.list_id}>"
        msg["Precedence"] = "bulk"
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
        msg.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
        return msg
