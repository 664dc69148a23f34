"""Office logins: the password policy, how ``users add`` takes a password, and that a failed
login costs the same time whether the name exists or not (real SQLite, real argon2)."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner, Result

from notifier.accounts import add_user, check_login
from notifier.cli import main
from notifier.db.engine import Database
from notifier.errors import FieldError

from .conftest import Project

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


def _cli(project: Project, *args: str, stdin: str | None = None) -> Result:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(
            CliRunner().invoke, main, ["--config", str(project.config), *args], input=stdin
        ).result()


@pytest.mark.parametrize(
    "password",
    [
        "passwort1234",  # among the most common passwords, with digits
        "qwertzuiop1",  # a keyboard row
        "buero-buero-1",  # the user's own name
        "kurz",
    ],
)
def test_weak_passwords_are_refused_in_german(project: Project, password: str) -> None:
    project.seed(None)
    result = _cli(project, "users", "add", "buero", "--password", password)
    assert result.exit_code != 0
    assert "password" in result.output and (
        "zu leicht" in result.output or "zu kurz" in result.output
    )
    assert "Traceback" not in result.output


def test_a_password_from_a_pipe_needs_password_stdin(project: Project) -> None:
    project.seed(None)
    piped = _cli(project, "users", "add", "buero", stdin="ein-langes-passwort\n")
    assert piped.exit_code == 2
    assert "--password-stdin" in piped.output
    taken = _cli(
        project, "users", "add", "buero", "--password-stdin", stdin="ein-langes-passwort\n"
    )
    assert taken.exit_code == 0, taken.output
    assert "angelegt" in taken.output
    listed = _cli(project, "users", "list")
    assert "buero" in listed.output


async def test_a_failed_login_takes_as_long_for_an_unknown_name(project: Project) -> None:
    project.seed(None)
    settings = project.settings
    db = Database(settings.database_url)
    try:
        async with db.transaction() as session:
            await add_user(session, "buero", "ein-langes-passwort", actor="test", now=T0)

        async def attempt(name: str, client: str) -> float:
            started = time.perf_counter()
            async with db.transaction() as session:
                result = await check_login(
                    session, name, "falsch-falsch-1", client=client, settings=settings.web, now=T0
                )
            assert result.user is None and result.wait_until is None
            return time.perf_counter() - started

        await attempt("niemand", "10.0.0.1")  # the dummy hash is made on first use
        known, unknown = [], []
        for i in range(6):
            known.append(await attempt("buero", f"10.0.1.{i}"))
            unknown.append(await attempt("niemand", f"10.0.2.{i}"))
        # Both verify an argon2 hash (tens of milliseconds); without the dummy verification an
        # unknown name would answer in about a millisecond.
        ratio = statistics.median(unknown) / statistics.median(known)
        assert 0.5 < ratio < 2, (known, unknown)
    finally:
        await db.engine.dispose()


def test_check_password_names_the_field() -> None:
    from notifier.accounts import check_password

    with pytest.raises(FieldError) as raised:
        check_password("Passwort123!")
    assert raised.value.field == "password"
    check_password("korrekt-pferd-batterie-klammer")
