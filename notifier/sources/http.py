"""Fetching a source's raw bytes over HTTP(S) or from a local file, with conditional requests,
an overall time limit and a size cap, so one slow or huge source cannot stall or flood the
service."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import httpx

from ..errors import SourceError

logger = logging.getLogger(__name__)

USER_AGENT = "notifier/0.1 (EIFELKREIS VERBINDET)"
ACCEPT = (
    "application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.9, */*;q=0.5"
)


@dataclass(frozen=True)
class Fetched:
    """What one fetch brought: the body, or ``not_modified`` (body ``b""``) when the source is
    unchanged since the validators the caller passed; ``etag`` and ``last_modified`` are the
    validators to pass next time."""

    not_modified: bool
    body: bytes
    etag: str | None
    last_modified: str | None


async def fetch(
    client: httpx.AsyncClient,
    name: str,
    url: str,
    *,
    etag: str | None,
    last_modified: str | None,
    timeout: float,  # noqa: ASYNC109 - a per-source setting, applied with asyncio.timeout below
    max_bytes: int,
) -> Fetched:
    """Fetch ``url`` (an http(s) URL, an absolute file path or a ``file://`` URL) for source
    ``name``.

    HTTP requests are conditional on ``etag`` / ``last_modified`` and follow redirects; files
    count as unchanged when their modification time (and, if ``etag`` is given, size) are the
    same as at the last fetch. The whole fetch, body included, must finish within ``timeout``
    seconds and the body must not exceed ``max_bytes``.

    Raises :class:`SourceError` for an unsupported URL, an HTTP status other than 2xx or 304, a
    connection failure, a timeout, a body over the limit, or an unreadable file.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return await _fetch_http(client, name, url, etag, last_modified, timeout, max_bytes)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise SourceError(
                name,
                f"Datei-URL {url} nennt einen anderen Rechner; nur lokale Dateien sind möglich",
            )
        path = Path(url2pathname(parts.path))
    elif Path(url).is_absolute():
        path = Path(url)
    else:
        raise SourceError(
            name,
            f"Quelle {url!r} wird nicht unterstützt: erwartet ist eine http(s)-Adresse "
            "oder ein absoluter Dateipfad",
        )
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.to_thread(_read_file, name, path, etag, last_modified, max_bytes)
    except TimeoutError as exc:
        raise SourceError(
            name, f"Lesen von {path} dauerte länger als {timeout:g} Sekunden"
        ) from exc


async def _fetch_http(
    client: httpx.AsyncClient,
    name: str,
    url: str,
    etag: str | None,
    last_modified: str | None,
    timeout: float,  # noqa: ASYNC109
    max_bytes: int,
) -> Fetched:
    headers = {"User-Agent": USER_AGENT, "Accept": ACCEPT}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    logger.debug("%s: fetching %s", name, url)
    try:
        # httpx's own timeouts apply per network operation; a server trickling its body byte by
        # byte would never trip them, so the whole exchange runs under one deadline.
        async with (
            asyncio.timeout(timeout),
            client.stream("GET", url, headers=headers, follow_redirects=True) as response,
        ):
            where = f"{url} (redirected to {response.url})" if response.history else url
            if response.status_code == 304:
                logger.debug("%s: %s not modified", name, url)
                return Fetched(
                    not_modified=True,
                    body=b"",
                    etag=response.headers.get("ETag") or etag,
                    last_modified=response.headers.get("Last-Modified") or last_modified,
                )
            if not response.is_success:
                raise SourceError(
                    name,
                    f"HTTP {response.status_code} {response.reason_phrase} von {where}".rstrip(),
                )
            announced = _content_length(response)
            if announced is not None and announced > max_bytes:
                raise SourceError(
                    name,
                    f"Antwort von {where} kündigt {announced} Bytes an, "
                    f"mehr als die Grenze von {max_bytes} Bytes",
                )
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise SourceError(
                        name, f"Antwort von {where} überschreitet die Grenze von {max_bytes} Bytes"
                    )
            logger.debug("%s: %d bytes from %s", name, len(body), where)
            return Fetched(
                not_modified=False,
                body=bytes(body),
                etag=response.headers.get("ETag"),
                last_modified=response.headers.get("Last-Modified"),
            )
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise SourceError(
            name, f"keine vollständige Antwort von {url} innerhalb von {timeout:g} Sekunden"
        ) from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        detail = f"{type(exc).__name__}: {exc}"
        raise SourceError(
            name, f"Anfrage an {url} fehlgeschlagen: {_http_reason(exc)}", detail=detail
        ) from exc


def _http_reason(exc: Exception) -> str:
    """A German reason for an httpx failure (its own message, English, goes to the log)."""
    if isinstance(exc, httpx.TooManyRedirects):
        return "zu viele Weiterleitungen (Weiterleitungsschleife?)"
    if isinstance(exc, httpx.ConnectError):
        return "keine Verbindung zum Server (Adresse unbekannt, abgelehnt oder unerreichbar)"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "der Server hat die Verbindung abgebrochen oder unverständlich geantwortet"
    if isinstance(exc, httpx.UnsupportedProtocol):
        return "die Adresse ist keine http(s)-Adresse"
    if isinstance(exc, httpx.DecodingError):
        return "die Antwort ließ sich nicht entpacken"
    if isinstance(exc, (httpx.InvalidURL, httpx.LocalProtocolError)):
        return "die Adresse ist ungültig"
    if isinstance(exc, httpx.NetworkError):
        return "Netzwerkfehler während der Übertragung"
    return "Fehler bei der Übertragung"


_FILE_REASONS = {
    errno.ENOENT: "Datei nicht gefunden",
    errno.EACCES: "keine Berechtigung zum Lesen",
    errno.EPERM: "keine Berechtigung zum Lesen",
    errno.EISDIR: "ist ein Verzeichnis, keine Datei",
    errno.ENOTDIR: "ein Teil des Pfades ist kein Verzeichnis",
}


def _content_length(response: httpx.Response) -> int | None:
    """The announced body size, if it equals the size the caller will read (no compression)."""
    if response.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        return None
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def _read_file(
    name: str, path: Path, etag: str | None, last_modified: str | None, max_bytes: int
) -> Fetched:
    try:
        with path.open("rb") as file:
            # fstat on the open file, so the validators describe exactly the bytes read below.
            stat = os.fstat(file.fileno())
            file_modified = formatdate(stat.st_mtime, usegmt=True)
            # An HTTP date has whole seconds; the ETag (nanosecond mtime and size) also catches a
            # rewrite within the same second.
            file_etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
            validators = [(last_modified, file_modified), (etag, file_etag)]
            given = [(old, new) for old, new in validators if old is not None]
            if given and all(old == new for old, new in given):
                logger.debug("%s: %s not modified", name, path)
                return Fetched(True, b"", file_etag, file_modified)
            if stat.st_size > max_bytes:
                raise SourceError(
                    name,
                    f"Datei {path} hat {stat.st_size} Bytes, mehr als die Grenze von {max_bytes}",
                )
            body = file.read(max_bytes + 1)
    except OSError as exc:
        reason = _FILE_REASONS.get(exc.errno or 0, "Lesefehler")
        raise SourceError(name, f"Datei {path} nicht lesbar: {reason}", detail=str(exc)) from exc
    if len(body) > max_bytes:  # the file grew after fstat
        raise SourceError(name, f"Datei {path} überschreitet die Grenze von {max_bytes} Bytes")
    return Fetched(False, body, file_etag, file_modified)
