"""``[mail] max_message_bytes``: an announcement whose message, rendered as the sender builds it,
would be larger is refused when it is scheduled (command line, office console, API), with the
size in German, and nothing is stored."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing

import httpx
import pytest

from notifier.errors import MessageTooLargeError
from notifier.message_size import check_message_size

from .conftest import Project, Web

PARAGRAPH = (
    "Die **Digitalen Kümmerer** beraten in Prüm, Bitburg und Speicher zu "
    "[digitalen Diensten](https://www.eifelkreis-verbindet.de/kuemmerer/). "
)
USER, PASSWORD = "buero", "ein-langes-passwort"


def _markdown(size: int) -> str:
    paragraphs = "\n\n".join([PARAGRAPH * 4] * (size // (len(PARAGRAPH) * 4) + 1))
    return paragraphs[:size].rstrip()


def _count(project: Project, sql: str) -> int:
    with closing(sqlite3.connect(project.root / "var" / "test.db")) as db:
        count: int = db.execute(sql).fetchone()[0]
    return count


def test_limit_and_message() -> None:
    check_message_size(10_000_000, 10_000_000)
    with pytest.raises(MessageTooLargeError) as too_large:
        check_message_size(10_000_001, 10_000_000)
    assert (too_large.value.size, too_large.value.limit) == (10_000_001, 10_000_000)
    assert str(too_large.value) == "Die Nachricht ist mit 10,1 MB zu groß (höchstens 10 MB)."
    with pytest.raises(MessageTooLargeError, match=r"mit 12,3 MB zu groß \(höchstens 10 MB\)"):
        check_message_size(12_300_000, 10_000_000)
    with pytest.raises(MessageTooLargeError, match=r"mit 181 kB zu groß \(höchstens 100 kB\)"):
        check_message_size(180_020, 100_000)


def test_announce_refuses_a_message_over_the_limit(project: Project) -> None:
    project.write_config({"mail": {"max_message_bytes": 1_000_000}})
    project.seed()
    body = _markdown(5_200_000)
    assert len(body.encode()) > 5_000_000
    large = project.write("gross.md", f'+++\nsubject = "Alles"\nsend_at = "now"\n+++\n{body}\n')

    for args in ([large], [large, "--dry-run"]):
        result = project.cli("announce", *args, ok=False)

        assert result.exit_code == 1, result.output
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        found = re.fullmatch(
            r"Fehler: Die Nachricht ist mit (\d+),?\d? MB zu groß \(höchstens 1 MB\)\.", lines[0]
        )
        assert found is not None, lines[0]
        assert int(found.group(1)) >= 5
        assert result.stdout == ""
    assert _count(project, "SELECT count(*) FROM items") == 0

    normal = project.write(
        "normal.md", f'+++\nsubject = "Kurz"\nsend_at = "now"\n+++\n{PARAGRAPH}\n'
    )
    scheduled = project.cli("announce", normal)
    assert "Geplant als Mitteilung Nr. 1." in scheduled.stdout
    assert _count(project, "SELECT count(*) FROM items") == 1


@pytest.fixture
def api_client() -> Iterator[Callable[[Web, str], httpx.Client]]:
    made: list[httpx.Client] = []

    def make(site: Web, token: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"}
        made.append(httpx.Client(base_url=site.url("/api/v1"), headers=headers, timeout=30))
        return made[-1]

    yield make
    for client in made:
        client.close()


def test_office_and_api_refuse_a_message_over_the_limit(
    web: Callable[..., Web],
    project: Project,
    api_client: Callable[[Web, str], httpx.Client],
) -> None:
    # The forms and the API take at most 100,000 characters of text; a smaller limit than the
    # default shows that the rendered message, not the text, is measured.
    site = web({"mail": {"max_message_bytes": 100_000}})
    project.cli("users", "add", USER, "--password", PASSWORD)
    token = site.csrf("/buero/anmelden")
    site.client.post(
        "/buero/anmelden", data={"name": USER, "password": PASSWORD, "csrf_token": token}
    )
    body = _markdown(60_000)
    form = "/buero/mitteilungen/neu"
    refusal = re.compile(r"Die Nachricht ist mit (\d+) kB zu groß \(höchstens 100 kB\)\.")

    def post(path: str, text: str) -> httpx.Response:
        csrf = site.csrf(path)
        data = {"subject": "Alles", "body": text, "action": "planen", "csrf_token": csrf}
        return site.client.post(path, data=data)

    refused = post(form, body)
    assert refused.status_code == 422, refused.text
    found = refusal.search(refused.text)
    assert found is not None and int(found.group(1)) > 100, refused.text
    assert _count(project, "SELECT count(*) FROM items") == 0

    accepted = post(form, PARAGRAPH)
    assert accepted.status_code == 303, accepted.text
    detail = accepted.headers["location"].split("?")[0]
    # Editing it into a message over the limit is refused too; the stored text stays.
    edited = post(f"{detail}/bearbeiten", body)
    assert edited.status_code == 422 and refusal.search(edited.text), edited.text
    with closing(sqlite3.connect(project.root / "var" / "test.db")) as db:
        assert db.execute("SELECT body FROM items").fetchall() == [(PARAGRAPH.strip(),)]

    api = api_client(site, project.cli("tokens", "add", "cms").stdout.splitlines()[0])
    answer = api.post("/announcements", json={"subject": "Alles", "body": body})
    assert answer.status_code == 422, answer.text
    problems = {e["loc"][-1]: e["msg"] for e in answer.json()["detail"]}
    assert list(problems) == ["body"] and refusal.fullmatch(problems["body"]), problems
    assert _count(project, "SELECT count(*) FROM items") == 1
    assert api.post("/announcements", json={"subject": "Kurz", "body": PARAGRAPH}).is_success
    assert _count(project, "SELECT count(*) FROM items") == 2
