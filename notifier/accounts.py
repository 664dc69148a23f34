"""Logins of the project office and bearer tokens of the JSON API.

Passwords are hashed with argon2 (argon2-cffi); API tokens are random and only their SHA-256 is
stored, so neither can be read back from the database. Failed logins are throttled per client
address and name with growing waits (``[web] login_max_failures``, ``login_max_delay_minutes``);
the account itself is never locked, so nobody can keep the office out by guessing. Passwords must
be long and not easy to guess (zxcvbn, which ships lists of common passwords, names and words).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from . import audit
from .config import WebSettings
from .db.directory import LOCAL
from .db.models import ApiToken, LoginThrottle, User
from .db.queries import count_login_failure
from .errors import FieldError, NotFoundError

_hasher = PasswordHasher()
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
MIN_PASSWORD = 10
MAX_PASSWORD = 200
# zxcvbn's score from 0 (among the most common passwords) to 4; 3 means "safely unguessable"
# for an online attack, which is what a login page faces.
MIN_PASSWORD_SCORE = 3
# Failures from one address over all names that start the wait, per failure allowed for a name.
ADDRESS_FACTOR = 10
# Rows of failures older than this are forgotten.
THROTTLE_MEMORY = timedelta(days=1)
TOKEN_PREFIX = "ntf_"  # noqa: S105 (a prefix that tells a token apart, not a secret)


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise FieldError("name", "nur Buchstaben, Ziffern und . _ @ - (höchstens 100 Zeichen)")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password(password: str, *, user_inputs: tuple[str, ...] = ()) -> None:
    """Raises :class:`FieldError` for a password that is too short, too long or easy to guess:
    a common password, a word or name with small changes, a keyboard row, a date, or the user's
    own name or address (``user_inputs``)."""
    from zxcvbn import zxcvbn  # its dictionaries take a moment to load; only here

    if len(password) < MIN_PASSWORD:
        raise FieldError("password", f"zu kurz (mindestens {MIN_PASSWORD} Zeichen)")
    if len(password) > MAX_PASSWORD:
        raise FieldError("password", f"zu lang (höchstens {MAX_PASSWORD} Zeichen)")
    found = zxcvbn(password, user_inputs=[i for i in user_inputs if i])
    if found["score"] < MIN_PASSWORD_SCORE:
        raise FieldError(
            "password",
            "zu leicht zu erraten (ein häufiges Passwort, ein Wort oder Name mit kleinen "
            "Änderungen, eine Tastaturfolge, ein Datum oder der eigene Name); bitte eine "
            "längere Folge mehrerer Wörter wählen",
        )


async def add_user(
    session: AsyncSession, name: str, password: str, *, email: str = "", actor: str, now: datetime
) -> User:
    """A new office login; raises :class:`FieldError` for a bad name, a short password or a
    name that is taken."""
    _check_name(name)
    check_password(password, user_inputs=(name, email, email.partition("@")[0]))
    if await session.scalar(select(User.id).where(User.name == name)) is not None:
        raise FieldError("name", f"{name!r} gibt es schon")
    user = User(name=name, email=email, password_hash=hash_password(password), created_at=now)
    session.add(user)
    await session.flush()
    await audit.record(session, actor, "add", "user", user.id, {"name": name})
    return user


@dataclass(frozen=True)
class LoginResult:
    user: User | None
    # Set when the attempt was not even checked: the client must wait until then.
    wait_until: datetime | None = None


def _throttle_keys(client: str, name: str) -> tuple[str, str]:
    """Keys of the (address, name) and the (address) counters; hashes, so that the table holds
    neither the address nor what was typed as a name."""
    by_name = hashlib.sha256(f"name\0{client}\0{name.casefold()}".encode()).hexdigest()
    by_address = hashlib.sha256(f"address\0{client}".encode()).hexdigest()
    return by_name, by_address


def _wait(failures: int, allowed: int, settings: WebSettings) -> timedelta | None:
    """The first wait (2 s by default), doubling for each further failure beyond ``allowed``,
    at most the configured maximum."""
    beyond = failures - allowed
    if beyond < 0:
        return None
    seconds = min(
        settings.login_first_wait_seconds * 2.0 ** min(beyond, 30),
        settings.login_max_delay_minutes * 60,
    )
    return timedelta(seconds=seconds)


async def check_login(
    session: AsyncSession,
    name: str,
    password: str,
    *,
    client: str,
    settings: WebSettings,
    now: datetime,
) -> LoginResult:
    """The user if name and password are right.

    Failures are counted per client address and name, and per address over all names; beyond
    ``login_max_failures`` (ten times that for the address) the next attempt from there must wait
    a growing time and is refused unchecked until then. A name that does not exist is counted,
    throttled and answered exactly like one that does, and costs the same hashing time, so
    neither the answer nor its timing tells which names exist. The account is never locked: the
    office logs in from its own address while someone else guesses.
    """
    wait_until = await login_wait(session, client, name, now=now)
    if wait_until is not None:
        return LoginResult(None, wait_until)

    user = await session.scalar(
        select(User).where(User.name == name, User.active.is_(True), User.source == LOCAL)
    )
    if user is not None:
        try:
            _hasher.verify(user.password_hash, password)
        except (VerificationError, InvalidHashError):
            user = None
        else:
            if _hasher.check_needs_rehash(user.password_hash):
                user.password_hash = hash_password(password)
            user.last_login_at = now
            await forget_failures(session, client, name)
            return LoginResult(user)
    else:
        with contextlib.suppress(VerificationError):
            _hasher.verify(_dummy_hash(), password)
    await record_failure(session, client, name, settings=settings, now=now)
    return LoginResult(None)


async def login_wait(
    session: AsyncSession, client: str, name: str, *, now: datetime
) -> datetime | None:
    """Until when a login from ``client`` for ``name`` is refused unchecked (None: it may be
    checked now); forgets failures older than a day. Local and directory logins share it."""
    by_name, by_address = _throttle_keys(client, name)
    await session.execute(
        delete(LoginThrottle).where(LoginThrottle.last_failure_at < now - THROTTLE_MEMORY)
    )
    rows = await session.scalars(
        select(LoginThrottle).where(LoginThrottle.key.in_((by_name, by_address)))
    )
    waits = [row.wait_until for row in rows if row.wait_until and row.wait_until > now]
    return max(waits) if waits else None


async def record_failure(
    session: AsyncSession, client: str, name: str, *, settings: WebSettings, now: datetime
) -> None:
    """Counts a failed login from ``client`` for ``name`` and sets the wait beyond the limit."""
    by_name, by_address = _throttle_keys(client, name)
    allowed = settings.login_max_failures
    for key, limit in ((by_name, allowed), (by_address, allowed * ADDRESS_FACTOR)):
        failures = await count_login_failure(session, key, now=now)
        wait = _wait(failures, limit, settings)
        if wait is not None:
            await session.execute(
                update(LoginThrottle).where(LoginThrottle.key == key).values(wait_until=now + wait)
            )


async def forget_failures(session: AsyncSession, client: str, name: str) -> None:
    """A successful login forgets the failures for its name (not those of the address)."""
    by_name, _ = _throttle_keys(client, name)
    await session.execute(delete(LoginThrottle).where(LoginThrottle.key == by_name))


@functools.cache
def _dummy_hash() -> str:
    # Made on first use, not at import: argon2 takes 64 MiB for a moment per hash, which a
    # process that never checks a login (a sender, the service at start) should not pay.
    return _hasher.hash(secrets.token_urlsafe(16))


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def add_token(session: AsyncSession, name: str, *, actor: str, now: datetime) -> str:
    """A new API token; returns the token itself, which is shown once and never stored."""
    _check_name(name)
    if await session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
        raise FieldError("name", f"{name!r} gibt es schon")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, token_hash=_token_hash(token), created_at=now)
    session.add(row)
    await session.flush()
    await audit.record(session, actor, "add", "api_token", row.id, {"name": name})
    return token


async def revoke_token(session: AsyncSession, name: str, *, actor: str, now: datetime) -> None:
    row = await session.scalar(
        select(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
    )
    if row is None:
        raise NotFoundError(f"Kein gültiger Token {name!r}")
    row.revoked_at = now
    await audit.record(session, actor, "revoke", "api_token", row.id, {"name": name})


async def check_token(session: AsyncSession, token: str, *, now: datetime) -> ApiToken | None:
    """The token's row if it exists and is not revoked (and notes its use)."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    row = await session.scalar(
        select(ApiToken).where(
            ApiToken.token_hash == _token_hash(token), ApiToken.revoked_at.is_(None)
        )
    )
    if row is not None:
        row.last_used_at = now
    return row
