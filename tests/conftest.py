"""Fixtures: a project folder with its own config and SQLite file, a real SMTP server, the CLI."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
import tomli_w
from click.testing import CliRunner, Result

from notifier.cli import main
from notifier.config import PACKAGED_ORGANISATIONS, Settings, load_settings

from .httpserver import FeedServer, serving
from .smtpd import RecordingSMTP

REPO = Path(__file__).resolve().parent.parent
ORGANISATIONS = PACKAGED_ORGANISATIONS
EXAMPLE = REPO / "subscribers" / "example.csv"


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


class Project:
    """A folder with a config.toml (the repo's, pointed at test servers) and helpers to run the
    CLI against it."""

    def __init__(self, root: Path, smtp: RecordingSMTP) -> None:
        self.root = root
        self.smtp = smtp
        self.config = root / "config.toml"
        self.write_config({})

    def write_config(self, changes: dict[str, Any]) -> None:
        data = tomllib.loads((REPO / "config.toml").read_text("utf-8"))
        _merge(
            data,
            {
                "database": {"url": "sqlite+aiosqlite:///var/test.db"},
                "smtp": {
                    "catcher": False,
                    "host": "127.0.0.1",
                    "port": self.smtp.port,
                    "tls": "none",
                    "timeout": 5,
                },
                "catcher": {"port": 0},
                "web": {"port": 0},
                "scheduler": {"poll_seconds": 0.2},
                "delivery": {"idle_poll_seconds": 0.2, "retry_base_seconds": 1},
            },
        )
        _merge(data, changes)
        self.config.write_text(tomli_w.dumps(data), "utf-8")

    @property
    def settings(self) -> Settings:
        return load_settings(self.config, environ={})

    def cli(self, *args: str | Path, ok: bool = True) -> Result:
        """Run ``notifier --config … ARGS`` in-process, as a user would type it."""
        # In a thread of its own: the command runs its own event loop, which cannot start in a
        # thread that already runs one (an async test, or Playwright's).
        with ThreadPoolExecutor(1) as pool:
            result = pool.submit(
                CliRunner().invoke, main, ["--config", str(self.config), *map(str, args)]
            ).result()
        if ok:
            assert result.exit_code == 0, (
                f"exit {result.exit_code}: {result.output}{result.exception!r}"
            )
        return result

    def write(self, name: str, text: str, encoding: str = "utf-8") -> Path:
        path = self.root / name
        path.write_bytes(text.encode(encoding))
        return path

    def seed(self, subscribers: Path | None = EXAMPLE) -> None:
        self.cli("organisations", "load", ORGANISATIONS)
        if subscribers is not None:
            self.cli("subscribers", "import", subscribers)

    def spawn(self, *args: str, config: Path | None = None) -> Running:
        """Start ``notifier --config … ARGS`` as a real process (``run``)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "notifier", "--config", str(config or self.config), *args],
            cwd=self.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        return Running(proc)


