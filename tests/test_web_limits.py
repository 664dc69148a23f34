"""Request body limits against a real ``notifier run``: a body over its route class's limit is
refused with 413 while it is read — before the CSRF and login checks, before any parsing, and
without the server's memory or disk taking the body."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from .conftest import Project, Web

LIMITS = {"web": {"max_form_bytes": 20_000, "max_upload_bytes": 50_000, "max_json_bytes": 30_000}}


def _address(site: Web) -> tuple[str, int]:
    parts = urlsplit(site.base)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def _rss_kb(pid: int) -> int:
    found = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    assert found is not None
    return int(found.group(1))


def _raw(site: Web, head: str, body: Callable[[socket.socket], None]) -> tuple[str, float]:
    """Send a request whose body ``body`` writes (in a thread, as fast as the server reads);
    return the answer's head and how long it took to come."""
    sock = socket.create_connection(_address(site), timeout=30)
    started = time.monotonic()
    sock.sendall(head.encode())

    def write() -> None:
        # OSError: the server answered and closed, the rest is never read.
        with contextlib.suppress(OSError):
            body(sock)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    took = time.monotonic() - started
    while True:  # the rest of the answer (the German page), until the server closes
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        answer += chunk
    sock.close()
    writer.join(5)
    return answer.decode("utf-8", "replace"), took


def test_a_declared_length_over_the_limit_is_refused_before_a_byte_is_read(
    web: Callable[..., Web], project: Project
) -> None:
    site = web(LIMITS)
    host, port = _address(site)
    head = (
        f"POST /anmelden HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n"
        f"Content-Length: {2**30}\r\n\r\n"
    )
    # The 1 GiB is announced but never sent: the answer must not wait for it.
    answer, took = _raw(site, head, lambda sock: None)
    assert answer.startswith("HTTP/1.1 413"), answer[:300]
    assert took < 5
    assert "Das Formular ist zu groß (höchstens 20 kB)." in answer
    assert "<html" in answer and 'lang="de"' in answer
    # Nothing was spooled to disk: no multipart temporary file of the server holds data.
    assert site.client.get("/healthz").status_code == 200


def test_a_chunked_json_flood_is_cut_off_before_authentication(
    web: Callable[..., Web], project: Project
) -> None:
    site = web(LIMITS)
    host, port = _address(site)
    before = _rss_kb(site.running.proc.pid)
    head = (
        f"POST /api/v1/announcements HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"[" + b'"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",' * 950

    def flood(sock: socket.socket) -> None:
        for _ in range(3000):  # some 200 MB, without a token
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        sock.sendall(b"0\r\n\r\n")

    answer, _ = _raw(site, head, flood)
    status = answer.split("\r\n", 1)[0]
    # 413, not 401: the body limit comes before the token check.
    assert status == "HTTP/1.1 413 Request Entity Too Large", answer[:300]
    body = answer.split("\r\n\r\n", 1)[1]
    assert json.loads(body[body.index("{") : body.rindex("}") + 1]) == {
        "detail": "Der Inhalt ist zu groß (höchstens 30 kB)."
    }
    assert _rss_kb(site.running.proc.pid) - before < 50_000
    assert site.client.get("/healthz").status_code == 200


def test_each_route_class_has_its_own_limit(web: Callable[..., Web], project: Project) -> None:
    site = web(LIMITS)
    token = site.csrf("/anmelden")
    # A form within the form limit reaches the form handling (a German validation answer) …
    small = site.client.post(
        "/anmelden", data={"csrf_token": token, "email": "kein", "name": "x" * 10_000}
    )
    assert small.status_code in (200, 422), small.text[:300]
    # … the same form past it does not, whatever the CSRF token says.
    large = site.client.post("/anmelden", data={"csrf_token": "falsch", "name": "x" * 30_000})
    assert large.status_code == 413 and "Das Formular ist zu groß" in large.text
    # The office's CSV upload has the larger upload limit: 40 kB is past the form limit but
    # reaches the import (which asks for a login first) …
    csv = "email,name\n" + "a@b.example,A\n" * 3000
    upload = site.client.post(
        "/buero/abonnenten/import", files={"file": ("leute.csv", csv.encode())}
    )
    assert upload.status_code != 413
    # … and 60 kB does not.
    csv = "email,name\n" + "a@b.example,A\n" * 5000
    upload = site.client.post(
        "/buero/abonnenten/import", files={"file": ("leute.csv", csv.encode())}
    )
    assert upload.status_code == 413 and "Die Datei ist zu groß (höchstens 50 kB)." in upload.text
    # The API's JSON limit, with a declared length: a JSON error, before the token check.
    api = site.client.post("/api/v1/announcements", content=b"{" + b" " * 40_000 + b"}")
    assert api.status_code == 413
    assert api.json() == {"detail": "Der Inhalt ist zu groß (höchstens 30 kB)."}
    assert site.client.post("/api/v1/announcements", json={}).status_code == 401
