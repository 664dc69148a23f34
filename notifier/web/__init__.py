"""HTTP: the preference centre, the office console and the JSON API."""

from .app import create_app
from .server import WebServer

__all__ = ["WebServer", "create_app"]
