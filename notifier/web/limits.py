"""Request body limits, enforced while the body is read: before the session's routes see it,
before authentication and before any parsing (form, multipart, JSON).

Each route class has its own limit (``[web] max_form_bytes``, ``max_upload_bytes`` for the
office's CSV import, ``max_json_bytes`` for the API). A ``Content-Length`` over the limit is
answered 413 at once, without reading a byte of the body; a body without a length (chunked) is
read into memory up to the limit and answered 413 as soon as it goes over, so neither memory nor
the disk (multipart spools files) takes more than the limit per request. A body that is only a
little too large (at most :data:`DRAIN_BYTES` over) is read to its end and dropped first: a
server that answers and closes while the client still sends makes the kernel reset the
connection, and a browser would show a connection error instead of the German page.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi.responses import JSONResponse, Response
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..config import WebSettings
from .request import page

RouteClass = Literal["form", "upload", "json"]

# The one place where a file is uploaded: the office's CSV import.
UPLOAD_PATHS = frozenset({"/buero/abonnenten/import"})
_NO_BODY = frozenset({"GET", "HEAD", "OPTIONS"})
# A body at most this much over its limit is read to its end (and dropped) before the 413, so
# that a browser shows the answer; a larger one is answered at once and the connection closed.
DRAIN_BYTES = 1_000_000


def route_class(path: str) -> RouteClass:
    if path.startswith("/api/"):
        return "json"
    if path in UPLOAD_PATHS:
        return "upload"
    return "form"


def limit_of(settings: WebSettings, kind: RouteClass) -> int:
    return {
        "form": settings.max_form_bytes,
        "upload": settings.max_upload_bytes,
        "json": settings.max_json_bytes,
    }[kind]


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware that answers 413 for a body over its route class's limit."""

    def __init__(self, app: ASGIApp, settings: WebSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _NO_BODY:
            await self.app(scope, receive, send)
            return
        kind = route_class(scope["path"])
        limit = limit_of(self.settings, kind)
        length = _content_length(scope)
        if length is not None and length > limit:
            if length - limit <= DRAIN_BYTES:
                # A little too large (a browser's upload): read and drop the rest, so that the
                # browser gets to show the answer; closing on unread data resets the connection.
                await _drain(receive, length)
            await _refuse(scope, receive, send, kind, limit)
            return
        if length is None:
            # No length given: read (at most the limit) before the application runs.
            try:
                body = await _read_up_to(receive, limit)
            except _TooLarge:
                await _drain(receive, DRAIN_BYTES)
                await _refuse(scope, receive, send, kind, limit)
                return
            await self.app(scope, _replay(body, receive), send)
            return
        await self.app(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _read_up_to(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _drain(receive: Receive, budget: int) -> None:
    """Read and drop what is left of the body, at most ``budget`` bytes more."""
    while budget > 0:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _megabytes(limit: int) -> str:
    if limit >= 1_000_000:
        return f"{limit / 1_000_000:.3g}".replace(".", ",") + " MB"
    return f"{max(1, limit // 1000)} kB"


async def _refuse(scope: Scope, receive: Receive, send: Send, kind: RouteClass, limit: int) -> None:
    what = {"form": "Das Formular", "upload": "Die Datei", "json": "Der Inhalt"}[kind]
    detail = f"{what} ist zu groß (höchstens {_megabytes(limit)})."
    # The connection closes after the answer: the rest of the body is never read.
    headers = {"Connection": "close"}
    response: Response
    if kind == "json":
        response = JSONResponse({"detail": detail}, 413, headers=headers)
    else:
        response = page(
            Request(scope, receive),
            "error.html",
            {"title": "Anfrage zu groß", "detail": detail},
            status=413,
        )
        response.headers.update(headers)
    await response(scope, receive, send)


# The public pages: what anyone on the Internet opens (the personal links of every e-mail, the
# sign-up form, the legal pages). The office (/buero), the API, /healthz, /metrics and the
# static files are not among them.
PUBLIC_PAGES = (
    "/einstellungen/",
    "/abmelden/",
    "/bestaetigen/",
    "/wieder-anmelden/",
    "/anmelden",
    "/datenschutz",
    "/barrierefreiheit",
)


class PageTurns:
    """ASGI middleware: at most ``at_once`` requests for public pages (GET and HEAD) are
    worked on at the same time; the others wait their turn in order (an asyncio semaphore is
    first come, first served). Everything else passes at once, the forms' posts too: a
    one-click unsubscribe spends its time waiting for its group commit, not on the CPU, and
    would hold a turn for nothing.

    The web application shares its process with a sender and the scheduler. Under a click
    storm (issue 12: thousands open their preferences page in the minutes after a big send)
    twenty pages interleaved on the event loop took CPU from the sender and from each other;
    with two at a time the pages are answered faster and the sending keeps its pace."""

    def __init__(self, app: ASGIApp, at_once: int) -> None:
        self.app = app
        self.turns = asyncio.Semaphore(at_once) if at_once > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.turns is None
            or scope["type"] != "http"
            or scope["method"] not in ("GET", "HEAD")
            or not scope["path"].startswith(PUBLIC_PAGES)
        ):
            await self.app(scope, receive, send)
            return
        async with self.turns:
            await self.app(scope, receive, send)
