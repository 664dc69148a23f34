"""`notifier doctor` (issue 16, item 6): an all-green configuration against a real SMTP server
and a real HTTP source on loopback, and one red case per kind of problem, each with exit code 1
and the German hint. Real SQLite files, the recording SMTP server, the tests' HTTP server."""

from __future__ import annotations

import copy
import re
import shutil
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import Result

from notifier.config import PACKAGED_TEMPLATES

from .conftest import REPO, Project, free_port
from .dnsserver import TxtServer
from .httpserver import FeedServer, Route
from .smtpd import RecordingSMTP

NEWS = (REPO / "examples" / "news.xml").read_bytes()


@pytest.fixture
def good(server: FeedServer) -> dict[str, Any]:
    """The configuration as it should be: a real SMTP server (the project's), an HTTPS
    address, a source that answers."""
    server.routes["/feed.xml"] = Route(body=NEWS)
    return {
        "mail": {"public_base_url": "https://newsletter.example.org"},
        "sources": {"feed": [{"name": "projekt-news", "url": server.url("/feed.xml")}]},
    }


@pytest.fixture
def doctor(project: Project, good: dict[str, Any]) -> Callable[..., Result]:
    """`notifier doctor` on a migrated project with the good configuration, with the changes
    given made to it."""
    project.write_config(good)
    project.cli("migrate")

    def run(changes: dict[str, Any] | None = None) -> Result:
        config = copy.deepcopy(good)
        for section, values in (changes or {}).items():
            config.setdefault(section, {}).update(values)
        project.write_config(config)
        return project.cli("doctor", ok=False)

    return run


def crosses(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("✗")]


def test_all_green(project: Project, doctor: Callable[..., Result]) -> None:
    result = doctor()
    assert result.exit_code == 0, result.output
    assert not crosses(result), result.output
    output = result.output
    assert f"✓ Konfiguration {project.config} geladen" in output
    assert "Schema auf dem neuesten Stand" in output
    assert f"✓ SMTP-Server 127.0.0.1:{project.smtp.port} erreichbar, EHLO beantwortet" in output
    assert "✓ E-Mail-Vorlagen: 10 erstellt" in output
    assert "✓ Seitenvorlagen:" in output
    assert "✓ Öffentliche Adresse https://newsletter.example.org verwendet HTTPS" in output
    assert f"✓ [database] url: {project.root / 'var'} beschreibbar" in output
    assert "✓ Quelle projekt-news:" in output and f"({len(NEWS)} Bytes)" in output
    assert output.rstrip().endswith("Alles in Ordnung.")
    assert project.smtp.messages() == []  # it checks, it sends nothing


def test_the_built_in_catcher_is_named(project: Project, doctor: Callable[..., Result]) -> None:
    result = doctor({"smtp": {"catcher": True}})
    assert result.exit_code == 0, result.output
    assert "✓ SMTP: eingebauter Mail-Catcher" in result.output


def test_an_unreachable_smtp_port(project: Project, doctor: Callable[..., Result]) -> None:
    port = free_port()
    result = doctor({"smtp": {"port": port}})
    assert result.exit_code == 1
    assert crosses(result) == [
        next(line for line in crosses(result) if f"SMTP-Server 127.0.0.1:{port}" in line)
    ]
    assert "nicht erreichbar" in crosses(result)[0]
    assert "→ Prüfen Sie [smtp] host und port" in result.output
    assert result.output.rstrip().endswith("1 Problem gefunden.")


def test_a_login_accepted_and_one_refused(doctor: Callable[..., Result]) -> None:
    server = RecordingSMTP(logins={"buero": "richtig"}).start()
    try:
        smtp = {"port": server.port, "user": "buero"}
        good = doctor({"smtp": {**smtp, "password": "richtig"}})
        assert good.exit_code == 0, good.output
        assert "✓ SMTP: Anmeldung als buero angenommen" in good.output
        bad = doctor({"smtp": {**smtp, "password": "falsch-geheim"}})
    finally:
        server.stop()
    assert bad.exit_code == 1
    assert "✗ SMTP: Anmeldung als buero abgelehnt (535" in bad.output, bad.output
    assert "→ Prüfen Sie [smtp] user und das Passwort (NOTIFIER_SMTP__PASSWORD)" in bad.output
    assert "falsch-geheim" not in bad.output


