"""An aiosmtpd SMTP server on the running event loop, as the mail catcher and the bounce
listener both run one: :class:`SmtpServer` listens while its context is open."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Self

from aiosmtpd.smtp import SMTP

from .errors import NotifierError


class SmtpServer:
    """Serve SMTP with ``handler`` on ``host:port`` (0: any free port; :attr:`port` is the
    real one once listening) until the context exits.

    ``what`` and ``hint`` make the one German line of a port that cannot be had, e.g.
    "Mail-Catcher kann nicht auf 127.0.0.1:25 lauschen: Permission denied (…)"."""

    def __init__(
        self,
        handler: Any,
        *,
        host: str,
        port: int,
        hostname: str,
        data_size_limit: int,
        timeout: float | None = None,
        what: str,
        hint: str,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self._hostname = hostname
        self._limit = data_size_limit
        self._timeout = timeout
        self._what = what
        self._hint = hint
        self._server: asyncio.Server | None = None

    def _protocol(self) -> SMTP:
        if self._timeout is None:
            return SMTP(self.handler, hostname=self._hostname, data_size_limit=self._limit)
        return SMTP(
            self.handler,
            hostname=self._hostname,
            data_size_limit=self._limit,
            timeout=self._timeout,
        )

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(self._protocol, host=self.host, port=self.port)
        except OSError as exc:
            raise NotifierError(
                f"{self._what} kann nicht auf {self.host}:{self.port} lauschen: "
                f"{exc.strerror} ({self._hint})"
            ) from exc
        sockname: Any = self._server.sockets[0].getsockname()
        self.port = int(sockname[1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
