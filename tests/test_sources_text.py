"""What sources bring, told right (issue 15, items 6 and 9): relative links, Atom content,
entries without id and link, implausible dates, and source errors in one German line. A real
HTTP server on loopback, real ``notifier`` commands, a real SQLite file."""

from __future__ import annotations

import logging
import sqlite3
from datetime import UTC, datetime

import pytest

from .conftest import Project
from .httpserver import FeedServer, Route
from .test_sources_flow import PEOPLE

ATOM_RELATIVE = """<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <title>Neuigkeiten</title><id>tag:eifel.example,2026:news</id>
  <updated>2026-11-30T08:00:00Z</updated>
  <entry>
    <title>Glasfaser in Arzfeld</title>
    <id>tag:eifel.example,2026:glasfaser</id>
    <link href="/news/glasfaser-arzfeld"/>
    <updated>2026-11-30T08:00:00Z</updated>
    <summary></summary>
    <content type="html">&lt;p&gt;Der &lt;b&gt;Ausbau&lt;/b&gt; beginnt.&lt;/p&gt;</content>
  </entry>
  <entry>
    <title>Neujahrsempfang im Kreishaus</title>
    <id>tag:eifel.example,2026:empfang</id>
    <link href="https://eifel.example/news/empfang"/>
    <updated>2100-01-01T00:00:00Z</updated>
    <summary>Alle Bürgermeisterinnen und Bürgermeister sind eingeladen.</summary>
  </entry>
</feed>
""".encode()

RSS_KEYLESS = """<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>Aushang</title><link>https://eifel.example/</link>
<description>x</description>
<item><title>Wasserleitung Daleiden</title><pubDate>Mon, 30 Nov 2026 08:00:00 +0100</pubDate>
<description>Am Dienstag ist das Wasser von 8 bis 12 Uhr abgestellt.</description></item>
<item><title>Mit Schlüssel</title><guid isPermaLink="false">k-1</guid>
<description>Dieser Eintrag hat eine guid.</description></item>
</channel></rss>
""".encode()


def _db(project: Project) -> sqlite3.Connection:
    return sqlite3.connect(project.root / "var" / "test.db")


def _feeds(project: Project, **feeds: str) -> None:
    project.write_config(
        {"sources": {"feed": [{"name": name, "url": url} for name, url in feeds.items()]}}
    )
    project.seed(project.write("people.csv", PEOPLE))


def test_relative_links_resolve_and_atom_content_stands_in_for_an_empty_summary(
    project: Project, server: FeedServer
) -> None:
    server.routes["/feeds/news.atom"] = Route(body=ATOM_RELATIVE)
    _feeds(project, news=server.url("/feeds/news.atom"))

    assert project.cli("sources", "poll").output.strip() == "news: 2 neu, 0 geändert, 0 abgesagt"

    with _db(project) as db:
        rows = dict(
            (subject, (body, link))
            for subject, body, link in db.execute(
                "SELECT subject, body, link FROM items WHERE source = 'news'"
            )
        )
    body, link = rows["Glasfaser in Arzfeld"]
    assert link == server.url("/news/glasfaser-arzfeld")
    assert body == "Der Ausbau beginnt."


def test_a_date_in_2100_is_replaced_by_the_time_first_seen(
    project: Project, server: FeedServer
) -> None:
    server.routes["/news.atom"] = Route(body=ATOM_RELATIVE)
    _feeds(project, news=server.url("/news.atom"))
    before = datetime.now(UTC)

    project.cli("sources", "poll")

    with _db(project) as db:
        dates = dict(db.execute("SELECT subject, published_at FROM items WHERE source = 'news'"))
    seen = datetime.fromisoformat(dates["Neujahrsempfang im Kreishaus"]).replace(tzinfo=UTC)
    assert before.replace(microsecond=0) <= seen.replace(microsecond=0) <= datetime.now(UTC)
    assert dates["Glasfaser in Arzfeld"].startswith("2026-11-30 08:00:00")


def test_entries_without_guid_and_link_are_kept_and_reported(
    project: Project, server: FeedServer
) -> None:
    server.routes["/aushang.xml"] = Route(body=RSS_KEYLESS)
    _feeds(project, aushang=server.url("/aushang.xml"))

    polled = project.cli("sources", "poll").output.strip()
    again = project.cli("sources", "poll").output.strip()

    assert polled == "aushang: 2 neu, 0 geändert, 0 abgesagt"
    assert again == "aushang: 0 neu, 0 geändert, 0 abgesagt"  # the fallback key is stable
    listing = project.cli("sources", "list").output
    assert "aushang (feed, alle 15 min): 2 Einträge" in listing
    assert "  ohne ID und Link: 1 Eintrag, erkannt an Titel, Datum und Text" in listing


JSON_FEED = b'{"version": "https://jsonfeed.org/version/1.1", "title": "<b>x</b>", "items": []}'


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        (Route(body=b""), "fehlerhafter Feed: das Dokument ist leer"),
        (Route(body=JSON_FEED), "fehlerhafter Feed: JSON Feed wird nicht unterstützt"),
        (
            Route(body=b"<html><body><h1>Wartung</h1><p>bis 12 Uhr</p>"),
            "fehlerhafter Feed: eine HTML-Seite statt RSS oder Atom",
        ),
        (
            Route(body=b"<?xml version='1.0'?><daten><wert>kaputt</daten>"),
            "fehlerhafter Feed: kein lesbares RSS oder Atom",
        ),
        (Route(location="/kaputt-leer"), "zu viele Weiterleitungen"),
    ],
    ids=["empty", "json-feed", "html", "broken-xml", "redirect-loop"],
)
def test_source_errors_are_german_one_line_and_name_the_source_once(
    project: Project,
    server: FeedServer,
    route: Route,
    expected: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.routes["/kaputt-leer"] = route
    _feeds(project, **{"kaputt-leer": server.url("/kaputt-leer")})

    with caplog.at_level(logging.WARNING, logger="notifier.sources.poller"):
        polled = project.cli("sources", "poll", ok=False)
    listing = project.cli("sources", "list").output

    (line,) = polled.output.splitlines()
    assert line.startswith("kaputt-leer: Fehler: ") and line.count("kaputt-leer") == 1 + (
        "Weiterleitungen" in expected  # the URL of the loop names its path
    )
    assert expected in line
    (error,) = [x for x in listing.splitlines() if "letzter Fehler" in x]
    assert "kaputt-leer" not in error.replace(server.url("/kaputt-leer"), "")
    for echoed in ("Wartung", "<b>", "kaputt<", "Exceeded", "no element found", "redirects"):
        assert echoed not in line and echoed not in error
    # The technical cause is in the log, for whoever runs the service.
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert expected in logged
    if "Weiterleitungen" in expected:
        assert "TooManyRedirects" in logged
    elif "XML" in expected or "lesbares" in expected:
        assert "(" in logged.split(expected, 1)[1]  # the parser's own words follow
