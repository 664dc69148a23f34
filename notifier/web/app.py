"""The web application: public pages (sign-up, preferences, unsubscribe), the project office's
console and the JSON API, served by ``notifier run`` (see :mod:`notifier.web.server`).

Pages are rendered on the server from the templates of ``web/`` and work without JavaScript.
Every form carries a CSRF token bound to the visitor's session (a signed, HttpOnly, SameSite
cookie); the one exception is the RFC 8058 one-click unsubscribe, which the signed link itself
authorises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..actors import actor_label
from ..addresses import display_email
from ..branding import load_assets
from ..catcher import MailStore
from ..config import Settings
from ..db import Database
from ..legal import load_legal_pages
from ..links import Links, secret_key
from ..metrics.web import HttpMetrics
from ..metrics.web import router as metrics_router
from ..rendering import german_date, german_datetime
from .limits import BodyLimit, PageTurns
from .messages import german_detail
from .request import WebContext, page

logger = logging.getLogger(__name__)


class _LayeredStaticFiles(StaticFiles):
    """Static files looked up in several folders in order: an override folder's file wins, the
    package's serves the rest (Starlette's own lookup walks ``all_directories`` so)."""

    def __init__(self, directories: list[Path]) -> None:
        super().__init__(directory=directories[-1])
        self.all_directories = list(directories)


def _templates(settings: Settings) -> Jinja2Templates:
    env = Environment(
        loader=FileSystemLoader(settings.template_dirs("web")),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        # Templates are read once: checking every file's modification time on each use cost
        # the busiest pages about 1 % of the process (a changed override needs a restart).
        auto_reload=False,
    )
    tz = settings.scheduler.tz
    env.filters["datum_zeit"] = lambda value: german_datetime(value, tz) if value else "–"
    env.filters["datum"] = lambda value: german_date(value, tz) if value else "–"
    env.filters["adresse"] = display_email
    env.filters["akteur"] = actor_label
    return Jinja2Templates(env=env)


# -- errors ----------------------------------------------------------------------------------

_TITLES = {
    400: "Ungültige Anfrage",
    403: "Nicht erlaubt",
    404: "Seite nicht gefunden",
    405: "Nicht erlaubt",
    410: "Link nicht mehr gültig",
    413: "Anfrage zu groß",
    422: "Ungültige Angaben",
    429: "Zu viele Versuche",
    500: "Interner Fehler",
}


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    # Starlette's form parser answers in English; people read German.
    german = german_detail(exc.detail) if isinstance(exc.detail, str) else exc.detail
    if _is_api(request):
        return JSONResponse({"detail": german}, exc.status_code, headers=exc.headers)
    detail = german if exc.detail != _default_detail(exc.status_code) else None
    return page(
        request,
        "error.html",
        {"title": _TITLES.get(exc.status_code, "Fehler"), "detail": detail},
        status=exc.status_code,
    )


def _default_detail(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    if _is_api(request):
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, 422)
    return page(
        request,
        "error.html",
        {"title": _TITLES[422], "detail": "Die Anfrage enthielt ungültige Angaben."},
        status=422,
    )


async def _server_error(request: Request, exc: Exception) -> Response:
    logger.error("error in %s %s", request.method, request.url.path, exc_info=exc)
    if _is_api(request):
        return JSONResponse({"detail": "Interner Fehler"}, 500)
    return page(
        request,
        "error.html",
        {"title": _TITLES[500], "detail": "Bitte versuchen Sie es später noch einmal."},
        status=500,
    )


# -- the application -------------------------------------------------------------------------

_SECURITY_HEADERS = {
    # Personal links carry their token in the path: never pass it on in a Referer.
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "SAMEORIGIN",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-src 'self'; frame-ancestors 'self'; form-action 'self'; base-uri 'none'"
    ),
}


# Pages whose path carries a personal token: never kept in a cache.
_PERSONAL_PATHS = ("/einstellungen/", "/abmelden/", "/bestaetigen/", "/wieder-anmelden/")


class _SecurityHeaders:
    """Adds :data:`_SECURITY_HEADERS` (unless the answer set its own) and ``Cache-Control:
    no-store`` on personal pages. Plain ASGI: Starlette's ``BaseHTTPMiddleware`` (what
    ``@app.middleware("http")`` makes) runs each request through extra tasks and streams."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        personal = scope["path"].startswith(_PERSONAL_PATHS)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if personal:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(
    settings: Settings,
    db: Database,
    clock: Callable[[], datetime],
    *,
    wake: Callable[[], None] = lambda: None,
    mails: MailStore | None = None,
) -> FastAPI:
    """The ASGI application of one service."""
    from . import api, branding, office, personal_data, public

    del personal_data  # imported for its routes, which it adds to the routers below

    app = FastAPI(
        title="notifier",
        summary="EIFELKREIS VERBINDET: Benachrichtigungsdienst",
        # No Swagger UI: it loads from a CDN, which the CSP and a closed network block.
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
    )
    key = secret_key(settings)
    app.state.ctx = WebContext(
        settings=settings,
        db=db,
        links=Links(settings, key),
        clock=clock,
        templates=_templates(settings),
        legal=load_legal_pages(settings),
        wake=wake,
        mails=mails,
        branding=load_assets(settings.branding.primary_colour, settings.logo_path),
    )
    # Innermost of the middleware: the session is there for the German 413 page; the routes,
    # their login checks and their parsers come after it.
    app.add_middleware(BodyLimit, settings=settings.web)
    app.add_middleware(
        SessionMiddleware,
        secret_key=key.decode(),
        session_cookie="notifier_session",
        max_age=int(settings.web.session_hours * 3600),
        same_site="lax",
        https_only=settings.mail.public_base_url.startswith("https://"),
    )

    app.add_middleware(_SecurityHeaders)
    # Outside the session and the body limit: a waiting request has cost nothing yet.
    app.add_middleware(PageTurns, at_once=settings.web.public_pages_at_once)

    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _server_error)
    # Before the static folder: the generated stylesheet and the logo live under /static/ too.
    app.include_router(branding.router)
    app.mount("/static", _LayeredStaticFiles(settings.template_dirs("web/static")), name="static")
    app.include_router(public.router)
    app.include_router(office.router, prefix="/buero")
    app.include_router(api.router, prefix="/api/v1")
    app.include_router(metrics_router)
    # Outermost: counts every answer, the error pages included, by the route that matched.
    app.add_middleware(HttpMetrics)

    @app.get("/", include_in_schema=False)
    async def _home() -> RedirectResponse:
        return RedirectResponse("/anmelden", 303)

    @app.get("/healthz", include_in_schema=False)
    async def _health() -> dict[str, str]:
        return {"status": "ok"}

    return app
