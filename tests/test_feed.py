"""Feed sources: parsing RSS and Atom, and fetching over real HTTP on loopback and from files."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import pytest

from notifier.errors import SourceError
from notifier.sources.feed import FALLBACK_PREFIX, parse_feed
from notifier.sources.http import Fetched, fetch

from .httpserver import FeedServer, Route

FEEDS = Path(__file__).resolve().parent / "feeds"
RSS = (FEEDS / "rss.xml").read_bytes()
ATOM = (FEEDS / "atom.xml").read_bytes()
MB = 1024 * 1024


@pytest.fixture
async def client(server: FeedServer) -> AsyncIterator[httpx.AsyncClient]:
    """A client closed before the server stops; it ignores proxy settings of the environment."""
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


async def get(client: httpx.AsyncClient, url: str, **changes: Any) -> Fetched:
    options: dict[str, Any] = {
        "etag": None,
        "last_modified": None,
        "timeout": 5.0,
        "max_bytes": MB,
    }
    options.update(changes)
    return await fetch(client, "projektbuero", url, **options)


# --- parsing ----------------------------------------------------------------------------------


def test_rss_entries_are_plain_and_keyed_by_guid_else_link() -> None:
    entries = parse_feed("news", RSS)

    # The third item has neither guid nor link: its key is made of title, date and text.
    assert [e.key for e in entries if not e.key.startswith(FALLBACK_PREFIX)] == [
        "evk-2025-017",
        "https://www.eifelkreis-verbindet.de/news/sprechstunde",
        "evk-2025-020",
    ]
    first, second, keyless, third = entries
    assert keyless.title == "Ohne Schlüssel" and keyless.link is None
    assert first.title == "Digitale Dorfplätze: Start in Prüm"
    assert first.summary == (
        "Die ersten Dorfplätze & Treffpunkte gehen online.\n\nMehr dazu im Juni."
    )
    assert "alert" not in first.summary
    assert first.link == "https://www.eifelkreis-verbindet.de/news/dorfplaetze"
    assert first.published == datetime(2025, 3, 4, 8, 30, tzinfo=UTC)
    assert first.categories == ("Digitale Verwaltung", "Mobilität")
    assert second.published == datetime(2025, 3, 10, 14, 0, tzinfo=UTC)
    assert second.link == second.key
    assert second.categories == ()
    assert third.link is None  # ftp: is no link for an e-mail
    assert third.published is None
    for entry in entries:
        assert "\n" not in entry.title and "\r" not in entry.title
        assert len(entry.content_hash) == 64


def test_atom_entries_with_html_title_content_and_offsets() -> None:
    workshop, budget = parse_feed("termine", ATOM)

    assert workshop.key == "tag:eifelkreis-verbindet.de,2025:workshop-open-data"
    assert workshop.title == "Workshop Open Data & KI"
    assert workshop.summary == "Wann: 20. März\n\nWo: Bitburg"  # &nbsp; is a plain space
    assert workshop.link == "https://www.eifelkreis-verbindet.de/termine/open-data"
    # published wins over updated; +01:00 becomes UTC
    assert workshop.published == datetime(2025, 3, 5, 9, 15, tzinfo=UTC)
    assert workshop.published.utcoffset() is not None
    assert workshop.categories == ("open-data", "bildung")

    # A plain-text title keeps its '<'; the summary falls back to the content.
    assert budget.title == "Budget < 10 000 € für Ortsgemeinden"
    assert budget.summary == "Inhalt ohne Zusammenfassung."
    assert budget.link is None
    assert budget.published == datetime(2025, 3, 8, 1, 30, tzinfo=UTC)  # from updated, -02:00


def test_content_hash_follows_title_summary_and_link() -> None:
    before = parse_feed("news", RSS)[1]
    again = parse_feed("news", RSS)[1]
    after = parse_feed("news", RSS.replace(b"Kommen Sie vorbei.", b"Kommen Sie am Montag."))[1]

    assert again.content_hash == before.content_hash
    assert after.key == before.key
    assert after.content_hash != before.content_hash


def test_long_summary_is_shortened_and_control_characters_go() -> None:
    words = " ".join(["Breitband"] * 400)
    feed = (
        '<rss version="2.0"><channel><title>t</title><item>'
        "<title>Zeile&#13;eins&#10;Zeile zwei\tEnde</title>"
        f"<link>https://example.org/a</link><description>{words}</description>"
        "</item></channel></rss>"
    ).encode()

    (entry,) = parse_feed("news", feed)

    assert entry.title == "Zeile eins Zeile zwei Ende"
    assert len(entry.summary) <= 1000
    assert entry.summary.endswith("Breitband…")


def test_well_formed_feed_without_entries_gives_no_entries() -> None:
    empty = b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title></channel></rss>'

    assert parse_feed("news", empty) == []


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\xff\xfe garbage \x89PNG",
        b"",
        b"<html><body><p>Wartungsarbeiten</p></body></html>",
        b'{"items": []}',
    ],
    ids=["binary", "empty", "html-page", "json"],
)
def test_garbage_is_a_malformed_feed(data: bytes) -> None:
    with pytest.raises(SourceError, match="fehlerhafter Feed") as caught:
        parse_feed("news", data)

    assert caught.value.source == "news"
    assert str(caught.value).startswith("news: fehlerhafter Feed")


def test_a_body_that_names_a_file_is_not_opened() -> None:
    # feedparser opens a bytes argument as a path if it can; a server answering with a local
    # path must not make us parse that file.
    with pytest.raises(SourceError, match="fehlerhafter Feed"):
        parse_feed("news", str(FEEDS / "rss.xml").encode())


def test_relative_links_resolve_against_the_feed_url() -> None:
    feed = (
        b'<rss version="2.0"><channel><title>t</title><link>/</link>'
        b"<item><title>Relativ</title><link>/news/relativ</link><guid>r-1</guid></item>"
        b"<item><title>Nachbar</title><link>nachbar.html</link><guid>r-2</guid></item>"
        b"</channel></rss>"
    )

    relative, neighbour = parse_feed("news", feed, "https://eifel.example/feeds/news.xml")

    assert relative.link == "https://eifel.example/news/relativ"
    assert neighbour.link == "https://eifel.example/feeds/nachbar.html"
    assert [e.link for e in parse_feed("news", feed)] == [None, None]  # no base, no link


def test_atom_content_stands_in_for_an_empty_summary() -> None:
    feed = (
        b'<feed xmlns="http://www.w3.org/2005/Atom"><title>t</title><id>f</id>'
        b"<updated>2026-11-30T08:00:00Z</updated><entry><title>A</title><id>a</id>"
        b"<updated>2026-11-30T08:00:00Z</updated><summary></summary>"
        b'<content type="html">&lt;p&gt;Der &lt;b&gt;Ausbau&lt;/b&gt; beginnt.&lt;/p&gt;'
        b"&lt;script&gt;alert(1)&lt;/script&gt;</content></entry></feed>"
    )

    (entry,) = parse_feed("news", feed)

    assert entry.summary == "Der Ausbau beginnt."


def test_entries_without_guid_and_link_get_a_stable_key_from_title_date_and_text() -> None:
    def feed(text: str) -> bytes:
        return (
            '<rss version="2.0"><channel><title>t</title>'
            "<item><title>Aushang</title><pubDate>Mon, 30 Nov 2026 08:00:00 +0100</pubDate>"
            f"<description>{text}</description></item>"
            "<item><title>Aushang</title><description>ohne Datum</description></item>"
            "<item><description></description></item>"
            "</channel></rss>"
        ).encode()

    dated, undated = parse_feed("news", feed("Wasser abgestellt"))
    (again, _) = parse_feed("news", feed("Wasser abgestellt"))
    (changed, _) = parse_feed("news", feed("Wasser wieder da"))

    assert dated.key.startswith(FALLBACK_PREFIX) and undated.key.startswith(FALLBACK_PREFIX)
    assert dated.key == again.key != undated.key
    assert changed.key != dated.key


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (
            b'{"version": "https://jsonfeed.org/version/1.1", "title": "x", "items": []}',
            "fehlerhafter Feed: JSON Feed wird nicht unterstützt (erwartet ist RSS oder Atom)",
        ),
        (
            b"<html><body><p>Wartung</p></body></html>",
            "fehlerhafter Feed: eine HTML-Seite statt RSS oder Atom",
        ),
        (
            b"<?xml version='1.0'?><daten><wert>abc</daten>",
            "fehlerhafter Feed: kein lesbares RSS oder Atom",
        ),
    ],
    ids=["json-feed", "html", "broken-xml"],
)
def test_feed_errors_are_german_and_echo_nothing(data: bytes, problem: str) -> None:
    with pytest.raises(SourceError) as caught:
        parse_feed("news", data)
    assert caught.value.problem == problem


# --- fetching over HTTP -----------------------------------------------------------------------


async def test_conditional_requests_get_304_until_the_feed_changes(
    server: FeedServer, client: httpx.AsyncClient
) -> None:
    stamp = "Wed, 05 Mar 2025 09:00:00 GMT"
    server.routes["/feed.xml"] = Route(body=RSS, etag='"v1"', last_modified=stamp)
    url = server.url("/feed.xml")

    first = await get(client, url)
    assert first == Fetched(not_modified=False, body=RSS, etag='"v1"', last_modified=stamp)
    assert len(parse_feed("projektbuero", first.body)) == 4
    assert "if-none-match" not in server.seen[0].headers
    assert server.seen[0].headers["user-agent"].startswith("notifier/")

    second = await get(client, url, etag=first.etag, last_modified=first.last_modified)
    assert second.not_modified
    assert second.body == b""
    assert (second.etag, second.last_modified) == ('"v1"', stamp)
    assert server.seen[1].headers["if-none-match"] == '"v1"'
    assert server.seen[1].headers["if-modified-since"] == stamp

    server.routes["/feed.xml"] = Route(body=ATOM, etag='"v2"')
    third = await get(client, url, etag=second.etag, last_modified=second.last_modified)
    assert not third.not_modified
    assert third.body == ATOM
    assert third.etag == '"v2"'
    assert third.last_modified is None


async def test_redirects_are_followed(server: FeedServer, client: httpx.AsyncClient) -> None:
    server.routes["/alt/feed"] = Route(location="/neu/feed.xml")
    server.routes["/neu/feed.xml"] = Route(body=ATOM)

    fetched = await get(client, server.url("/alt/feed"))

    assert fetched.body == ATOM
    assert [s.path for s in server.seen] == ["/alt/feed", "/neu/feed.xml"]


async def test_http_error_names_source_status_and_url(
    server: FeedServer, client: httpx.AsyncClient
) -> None:
    server.routes["/feed.xml"] = Route(status=500, body=b"kaputt")
    url = server.url("/feed.xml")

    with pytest.raises(SourceError) as caught:
        await get(client, url)

    assert caught.value.source == "projektbuero"
    assert "HTTP 500" in caught.value.problem
    assert url in caught.value.problem


async def test_refused_connection_is_a_source_error(client: httpx.AsyncClient) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago and has no listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with pytest.raises(SourceError, match=f"127.0.0.1:{port}") as caught:
        await get(client, f"http://127.0.0.1:{port}/feed.xml")

    assert isinstance(caught.value.__cause__, httpx.ConnectError)


@pytest.mark.parametrize(
    "route",
    [Route(body=RSS, delay=5.0), Route(body=RSS[:200], trickle=0.1)],
    ids=["slow-headers", "trickling-body"],
)
async def test_timeout_covers_the_whole_request(
    server: FeedServer, client: httpx.AsyncClient, route: Route
) -> None:
    server.routes["/feed.xml"] = route
    started = time.monotonic()

    with pytest.raises(SourceError, match=r"innerhalb von 0\.5 Sekunden") as caught:
        await get(client, server.url("/feed.xml"), timeout=0.5)

    assert time.monotonic() - started < 2.0
    assert caught.value.source == "projektbuero"


@pytest.mark.parametrize("announce_length", [True, False], ids=["announced", "unannounced"])
async def test_oversized_body_is_refused_without_reading_it(
    server: FeedServer, client: httpx.AsyncClient, announce_length: bool
) -> None:
    total = 50 * MB
    server.routes["/huge.xml"] = Route(stream=total, announce_length=announce_length)
    started = time.monotonic()

    with pytest.raises(SourceError, match=f"Grenze von {MB} Bytes") as caught:
        await get(client, server.url("/huge.xml"), max_bytes=MB)

    assert time.monotonic() - started < 5.0
    assert caught.value.source == "projektbuero"
    # The server notices the closed connection and stops long before the end.
    assert server.stream_finished.wait(5.0)
    assert server.streamed < total // 2


async def test_unsupported_source_is_refused(client: httpx.AsyncClient) -> None:
    for url in ("ftp://example.org/feed.xml", "feeds/relative.xml"):
        with pytest.raises(SourceError, match="wird nicht unterstützt"):
            await get(client, url)


# --- fetching local files ---------------------------------------------------------------------


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "file-url"])
async def test_local_file_is_unchanged_while_its_mtime_is(
    tmp_path: Path, client: httpx.AsyncClient, as_url: bool
) -> None:
    path = tmp_path / "Neuigkeiten Kreis.xml"  # a space, to exercise file-URL quoting
    path.write_bytes(RSS)
    os.utime(path, (1_741_166_400, 1_741_166_400))  # 2025-03-05 09:20:00 UTC
    url = path.as_uri() if as_url else str(path)

    first = await get(client, url)
    assert first.body == RSS
    assert first.last_modified == formatdate(1_741_166_400, usegmt=True)
    assert first.last_modified == "Wed, 05 Mar 2025 09:20:00 GMT"

    second = await get(client, url, last_modified=first.last_modified)
    assert second == Fetched(True, b"", first.etag, first.last_modified)

    path.write_bytes(ATOM)
    os.utime(path, (1_741_170_000, 1_741_170_000))
    third = await get(client, url, last_modified=second.last_modified, etag=second.etag)
    assert not third.not_modified
    assert third.body == ATOM
    assert third.last_modified == "Wed, 05 Mar 2025 10:20:00 GMT"


async def test_local_file_rewritten_within_the_same_second_is_noticed_by_etag(
    tmp_path: Path, client: httpx.AsyncClient
) -> None:
    path = tmp_path / "feed.xml"
    path.write_bytes(RSS)
    os.utime(path, ns=(1_741_166_400_100_000_000, 1_741_166_400_100_000_000))
    first = await get(client, str(path))

    path.write_bytes(ATOM)
    os.utime(path, ns=(1_741_166_400_900_000_000, 1_741_166_400_900_000_000))
    second = await get(client, str(path), etag=first.etag, last_modified=first.last_modified)

    assert second.last_modified == first.last_modified  # an HTTP date cannot tell them apart
    assert not second.not_modified
    assert second.body == ATOM


async def test_local_file_errors(tmp_path: Path, client: httpx.AsyncClient) -> None:
    big = tmp_path / "big.xml"
    big.write_bytes(b"x" * 2048)

    with pytest.raises(SourceError, match="mehr als die Grenze von 1024"):
        await get(client, str(big), max_bytes=1024)
    with pytest.raises(SourceError, match="nicht lesbar") as caught:
        await get(client, str(tmp_path / "missing.xml"))
    assert isinstance(caught.value.__cause__, FileNotFoundError)


def test_a_process_without_sources_does_without_their_libraries() -> None:
    """The web application, the scheduler and the command line import the source parsers only
    where a source is polled: httpx, feedparser and icalendar are about 10 MB a process, and
    the delivery benchmark's memory floor (200 MB for the service) has no room for them. The
    catcher's aiosmtpd likewise loads only where the catcher runs."""
    code = (
        "import sys\n"
        "import notifier.cli, notifier.scheduling, notifier.service, notifier.web.app\n"
        "import notifier.web.office, notifier.sources.held\n"
        "print(','.join(m for m in ('httpx', 'feedparser', 'icalendar', 'aiosmtpd')"
        " if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == ""
