"""The JSON API under ``/api/v1`` (bearer tokens from ``notifier tokens add``)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
