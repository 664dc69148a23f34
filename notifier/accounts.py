"""Logins of the project office and bearer tokens of the JSON API.

Passwords are hashed with argon2 (argon2-cffi); API tokens are random and only their SHA-256 is
stored, so neither can be read back from the database. Repeated failed logins lock an account for
a while (``[web] login_max_failures``, ``login_lockout_minutes``).
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
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from . import audit
from .config import WebSettings
from .db.models import ApiToken, User
from .errors import FieldError, NotFoundError

_hasher = PasswordHasher()
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
MIN_PASSWORD = 10
TOKEN_PREFIX = "ntf_"  # noqa: S105 (a prefix that tells a token apart, not a secret)


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise FieldError("name", "nur Buchstaben, Ziffern und . _ @ - (höchstens 100 Zeichen)")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


async def add_user(
    session: AsyncSession, name: str, password: str, *, email: str = "", actor: str, now: datetime
) -> User:
    """A new office login; raises :class:`FieldError` for a bad name, a short password or a
    name that is taken."""
    _check_name(name)
    if len(password) < MIN_PASSWORD:
        raise FieldError("password", f"zu kurz (mindestens {MIN_PASSWORD} Zeichen)")
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
    locked_until: datetime | None = None


async def check_login(
    session: AsyncSession, name: str, password: str, *, settings: WebSettings, now: datetime
) -> LoginResult:
    """The user if name and password are right and the account is not locked.

    Every failure counts; after ``login_max_failures`` in a row the account is locked for
    ``login_lockout_minutes`` (also against the right password). Unknown names cost the same
    hashing time as known ones, so timing does not tell which names exist.
    """
    user = await session.scalar(select(User).where(User.name == name, User.active.is_(True)))
    if user is None:
        with contextlib.suppress(VerificationError):
            _hasher.verify(_dummy_hash(), password)
        return LoginResult(None)
    if user.locked_until is not None and user.locked_until > now:
        return LoginResult(None, user.locked_until)
    try:
        _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        user.failed_logins += 1
        if user.failed_logins >= settings.login_max_failures:
            user.locked_until = now + timedelta(minutes=settings.login_lockout_minutes)
            user.failed_logins = 0
            await audit.record(session, f"user:{name}", "lock", "user", user.id, {})
            return LoginResult(None, user.locked_until)
        return LoginResult(None)
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    user.failed_logins = 0
    user.locked_until = None
    user.last_login_at = now
    return LoginResult(user)


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
