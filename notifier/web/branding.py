"""The ``[branding]`` assets: the generated stylesheet with the primary colour and the logo,
read once at start and served under ``/static/`` with long caching (their URLs carry a hash
of the content, so a changed colour or logo is fetched anew)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ..branding import CSS_PATH, LOGO_PATH
from .request import context_of

_FOREVER = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"

router = APIRouter(include_in_schema=False)


def _cache(request: Request, version: str) -> str:
    return _FOREVER if request.query_params.get("v") == version else _REVALIDATE


@router.get(CSS_PATH)
async def branding_css(request: Request) -> Response:
    assets = context_of(request).branding
    return Response(
        assets.css,
        media_type="text/css; charset=utf-8",
        headers={"Cache-Control": _cache(request, assets.css_version)},
    )


@router.get(LOGO_PATH)
async def branding_logo(request: Request) -> Response:
    assets = context_of(request).branding
    if assets.logo is None:
        return Response("Kein Logo konfiguriert.", 404, media_type="text/plain; charset=utf-8")
    return Response(
        assets.logo,
        media_type=assets.logo_type,
        headers={"Cache-Control": _cache(request, assets.logo_version)},
    )