class Running:
    """A child process whose output is drained by a thread (a full pipe would block it)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no line with {text!r}; output:\n{self.output}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"did not stop within {timeout}s:\n{self.output}") from None
        self.close()
        return self.proc.returncode

    def close(self) -> None:
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def smtp() -> Iterator[RecordingSMTP]:
    server = RecordingSMTP().start()
    yield server
    server.stop()


@pytest.fixture
def project(tmp_path: Path, smtp: RecordingSMTP) -> Project:
    return Project(tmp_path, smtp)


@pytest.fixture
def service(project: Project) -> Iterator[Callable[[], Running]]:
    """Start ``notifier run`` processes; any still running is stopped at the end of the test."""
    started: list[Running] = []

    def start() -> Running:
        running = project.spawn("run")
        started.append(running)
        running.wait_for_line("Beenden mit Strg+C")
        return running

    yield start
    for running in started:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait()
        running.close()


@pytest.fixture
def spawn(project: Project) -> Iterator[Callable[..., Running]]:
    """Start `notifier ARGS` processes; whatever still runs at the end is killed."""
    started: list[Running] = []

    def start(*args: str, ready: str | None = "Beenden mit Strg+C") -> Running:
        running = project.spawn(*args)
        started.append(running)
        if ready is not None:
            running.wait_for_line(ready)
        return running

    yield start
    for running in started:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait()
        running.close()


def free_port() -> int:
    """A port that is free now (for a server whose address must be known before it starts,
    such as the web application, whose links name it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Web:
    """A real ``notifier run`` with its web application on loopback, and an HTTP client."""

    def __init__(self, project: Project, running: Running, base: str) -> None:
        self.project = project
        self.running = running
        self.base = base
        self.client = httpx.Client(base_url=base, follow_redirects=False, timeout=15)

    def url(self, path: str) -> str:
        return self.base + path

    def csrf(self, path: str, client: httpx.Client | None = None) -> str:
        """GET a page and return the CSRF token of its form (the session cookie is kept)."""
        page = (client or self.client).get(path)
        assert page.status_code == 200, self.running.output[-4000:]
        found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert found is not None, page.text
        return found.group(1)

    def link(self, text: str, kind: str) -> str:
        """The first personal link of a kind (``bestaetigen``, ``einstellungen``, ``abmelden``)
        in a message's text, as a path."""
        found = re.search(re.escape(self.base) + rf"(/{kind}/[A-Za-z0-9_.\-]+)", text)
        assert found is not None, f"no /{kind}/ link in:\n{text}"
        return found.group(1)


@pytest.fixture
def web(project: Project) -> Iterator[Callable[..., Web]]:
    """Start ``notifier run`` with the web application on a free loopback port; the config's
    ``[mail] public_base_url`` points there, so links in e-mails lead to it."""
    started: list[Web] = []

    def start(config: dict[str, Any] | None = None, seed: bool = True) -> Web:
        # A test that must know the address first (to register it elsewhere) may choose it.
        port = (config or {}).get("web", {}).get("port") or free_port()
        base = f"http://127.0.0.1:{port}"
        project.write_config(
            _merge({"web": {"port": port}, "mail": {"public_base_url": base}}, config or {})
        )
        if seed:
            project.seed()
        running = project.spawn("run")
        instance = Web(project, running, base)
        started.append(instance)
        running.wait_for_line("Beenden mit Strg+C")
        return instance

    yield start
    for instance in started:
        instance.client.close()
        if instance.running.proc.poll() is None:
            instance.running.stop()
        instance.running.close()


@pytest.fixture
def server() -> Iterator[FeedServer]:
    """A real HTTP server on loopback whose answers (body, status, ETag …) a test sets per path."""
    with serving() as feeds:
        yield feeds


# -- PostgreSQL ------------------------------------------------------------------------------------
# A real server on 127.0.0.1:5432 with trust authentication and a database "test" (started by
# .ci/run). Each test gets a database of its own, dropped afterwards. Without a server the
# PostgreSQL tests are skipped, unless NOTIFIER_REQUIRE_POSTGRES=1 (CI), where they fail.

PG_HOST = os.environ.get("NOTIFIER_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("NOTIFIER_TEST_PG_PORT", "5432"))
PG_USERS = ("postgres", "root")
T = TypeVar("T")


def run_coroutine(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to its end in a thread of its own (callable from sync fixtures while a
    test's event loop runs)."""
    out: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            out.append(asyncio.run(make()))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return out[0]


def _find_postgres_user() -> tuple[str | None, str]:
    problems = []
    for user in PG_USERS:

        async def probe(user: str = user) -> None:
            conn = await asyncpg.connect(
                host=PG_HOST, port=PG_PORT, user=user, database="test", timeout=5
            )
            await conn.close()

        try:
            run_coroutine(probe)
            return user, ""
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            problems.append(f"{user}: {exc}")
    return None, "; ".join(problems)


@pytest.fixture(scope="session")
def postgres_user() -> str:
    """The role that can create databases on the test server (the skip or failure names why
    there is none)."""
    user, problem = _find_postgres_user()
    if user is None:
        reason = f"no PostgreSQL server on {PG_HOST}:{PG_PORT} (database 'test'): {problem}"
        if os.environ.get("NOTIFIER_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"NOTIFIER_REQUIRE_POSTGRES=1, but {reason}", pytrace=False)
        pytest.skip(reason)
    return user


@pytest.fixture
def postgres_url(postgres_user: str) -> Iterator[str]:
    """A SQLAlchemy URL of a new, empty database; dropped (with its sessions) at the end."""
    name = f"notifier_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(
            host=PG_HOST, port=PG_PORT, user=postgres_user, database="test", timeout=10
        )
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    run_coroutine(lambda: admin(f'CREATE DATABASE "{name}"'))
    yield f"postgresql+asyncpg://{postgres_user}@{PG_HOST}:{PG_PORT}/{name}"
    run_coroutine(lambda: admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database on each backend: a SQLite file, a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'contract.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url
