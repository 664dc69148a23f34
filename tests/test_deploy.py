"""deploy/ (issue 16, item 2): the systemd units pass ``systemd-analyze verify`` without a single
warning and carry the hardening the README promises; the nginx example runs in front of a real
``notifier run`` over HTTPS and passes on the visitor's address, which the application records.

``systemd-analyze`` needs no running systemd: it checks the files against a root folder made
here (the system's own units, the units of deploy/ and a stand-in for the installed
``notifier`` command, whose absence it would report). Without ``systemd-analyze`` (Debian's
package ``systemd``) the checks are skipped; ``NOTIFIER_REQUIRE_SYSTEMD=1`` (set by .ci/run)
makes that a failure; likewise nginx and openssl with ``NOTIFIER_REQUIRE_NGINX=1``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from .conftest import REPO, Project, Web, free_port
from .test_web_public import SIGNUP, _db

DEPLOY = REPO / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
TIMERS = sorted((DEPLOY / "systemd").glob("*.timer"))
# The system's units (sysinit.target, network-online.target …) that the deploy units refer to.
SYSTEM_UNITS = next(
    (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
    None,
)
HARDENING = {
    "ProtectSystem": "strict",
    "StateDirectory": "notifier",
    "NoNewPrivileges": "yes",
    "PrivateTmp": "yes",
    "ProtectHome": "yes",
    "PrivateDevices": "yes",
    "User": "notifier",
    "CapabilityBoundingSet": "",
    "StandardError": "journal",
}


def _analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None or SYSTEM_UNITS is None:
        reason = "systemd-analyze is not installed (Debian: apt-get install systemd)"
        if os.environ.get("NOTIFIER_REQUIRE_SYSTEMD") == "1":
            pytest.fail(f"{reason} (NOTIFIER_REQUIRE_SYSTEMD=1)")
        pytest.skip(reason)
    return found


def _settings(unit: Path) -> dict[str, list[str]]:
    """Each key of a unit file with its values in order (a key may appear more than once)."""
    values: dict[str, list[str]] = {}
    for line in unit.read_text("utf-8").splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A filesystem root holding the system's units, deploy/'s and the installed command."""
    _analyze()
    assert SYSTEM_UNITS is not None
    base = tmp_path_factory.mktemp("root")
    shutil.copytree(SYSTEM_UNITS, base / "usr/lib/systemd/system", symlinks=True)
    (base / "etc/systemd/system").mkdir(parents=True)
    for unit in [*UNITS, *TIMERS]:
        shutil.copy(unit, base / "etc/systemd/system" / unit.name)
    for unit in UNITS:
        values = _settings(unit)
        for command in values["ExecStart"] + values.get("ExecStartPost", []):
            program = base / command.split()[0].lstrip("/")
            program.parent.mkdir(parents=True, exist_ok=True)
            program.write_text("#!/bin/sh\n", "utf-8")
            program.chmod(0o755)
    return base


def test_the_units_the_readme_describes_are_there() -> None:
    names = {unit.name for unit in [*UNITS, *TIMERS]}

    assert names == {
        "notifier.service",
        "notifier-sender@.service",
        "notifier-scheduler.service",
        "notifier-web.service",
        "notifier-backup.service",
        "notifier-backup.timer",
    }
    readme = (REPO / "README.md").read_text("utf-8")
    for name in names:
        assert f"deploy/systemd/{name}" in readme, name


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_each_unit_is_hardened_and_logs_to_the_journal(unit: Path) -> None:
    values = _settings(unit)

    for key, wanted in HARDENING.items():
        assert values.get(key) == [wanted], f"{unit.name}: {key}={values.get(key)}"
    # The data directory is writable, nothing else but the backup unit's folder.
    (writable,) = values["ReadWritePaths"]
    assert writable.split()[0] == "/var/lib/notifier"
    assert writable.split()[1:] == (["/var/backups/notifier"] if "backup" in unit.name else [])
    (command,) = values["ExecStart"]
    assert "/opt/notifier/venv/bin/notifier " in command
    assert values["Environment"][0] == "NOTIFIER_CONFIG=/etc/notifier/config.toml"
    if values["Type"] != ["oneshot"]:
        assert command.startswith("/opt/notifier/venv/bin/notifier run")
        # Exit code 2 is a configuration error: restarting would only repeat it.
        assert values["RestartPreventExitStatus"] == ["2"]
    assert values["StandardOutput"] == ["journal"]
    assert "StandardOutput=file:" not in unit.read_text("utf-8")


