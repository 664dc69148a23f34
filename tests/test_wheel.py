"""The wheel works outside the checkout (issue 16, item 1): built from this tree, installed into
a fresh virtual environment in a temporary folder, configured by a file in another folder, and
run from a third folder as an administrator would: migrate, load the packaged organisation tree,
import, announce, and a real ``notifier run`` that delivers to a test SMTP server and serves its
pages.

Installing the dependencies needs the package index (pip's cache makes it quick). Without any
network the test is skipped; ``NOTIFIER_REQUIRE_WHEEL=1`` (set by .ci/run) makes that a failure.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

import httpx
import pytest
import tomli_w

from .conftest import REPO, Running, free_port
from .smtpd import RecordingSMTP

# Building, and installing the dependencies: from pip's cache in well under a minute, from
# the index in a few minutes on a slow line.
pytestmark = pytest.mark.timeout(900)

PEOPLE = "email,name,role,organisation,topics,rhythm\n" + "".join(
    f"person{i}@vg-pruem.example,Person {i},mayor,Verbandsgemeinde Prüm,,immediate\n"
    for i in range(3)
)
NOTE = '+++\nsubject = "Aus dem Paket"\nsend_at = "now"\n+++\nDer Dienst läuft installiert.\n'


def _network() -> bool:
    """Whether the package index can be reached at all."""
    try:
        with socket.create_connection(("pypi.org", 443), timeout=5):
            return True
    except OSError:
        return False


def _unavailable(reason: str) -> None:
    if os.environ.get("NOTIFIER_REQUIRE_WHEEL") == "1":
        pytest.fail(f"{reason} (NOTIFIER_REQUIRE_WHEEL=1)")
    pytest.skip(reason)


def _run(args: list[str | Path], cwd: Path, timeout: float = 600) -> str:
    """Run a command outside the checkout, without the caller's NOTIFIER_ and Python variables;
    returns its output, fails the test with it on a non-zero exit."""
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(map(str, args))}: exit {result.returncode}\n{output}"
    return output


def _clean_env() -> dict[str, str]:
    drop = ("NOTIFIER_", "PYTHON", "VIRTUAL_ENV")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    work = tmp_path_factory.mktemp("build")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out), str(REPO)],
        cwd=work,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        if not _network():
            _unavailable("no network: pip cannot fetch the build backend")
        pytest.fail(f"pip wheel failed:\n{result.stdout}{result.stderr}")
    (built,) = out.glob("notifier-*.whl")
    return built


def test_the_wheel_carries_templates_static_files_and_legal_texts(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())

    packaged = REPO / "notifier"
    for folder in ("templates", "legal", "data"):
        for file in (packaged / folder).rglob("*"):
            if file.is_file():
                assert file.relative_to(REPO).as_posix() in names, file
    assert "notifier/templates/email/base.html" in names
    assert "notifier/templates/web/static/site.css" in names
    assert "notifier/legal/datenschutz.md" in names
    assert "notifier/legal/barrierefreiheit.md" in names
    assert "notifier/data/organisations.csv" in names
    assert "notifier/db/migrations/env.py" in names
    assert "notifier/py.typed" in names
    assert not any(n.startswith(("tests/", "bench/", "subscribers/")) for n in names)


def test_the_installed_wheel_runs_outside_the_checkout(tmp_path: Path, wheel: Path) -> None:
    env_dir, etc, data, home = (tmp_path / n for n in ("venv", "etc", "lib", "home"))
    for folder in (etc, data, home):
        folder.mkdir()
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python, notifier = env_dir / "bin" / "python", env_dir / "bin" / "notifier"
    install = subprocess.run(
        [python, "-m", "pip", "install", "--disable-pip-version-check", wheel],
        cwd=home,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if install.returncode != 0:
        if not _network():
            _unavailable("no network: pip cannot install the dependencies")
        pytest.fail(f"pip install failed:\n{install.stdout}{install.stderr}")

    where = _run([python, "-c", "import notifier; print(notifier.__file__)"], cwd=home)
    assert Path(where.strip()).is_relative_to(env_dir), where
    assert not Path(where.strip()).is_relative_to(REPO)

    smtp = RecordingSMTP().start()
    try:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        config = etc / "config.toml"
        # The keys an installation sets; the rest (templates, legal texts, the database file
        # in the data directory, the secret key) are the defaults.
        config.write_text(
            tomli_w.dumps(
                {
                    "smtp": {
                        "catcher": False,
                        "host": "127.0.0.1",
                        "port": smtp.port,
                        "tls": "none",
                    },
                    "mail": {
                        "sender_name": "EIFELKREIS VERBINDET",
                        "sender_address": "newsletter@eifelkreis-verbindet.example",
                        "list_id": "newsletter.eifelkreis-verbindet.example",
                        "imprint_text": "Kreisverwaltung Eifelkreis Bitburg-Prüm",
                        "imprint_url": "https://www.eifelkreis-verbindet.de/impressum/",
                        "public_base_url": base,
                    },
                    "paths": {"data": str(data)},
                    "web": {"port": port},
                    "scheduler": {"poll_seconds": 0.2},
                    "topics": [{"key": "strategie", "title": "Digitale Strategie"}],
                }
            ),
            "utf-8",
        )
        people, note = home / "personen.csv", home / "mitteilung.md"
        people.write_text(PEOPLE, "utf-8")
        note.write_text(NOTE, "utf-8")
        cli = [notifier, "--config", config]

        _run([*cli, "migrate"], cwd=home)
        loaded = _run([*cli, "organisations", "load"], cwd=home)
        assert "239 neu" in loaded, loaded
        imported = _run([*cli, "subscribers", "import", people], cwd=home)
        assert "3 neu" in imported, imported
        _run([*cli, "announce", note], cwd=home)

        assert (data / "notifier.db").is_file()
        process = subprocess.Popen(
            [str(a) for a in (*cli, "run")],
            cwd=home,
            env=_clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        running = Running(process)
        try:
            running.wait_for_line("Beenden mit Strg+C", timeout=60)
            deadline = time.monotonic() + 60
            while len(smtp.received) < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert sorted(smtp.recipients()) == [f"person{i}@vg-pruem.example" for i in range(3)]
            message = smtp.received[0].message
            assert message["Subject"] == "Aus dem Paket"
            html = message.get_body(("html",))
            assert html is not None
            assert "Der Dienst läuft installiert." in html.get_content()
            assert f"{base}/datenschutz" in html.get_content()

            with httpx.Client(base_url=base, timeout=15) as client:
                signup = client.get("/anmelden")
                assert signup.status_code == 200, running.output[-3000:]
                assert "Digitale Strategie" in signup.text
                assert 'href="/static/site.css"' in signup.text
                css = client.get("/static/site.css")
                assert css.status_code == 200
                assert css.text == (REPO / "notifier/templates/web/static/site.css").read_text()
                privacy = client.get("/datenschutz")
                assert privacy.status_code == 200
                assert "Datenschutz" in privacy.text
            assert (data / "secret.key").is_file()
        finally:
            code = running.stop()
        assert code == 0, running.output
        assert "Traceback" not in running.output, running.output
    finally:
        smtp.stop()
