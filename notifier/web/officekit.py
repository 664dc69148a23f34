"""What the pages of the office console share: the router whose routes require a login, the
logged-in user, form helpers, one renderer, and the store of previews shown in frames."""

from __future__ import annotations

import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import Organisation, User
from ..orgtree import Choice, OrgTree, Picker, tree_cache
from ..rendering import Renderer
from .request import WebContext, context_of, page

# The e-mail HTML shown in a frame: its inline styles and embedded images may load, nothing
# from another host (an image there would tell it that the office looked at the message, even
# from a host [mail] image_hosts allows for recipients).
MAIL_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "frame-ancestors 'self'; form-action 'none'; base-uri 'none'"
)
PREVIEWS_KEPT = 64


class LoginRequired(Exception):
    """Raised by :func:`current_user` when nobody (or a removed user) is logged in."""


class OfficeRoute(APIRoute):
    """A route of the console: a request without login is sent to the login page (303)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired:
                if request.method != "GET":  # a form sent after the session ended
                    return RedirectResponse("/buero/anmelden", 303)
                target = request.url.path
                if request.url.query:
                    target += "?" + request.url.query
                return RedirectResponse("/buero/anmelden?weiter=" + quote(target, safe=""), 303)

        return guarded


router = APIRouter(include_in_schema=False, route_class=OfficeRoute)


def next_page(value: str) -> str:
    """Only a page of the console is a target after login (no open redirect)."""
    if (
        value.startswith("/buero")
        and not value.startswith("/buero/anmelden")
        and re.fullmatch(r"/buero[A-Za-z0-9/_\-.?=&%]*", value)
    ):
        return value
    return "/buero"


@dataclass(frozen=True)
class OfficeUser:
    id: int
    name: str
    email: str

    @property
    def actor(self) -> str:
        return f"office:{self.name}"


async def current_user(request: Request) -> OfficeUser:
    """The logged-in office user; the user is read anew on every request, so removing or
    deactivating one ends their sessions."""
    user_id = request.session.get("user_id")
    if not isinstance(user_id, int):
        raise LoginRequired
    ctx = context_of(request)
    async with ctx.db.reading() as session:
        user = await session.get(User, user_id)
    login_at = request.session.get("login_at")
    if (
        user is None
        or not user.active
        or not isinstance(login_at, float)
        or (user.sessions_from is not None and login_at < user.sessions_from.timestamp())
    ):
        request.session.clear()
        raise LoginRequired
    return OfficeUser(user.id, user.name, user.email)


CurrentUser = Annotated[OfficeUser, Depends(current_user)]


def renderer(ctx: WebContext) -> Renderer:
    found = ctx.extra.get("renderer")
    if not isinstance(found, Renderer):
        found = ctx.extra["renderer"] = Renderer(ctx.settings)
    return found


def smtp_endpoint(ctx: WebContext) -> tuple[str, int, str]:
    """Where test messages go: the service's SMTP server (the catcher's port when it runs)."""
    endpoint = ctx.extra.get("smtp")
    if isinstance(endpoint, tuple):
        return endpoint
    smtp = ctx.settings.smtp
    return smtp.host, smtp.port, smtp.tls


async def units(request: Request, session: AsyncSession) -> tuple[OrgTree, dict[str, Organisation]]:
    """The organisation tree (kept per process) and the units by key."""
    tree = await tree_cache(context_of(request).extra).get(session)
    by_key = {o.key: o for o in (await session.scalars(select(Organisation))).all()}
    return tree, by_key


def org_picker(
    request: Request,
    tree: OrgTree,
    *,
    field: str,
    choice: str,
    chosen: tuple[str, ...] = (),
    text: str = "",
    picked: Choice | None = None,
    multiple: bool = False,
) -> Picker:
    """A picker for an office form; after a submission, with what ``picked`` found (the
    candidates of an ambiguous name in place of the name)."""
    resolution = None
    if picked is not None:
        chosen = tuple(u.key for u in picked.units)
        if picked.problems:
            resolution = picked.problems[0]
            if resolution.candidates:
                text = ""
    return tree.picker(
        context_of(request).templates.env,
        field=field,
        choice=choice,
        chosen=chosen,
        text=text,
        resolution=resolution,
        multiple=multiple,
    )


def keep_preview(request: Request, user: OfficeUser, html: str) -> str:
    """Keep rendered e-mail HTML for its frame; returns the key of its URL."""
    ctx = context_of(request)
    store: OrderedDict[str, tuple[int, str]] = ctx.extra.setdefault("previews", OrderedDict())
    key = secrets.token_urlsafe(16)
    store[key] = (user.id, html)
    while len(store) > PREVIEWS_KEPT:
        store.popitem(last=False)
    return key


def preview_html(request: Request, user: OfficeUser, key: str) -> str | None:
    store: Mapping[str, tuple[int, str]] = context_of(request).extra.get("previews", {})
    found = store.get(key)
    if found is None or found[0] != user.id:
        return None
    return found[1]


def mail_frame(html: str) -> HTMLResponse:
    """E-mail HTML for a sandboxed frame, under a policy that lets its inline styles work."""
    return HTMLResponse(
        html,
        headers={
            "Content-Security-Policy": MAIL_CSP,
            "Cache-Control": "no-store",
            "X-Frame-Options": "SAMEORIGIN",
        },
    )


def office_page(
    request: Request,
    user: OfficeUser,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    section: str = "",
    status: int = 200,
) -> Response:
    ctx = context_of(request)
    values = {
        "user": user,
        "section": section,
        "catcher": ctx.mails is not None,
        **(context or {}),
    }
    response = page(request, template, values, status=status)
    response.headers["Cache-Control"] = "no-store"
    return response