@pytest.mark.parametrize("unit", [*UNITS, *TIMERS], ids=lambda unit: unit.name)
def test_systemd_analyze_verifies_each_unit_without_a_warning(root: Path, unit: Path) -> None:
    name = unit.name.replace("@.", "@1.")  # a template is verified as an instance

    result = subprocess.run(
        [_analyze(), "verify", "--man=no", f"--root={root}", name],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    # verify exits 0 on unknown keys and unparsable values and only prints them: a clean
    # unit prints nothing at all.
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    assert result.stdout.strip() == "", result.stdout


def test_verify_would_catch_a_broken_unit(root: Path) -> None:
    broken = root / "etc/systemd/system/notifier-broken.service"
    text = (DEPLOY / "systemd/notifier.service").read_text("utf-8")
    broken.write_text(text.replace("ProtectSystem=strict", "ProtectSystem=strikt"), "utf-8")
    try:
        result = subprocess.run(
            [_analyze(), "verify", "--man=no", f"--root={root}", broken.name],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        broken.unlink()

    assert "strikt" in result.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_the_security_review_rates_each_unit_ok(root: Path, unit: Path) -> None:
    name = unit.name.replace("@.", "@1.")

    result = subprocess.run(
        [_analyze(), "security", "--offline=yes", f"--root={root}", "--no-pager", name],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout + result.stderr)
    assert found is not None, result.stdout + result.stderr
    # systemd's scale: 0 (locked down) to 10 (unprotected); below 2 is "OK" (1.3 when written).
    assert float(found.group(1)) < 2.0, result.stdout


def test_the_proxy_example_sends_what_the_application_reads() -> None:
    snippet = (DEPLOY / "nginx/notifier-proxy.conf").read_text("utf-8")
    site = (DEPLOY / "nginx/notifier.conf").read_text("utf-8")

    assert "proxy_set_header X-Forwarded-For $remote_addr;" in snippet
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in snippet
    assert "proxy_set_header Host $host;" in snippet
    assert "server 127.0.0.1:8080;" in site  # config.toml's [web] host and port
    assert "include /etc/nginx/snippets/notifier-proxy.conf;" in site
    web_unit = _settings(DEPLOY / "systemd/notifier-web.service")
    assert "FORWARDED_ALLOW_IPS=127.0.0.1,::1" in web_unit["Environment"]


def test_the_address_a_proxy_on_loopback_forwards_is_the_one_recorded(
    web: Callable[..., Web], project: Project
) -> None:
    # What deploy/nginx/notifier-proxy.conf sends: the consent record names the visitor's
    # address, not the proxy's.
    site = web()
    token = site.csrf("/anmelden")

    answer = site.client.post(
        "/anmelden",
        data={**SIGNUP, "csrf_token": token},
        headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"},
    )

    assert answer.status_code == 200, answer.text
    with _db(project) as db:
        (ip,) = db.execute("SELECT ip FROM consents").fetchone()
    assert ip == "203.0.113.7"


def _nginx() -> tuple[str, str]:
    nginx, openssl = shutil.which("nginx"), shutil.which("openssl")
    if nginx is None or openssl is None:
        reason = "nginx or openssl is not installed (Debian: apt-get install nginx-light openssl)"
        if os.environ.get("NOTIFIER_REQUIRE_NGINX") == "1":
            pytest.fail(f"{reason} (NOTIFIER_REQUIRE_NGINX=1)")
        pytest.skip(reason)
    return nginx, openssl


def _proxy_config(folder: Path, http: int, https: int, app: int) -> Path:
    """deploy/nginx/notifier.conf with loopback ports, a test certificate and the snippet's
    path in the checkout; everything else as an installation would use it."""
    site = (DEPLOY / "nginx/notifier.conf").read_text("utf-8")
    live = "/etc/letsencrypt/live/newsletter.example.org"
    for old, new in {
        "listen 80;": f"listen 127.0.0.1:{http};",
        "listen 443 ssl http2;": f"listen 127.0.0.1:{https} ssl http2;",
        "server 127.0.0.1:8080;": f"server 127.0.0.1:{app};",
        f"{live}/fullchain.pem": str(folder / "cert.pem"),
        f"{live}/privkey.pem": str(folder / "key.pem"),
        "/etc/nginx/snippets/notifier-proxy.conf": str(DEPLOY / "nginx/notifier-proxy.conf"),
    }.items():
        assert old in site, old
        site = site.replace(old, new)
    site = "\n".join(line for line in site.splitlines() if "listen [::]" not in line)
    (folder / "site.conf").write_text(site, "utf-8")
    temp = "\n".join(
        f"    {kind}_temp_path {folder / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = folder / "nginx.conf"
    main.write_text(
        f"pid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'};\nevents {{}}\n"
        f"http {{\n{temp}\n    include {folder / 'site.conf'};\n}}\n",
        "utf-8",
    )
    return main


def test_the_nginx_example_serves_the_application_over_https(
    web: Callable[..., Web], project: Project, tmp_path: Path
) -> None:
    nginx, openssl = _nginx()
    folder = tmp_path / "nginx"
    folder.mkdir()
    key, cert = folder / "key.pem", folder / "cert.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        [openssl, *request, "-keyout", str(key), "-out", str(cert), *subject],
        check=True,
        capture_output=True,
        timeout=60,
    )
    site = web()
    app_port = int(site.base.rsplit(":", 1)[1])
    http, https = free_port(), free_port()
    config = _proxy_config(folder, http, https, app_port)
    flags = ["-p", str(folder), "-c", str(config), "-g", "daemon off; master_process off;"]
    checked = subprocess.run(
        [nginx, "-t", *flags], capture_output=True, text=True, timeout=60, check=False
    )
    assert checked.returncode == 0, checked.stderr
    proxy = subprocess.Popen([nginx, *flags], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", https), timeout=1).close()
                break
            except OSError:
                assert proxy.poll() is None, proxy.stderr.read() if proxy.stderr else ""
                assert time.monotonic() < deadline, "nginx did not start listening"
                time.sleep(0.1)
        trust = ssl.create_default_context(cafile=str(cert))
        # A visitor at 127.0.0.2: nginx connects from 127.0.0.1, the application must still
        # see the visitor.
        visitor = httpx.HTTPTransport(verify=trust, local_address="127.0.0.2")
        with httpx.Client(
            base_url=f"https://127.0.0.1:{https}", transport=visitor, timeout=15
        ) as client:
            page = client.get("/anmelden")
            assert page.status_code == 200, page.text
            assert page.headers["strict-transport-security"] == "max-age=31536000"
            assert page.headers["referrer-policy"] == "no-referrer"  # the application's own
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
            assert token is not None
            answer = client.post("/anmelden", data={**SIGNUP, "csrf_token": token.group(1)})
            assert answer.status_code == 200, answer.text
            assert "Bitte prüfen Sie Ihr Postfach" in answer.text
            assert client.get("/static/site.css").status_code == 200
        plain = httpx.get(f"http://127.0.0.1:{http}/anmelden", timeout=15)
        assert plain.status_code == 301
        assert plain.headers["location"] == "https://127.0.0.1/anmelden"
    finally:
        proxy.terminate()
        proxy.wait(15)
        if proxy.stderr is not None:
            proxy.stderr.close()
    with _db(project) as db:
        (ip,) = db.execute("SELECT ip FROM consents").fetchone()
    assert ip == "127.0.0.2"


def test_the_backup_unit_s_commands_make_a_dated_copy_and_delete_old_ones(
    project: Project, tmp_path: Path
) -> None:
    # The unit's own command lines, as systemd runs them (%% is a %), with this checkout's
    # notifier and a temporary folder in place of the installation's.
    values = _settings(DEPLOY / "systemd/notifier-backup.service")
    folder = tmp_path / "backups"
    folder.mkdir()
    old = folder / "notifier-2000-01-01.db"
    old.write_bytes(b"old")
    os.utime(old, (time.time() - 20 * 86400,) * 2)

    def command(line: str) -> list[str]:
        line = line.replace("%%", "%").replace("/var/backups/notifier", str(folder))
        line = line.replace("/opt/notifier/venv/bin/notifier", f"{sys.executable} -m notifier")
        return shlex.split(line)

    project.seed()
    environment = {**os.environ, "NOTIFIER_CONFIG": str(project.config)}
    for line in values["ExecStart"] + values["ExecStartPost"]:
        result = subprocess.run(
            command(line), env=environment, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stdout + result.stderr

    today = time.strftime("%Y-%m-%d")
    assert sorted(p.name for p in folder.iterdir()) == [f"notifier-{today}.db"]
    with sqlite3.connect(folder / f"notifier-{today}.db") as copy:
        assert copy.execute("SELECT count(*) FROM organisations").fetchone() == (239,)
