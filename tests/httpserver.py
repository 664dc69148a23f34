"""A tiny HTTP server on 127.0.0.1, port 0, for feed and calendar sources; tests change what it
answers between requests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHUNK = 64 * 1024


@dataclass
class Route:
    """What the server answers on one path; tests change it between requests."""

    body: bytes = b""
    status: int = 200
    etag: str | None = None
    last_modified: str | None = None
    location: str | None = None  # answer 301 to here
    delay: float = 0.0  # seconds before the status line
    trickle: float = 0.0  # seconds between single body bytes
    stream: int = 0  # serve this many bytes, made lazily in chunks, instead of ``body``
    announce_length: bool = True


@dataclass
class Seen:
    path: str
    headers: dict[str, str]  # names in lower case


@dataclass
class FeedServer:
    httpd: ThreadingHTTPServer
    routes: dict[str, Route] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    streamed: int = 0  # bytes the streaming route managed to send
    stream_finished: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


class _Handler(BaseHTTPRequestHandler):
    feeds: FeedServer  # set on the subclass the fixture makes

    def do_GET(self) -> None:
        feeds = self.feeds
        feeds.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}))
        route = feeds.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        try:
            self._answer(feeds, route)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up, as the test wanted

    def _answer(self, feeds: FeedServer, route: Route) -> None:
        if route.delay and feeds.stop.wait(route.delay):
            return
        if route.location is not None:
            self.send_response(301)
            self.send_header("Location", route.location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if (route.etag and self.headers.get("If-None-Match") == route.etag) or (
            route.last_modified and self.headers.get("If-Modified-Since") == route.last_modified
        ):
            self.send_response(304)
            if route.etag:
                self.send_header("ETag", route.etag)
            self.end_headers()
            return
        self.send_response(route.status)
        self.send_header("Content-Type", "application/rss+xml; charset=utf-8")
        if route.etag:
            self.send_header("ETag", route.etag)
        if route.last_modified:
            self.send_header("Last-Modified", route.last_modified)
        if route.announce_length:
            self.send_header("Content-Length", str(route.stream or len(route.body)))
        self.end_headers()
        if route.stream:
            self._stream(feeds, route.stream)
        elif route.trickle:
            for byte in route.body:
                if feeds.stop.wait(route.trickle):
                    return
                self.wfile.write(bytes([byte]))
        else:
            self.wfile.write(route.body)

    def _stream(self, feeds: FeedServer, total: int) -> None:
        chunk = b"x" * CHUNK
        try:
            while feeds.streamed < total and not feeds.stop.is_set():
                self.wfile.write(chunk)
                feeds.streamed += len(chunk)
        finally:
            feeds.stream_finished.set()

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


@contextmanager
def serving() -> Iterator[FeedServer]:
    handler = type("Handler", (_Handler,), {})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = False  # so server_close() waits for every handler thread
    feeds = FeedServer(httpd)
    handler.feeds = feeds
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield feeds
    finally:
        feeds.stop.set()  # wakes sleeping and trickling handlers
        httpd.shutdown()
        httpd.server_close()
        thread.join()