def test_starttls_that_the_server_does_not_offer(
    project: Project, doctor: Callable[..., Result]
) -> None:
    result = doctor({"smtp": {"tls": "starttls"}})
    assert result.exit_code == 1
    assert "✗ SMTP-Server 127.0.0.1" in result.output and "bietet kein STARTTLS an" in result.output
    assert "→ Fragen Sie den Betreiber nach Port 587" in result.output


def test_a_database_that_is_not_migrated(project: Project, doctor: Callable[..., Result]) -> None:
    with sqlite3.connect(project.root / "var" / "test.db") as db:
        db.execute("UPDATE alembic_version SET version_num = '0008'")
    result = doctor()
    assert result.exit_code == 1
    assert "✗ Datenbank-Schema: Stand 0008, diese Version braucht" in result.output
    assert "→ Führen Sie `notifier migrate` aus" in result.output
    # Doctor changes nothing.
    with sqlite3.connect(project.root / "var" / "test.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("0008",)]


def test_postgresql_before_and_after_migrate(
    project: Project, doctor: Callable[..., Result], postgres_url: str
) -> None:
    shown = postgres_url.replace("@", ":***@", 1)
    with_password = postgres_url.replace("@", ":geheim@", 1)  # (the test server trusts all)
    before = doctor({"database": {"url": with_password}})
    assert before.exit_code == 1
    assert f"✓ Datenbank {shown} erreichbar" in before.output, before.output
    assert "✗ Datenbank-Schema: noch nicht angelegt, diese Version braucht" in before.output
    assert "geheim" not in before.output
    project.cli("migrate")
    after = doctor({"database": {"url": with_password}})
    assert after.exit_code == 0, after.output
    assert f"✓ Datenbank {shown} erreichbar, Schema auf dem neuesten Stand" in after.output


def test_a_database_that_does_not_exist(project: Project, doctor: Callable[..., Result]) -> None:
    result = doctor({"database": {"url": "sqlite+aiosqlite:///var/fehlt.db"}})
    assert result.exit_code == 1
    assert f"✗ Datenbank {project.root / 'var' / 'fehlt.db'} existiert noch nicht" in result.output
    assert not (project.root / "var" / "fehlt.db").exists()


def test_broken_templates_in_the_override_folder(
    project: Project, doctor: Callable[..., Result]
) -> None:
    # The office's override folder holds its own versions of two templates, both broken.
    folder = project.root / "vorlagen"
    for part in ("email/base.html", "web/public/signup.html"):
        (folder / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PACKAGED_TEMPLATES / part, folder / part)
    base = folder / "email" / "base.html"
    base.write_text(base.read_text("utf-8").replace("</body>", "{% if %}</body>"), "utf-8")
    page = folder / "web" / "public" / "signup.html"
    broken = "{{ mail.sender_name | gibtsnicht }}{% endblock %}"
    page.write_text(page.read_text("utf-8").replace("{% endblock %}", broken, 1), "utf-8")
    result = doctor({"paths": {"templates": str(folder)}})
    assert result.exit_code == 1
    found = crosses(result)
    assert len(found) == 2, result.output
    assert found[0].startswith("✗ E-Mail-Vorlagen: Fehler (") and "base.html, Zeile" in found[0]
    assert found[1].startswith("✗ Seitenvorlagen: Fehler") and "gibtsnicht" in found[1]
    assert (
        f"→ Korrigieren Sie die Vorlage im Ordner von [paths] templates ({folder})" in result.output
    )


def test_a_public_address_over_plain_http(project: Project, doctor: Callable[..., Result]) -> None:
    result = doctor({"mail": {"public_base_url": "http://newsletter.example.org"}})
    assert result.exit_code == 1
    assert "✗ Öffentliche Adresse http://newsletter.example.org verwendet http://" in result.output
    assert "→ Setzen Sie [mail] public_base_url auf die https://-Adresse" in result.output


def test_a_data_path_that_cannot_be_written(
    project: Project, doctor: Callable[..., Result]
) -> None:
    # A file where a folder must be: refused whoever runs the test (root too). Loading the
    # configuration already checks the service's paths, so it is the first line, with the key.
    result = doctor({"smtp": {"catcher": True}, "catcher": {"directory": "config.toml/m"}})
    assert result.exit_code == 1
    first = result.output.splitlines()[0]
    assert first.startswith(f"✗ Konfiguration {project.config}: key 'catcher.directory'"), first
    assert "ist kein Verzeichnis" in first
    assert "→ Korrigieren Sie die genannte Stelle" in result.output


def test_an_unreachable_source_and_a_slow_one_do_not_hold_up_the_others(
    project: Project, doctor: Callable[..., Result], server: FeedServer
) -> None:
    server.routes["/langsam.xml"] = Route(body=NEWS, delay=30)
    closed = free_port()
    feeds = [
        {"name": "projekt-news", "url": server.url("/feed.xml")},
        {"name": "weg", "url": f"http://127.0.0.1:{closed}/feed.xml"},
        {"name": "langsam", "url": server.url("/langsam.xml"), "timeout": 1},
        {"name": "fehlt", "url": server.url("/gibtsnicht.xml")},
    ]
    started = time.monotonic()
    result = doctor({"sources": {"feed": feeds}})
    elapsed = time.monotonic() - started
    assert result.exit_code == 1
    assert "✓ Quelle projekt-news:" in result.output
    found = crosses(result)
    assert [line.split(":")[0] for line in found] == [
        "✗ Quelle weg",
        "✗ Quelle langsam",
        "✗ Quelle fehlt",
    ], result.output
    assert "innerhalb von 1 Sekunden" in found[1]
    assert "HTTP 404" in found[2]
    assert "→ Prüfen Sie die Adresse" in result.output
    assert elapsed < 10, elapsed  # the checks ran at once; the slow source waited 1 s


def test_a_configuration_that_does_not_load(project: Project) -> None:
    project.config.write_text("[mail\n", "utf-8")
    result = project.cli("doctor", ok=False)
    assert result.exit_code == 1
    assert result.output.startswith(f"✗ Konfiguration {project.config}")
    assert "invalid TOML" in result.output and "→ Korrigieren Sie" in result.output


def test_dkim_key_and_its_published_record(project: Project, doctor: Callable[..., Result]) -> None:
    off = doctor()
    assert "✓ DKIM: aus" in off.output
    dns = TxtServer()
    try:
        signing = {"enabled": True, "nameserver": dns.address}
        missing = doctor({"dkim": signing})
        assert missing.exit_code == 1
        [cross] = crosses(missing)
        assert cross.startswith("✗ DKIM:") and str(project.root / "var" / "dkim.key") in cross
        assert "→ Schlüssel anlegen mit `notifier dkim keygen`" in missing.output

        made = project.cli("dkim", "keygen")
        name = "notifier._domainkey.eifelkreis-verbindet.example"
        value = re.search(r"Wert: (v=DKIM1; k=rsa; p=\S+)", made.output)
        assert value is not None and f"Name: {name}" in made.output
        unpublished = doctor({"dkim": signing})
        assert crosses(unpublished) == [f"✗ DKIM: kein DNS-Eintrag {name} ({dns.address})"]
        assert name in dns.queries

        # Published for another key (the one before a key change, say).
        other = value.group(1)[:-12] + "AAAAAAAAAAAA"
        dns.records[name] = [other]
        stale = doctor({"dkim": signing})
        assert crosses(stale) == [
            f"✗ DKIM: der DNS-Eintrag {name} gehört zu einem anderen Schlüssel"
        ]

        dns.records[name] = [value.group(1)]
        ready = doctor({"dkim": signing})
        assert ready.exit_code == 0, ready.output
        assert f"✓ DKIM: Schlüssel nutzbar, DNS-Eintrag {name} passt dazu" in ready.output
    finally:
        dns.close()

    # A DNS server that does not answer: one line, with what to do.
    silent = doctor({"dkim": {"enabled": True, "nameserver": f"127.0.0.1:{free_port()}"}})
    [cross] = crosses(silent)
    assert cross.startswith(f"✗ DKIM: DNS-Eintrag {name} nicht abfragbar")
    assert "[dkim] nameserver" in silent.output
