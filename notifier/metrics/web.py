"""``GET /metrics`` and the counting of HTTP requests."""

from __future__ import annotations

import asyncio
import hmac
import time

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import instruments
from .exposition import scrape

router = APIRouter()
# A scrape reads a few counts from the database; Prometheus' own timeout is 10 s by default.
SCRAPE_TIMEOUT_SECONDS = 8.0


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus' text format; 404 when ``[metrics] enabled`` is false, 401 without the token
    when one is set."""
    ctx = request.app.state.ctx
    settings = ctx.settings.metrics
    if not settings.enabled:
        raise HTTPException(404)
    token = settings.token.get_secret_value()
    if token:
        given = request.headers.get("authorization", "")
        scheme, _, credentials = given.partition(" ")
        if not (
            scheme.lower() == "bearer"
            and hmac.compare_digest(credentials.strip().encode(), token.encode())
        ):
            return Response(
                "Für /metrics fehlt das gültige Token (Authorization: Bearer …).\n",
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
                media_type="text/plain; charset=utf-8",
            )
    try:
        async with asyncio.timeout(SCRAPE_TIMEOUT_SECONDS):
            body = await scrape(ctx.db, ctx.clock())
    except TimeoutError:
        # A database that does not answer in time: the scrape fails visibly (Prometheus
        # records up=0) rather than piling up requests.
        return Response(
            "Die Datenbank hat nicht rechtzeitig geantwortet.\n",
            status_code=503,
            media_type="text/plain; charset=utf-8",
        )
    return Response(body, media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})


def route_of(scope: Scope) -> str:
    """The route template that answered (``/abmelden/{token}``), never the raw path: ids and
    tokens in paths would make a series per visitor."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    if str(scope.get("path", "")).startswith("/static/"):
        return "/static/{path}"
    return "(unmatched)"


class HttpMetrics:
    """ASGI middleware: counts every HTTP request by method, route template and status, and
    observes its duration."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            metrics = instruments.current()
            method = scope.get("method", "GET")
            if method not in _METHODS:
                method = "other"
            route = route_of(scope)
            metrics.http_requests.labels(method, route, str(status)).inc()
            metrics.http_latency.labels(method, route).observe(time.perf_counter() - started)


_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
