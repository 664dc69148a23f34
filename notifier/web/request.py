"""What the request handlers share: the per-application context, CSRF checks and page rendering.

The routers and ``app.py`` both import from here, so the web package reads top-down: this
module, then the routers, then the application that assembles them."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import Request, Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from ..branding import DEFAULT_COLOUR, BrandingAssets, load_assets
from ..catcher import MailStore
from ..config import Settings
from ..db import Database
from ..legal import LegalPages
from ..links import Links

CSRF_FIELD = "csrf_token"


@dataclass
class WebContext:
    """What the request handlers share: one per application."""

    settings: Settings
    db: Database
    links: Links
    clock: Callable[[], datetime]
    templates: Jinja2Templates
    # The privacy notice and the accessibility statement, read once at start.
    legal: LegalPages
    # Wakes the sender when a request queued a message (a sign-up's confirmation).
    wake: Callable[[], None] = lambda: None
    # The built-in mail catcher's store (only with [smtp] catcher = true).
    mails: MailStore | None = None
    # The generated stylesheet with [branding]'s colour, and its logo.
    branding: BrandingAssets = field(default_factory=lambda: load_assets(DEFAULT_COLOUR, None))
    extra: dict[str, Any] = field(default_factory=dict)


def context_of(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.ctx
    return ctx


# -- CSRF ------------------------------------------------------------------------------------


def csrf_token(request: Request) -> str:
    """This session's CSRF token (made on first use)."""
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


async def checked_form(request: Request, *, once: bool = False) -> FormData:
    """The submitted form, after checking its CSRF token; a missing or wrong one is 403.

    ``once``: the token serves this one post; the session gets a new one (the page answering
    the post carries it), so a script cannot post the form again and again with one token."""
    form = await request.form()
    sent = form.get(CSRF_FIELD)
    expected = request.session.get("csrf")
    if not (
        isinstance(sent, str)
        and isinstance(expected, str)
        and hmac.compare_digest(sent.encode(), expected.encode())
    ):
        raise HTTPException(
            403,
            "Das Formular ist abgelaufen oder stammt nicht von dieser Seite. Bitte laden Sie die "
            "Seite neu und senden Sie es noch einmal.",
        )
    if once:
        request.session["csrf"] = secrets.token_urlsafe(32)
    return form


# -- rendering -------------------------------------------------------------------------------


def page(
    request: Request, template: str, context: dict[str, Any] | None = None, status: int = 200
) -> Response:
    """A page from the templates of ``web/`` with what every page needs (CSRF token, settings)."""
    ctx = context_of(request)
    values = {
        "request": request,
        "csrf_field": CSRF_FIELD,
        "csrf_token": csrf_token(request),
        "mail": ctx.settings.mail,
        "office_user": request.session.get("user_name"),
        "branding": ctx.branding,
        **(context or {}),
    }
    return ctx.templates.TemplateResponse(request, template, values, status_code=status)
