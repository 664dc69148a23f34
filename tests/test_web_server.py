"""The web server's connections: answers leave at once (no Nagle delay), so one keep-alive
connection serves requests as fast as the application answers them (issue 12's click storm)."""

from __future__ import annotations

import asyncio
import socket
import time

from starlette.types import Message, Receive, Scope, Send

from notifier.web.limits import PageTurns
from notifier.web.server import WebServer, _listening_socket


async def _answer(scope: Scope, receive: Receive, send: Send) -> None:
    """Headers and body in two ASGI messages, as every Starlette response sends them (so two
    writes to the socket: the case Nagle's algorithm holds back)."""
    assert scope["type"] == "http"
    body = b"ok" * 100
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def test_accepted_connections_have_nagle_off() -> None:
    listener = _listening_socket("127.0.0.1", 0)
    with listener:
        client = socket.create_connection(listener.getsockname()[:2], timeout=5)
        with client:
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
                # asyncio sets TCP_NODELAY itself only for sockets made with protocol TCP.
                assert accepted.proto == socket.IPPROTO_TCP


def test_the_listening_address_is_read_as_socket_create_server_reads_it() -> None:
    for host, expected in [("localhost", "127.0.0.1"), ("127.0.0.1", "127.0.0.1"), ("", "0.0.0.0")]:
        with _listening_socket(host, 0) as sock:
            assert sock.family == socket.AF_INET
            assert sock.getsockname()[0] == expected
    with _listening_socket("::1", 0) as sock:
        assert sock.family == socket.AF_INET6 and sock.getsockname()[0] == "::1"


def _read_answer(sock: socket.socket, buffer: bytearray) -> None:
    """One HTTP answer with a Content-Length body, from ``buffer`` and the socket."""
    while b"\r\n\r\n" not in buffer:
        buffer += sock.recv(65536)
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    buffer[:] = rest[length:]


async def test_keep_alive_requests_are_not_held_back() -> None:
    """50 requests one after another on one connection. With Nagle's algorithm on, each
    answer's body waited for the client's delayed acknowledgement of its headers (40 ms on
    Linux): 2 s at least. Without, a few milliseconds each."""
    async with WebServer(_answer, "127.0.0.1", 0) as web:

        def client() -> float:
            sock = socket.create_connection(("127.0.0.1", web.port), timeout=5)
            with sock:
                buffer = bytearray()
                request = b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n"
                sock.sendall(request)
                _read_answer(sock, buffer)  # the connection is set up
                started = time.monotonic()
                for _ in range(50):
                    sock.sendall(request)
                    _read_answer(sock, buffer)
                return time.monotonic() - started

        took = await asyncio.to_thread(client)
    assert took < 1.5, f"50 keep-alive requests took {took:.2f} s"


async def test_public_pages_take_turns_and_nothing_else_waits_for_them() -> None:
    """[web] public_pages_at_once: at most that many public pages are worked on at once, the
    rest wait in order without an error; the office, the API and the forms' posts pass."""
    running: dict[str, int] = {"public": 0, "most": 0}
    release = asyncio.Event()
    order: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        public = scope["path"].startswith("/einstellungen/") and scope["method"] == "GET"
        if public:
            running["public"] += 1
            running["most"] = max(running["most"], running["public"])
            await release.wait()
            running["public"] -= 1
        order.append(scope["path"])
        await _answer(scope, receive, send)

    turns = PageTurns(app, at_once=2)

    async def call(path: str, method: str = "GET") -> int:
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {"type": "http", "method": method, "path": path, "headers": []}
        await turns(scope, receive, send)
        return int(sent[0]["status"])

    pages = [asyncio.create_task(call(f"/einstellungen/{n}")) for n in range(6)]
    await asyncio.sleep(0.05)
    assert running == {"public": 2, "most": 2}  # two worked on, four waiting
    # Meanwhile the office, the API, a one-click unsubscribe and /healthz are answered.
    others = ["/buero/", "/api/v1/items", "/healthz"]
    assert await asyncio.gather(*(call(p) for p in others)) == [200, 200, 200]
    assert await call("/einstellungen/x", "POST") == 200
    assert order == [*others, "/einstellungen/x"]
    release.set()
    assert await asyncio.gather(*pages) == [200] * 6
    assert running["most"] == 2
    # In the order they came.
    assert order[4:] == [f"/einstellungen/{n}" for n in range(6)]

    unlimited = PageTurns(app, at_once=0)
    release.clear()
    running["most"] = 0
    turns = unlimited
    pages = [asyncio.create_task(call(f"/einstellungen/{n}")) for n in range(6)]
    await asyncio.sleep(0.05)
    assert running["public"] == 6
    release.set()
    await asyncio.gather(*pages)
