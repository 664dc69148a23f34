"""Serving the web application with uvicorn inside the service's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp

from ..errors import NotifierError

logger = logging.getLogger(__name__)


class WebServer:
    """``async with WebServer(app, host, port) as web``: listening until the block ends.

    The socket is bound here (a taken port is a clear error, port 0 picks a free one:
    :attr:`port` tells which); the service keeps its own signal handling.
    """

    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,
            proxy_headers=True,
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(self._config)
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> WebServer:
        try:
            self._socket = _listening_socket(self.host, self.port)
        except OSError as exc:
            raise NotifierError(
                f"Web-Oberfläche: {self.host}:{self.port} ist nicht verfügbar ({exc.strerror})"
            ) from exc
        self.port = self._socket.getsockname()[1]
        self._config.load()
        self._server.lifespan = self._config.lifespan_class(self._config)
        await self._server.startup(sockets=[self._socket])
        self._task = asyncio.create_task(self._server.main_loop(), name="web")
        logger.info("web application on http://%s:%d", self.host, self.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._server.shutdown(sockets=[self._socket] if self._socket else None)


def _listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port`` whose connections send without Nagle's delay.

    asyncio turns Nagle's algorithm off (``TCP_NODELAY``) only for sockets whose protocol
    number says TCP, and ``socket.create_server`` makes them with protocol 0. With Nagle on,
    an answer's body waits for the client to acknowledge its headers, and clients delay that
    acknowledgement by up to 40 ms: every keep-alive request took 40 ms and one client
    connection served 25 requests/s, whatever the CPU. Setting it on the listening socket
    covers the connections it accepts (Linux copies the option to them)."""
    # As socket.create_server: IPv4 unless an IPv6 address is given ("localhost" is
    # 127.0.0.1, never ::1), and "" is every address.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    infos = socket.getaddrinfo(
        host or None, port, family, socket.SOCK_STREAM, socket.IPPROTO_TCP, socket.AI_PASSIVE
    )
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
    except OSError:
        sock.close()
        raise
    return sock
