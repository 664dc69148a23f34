"""The users row of a directory login: made at the first login, updated at every later one,
so the audit log names the person. Directory users have no local password."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from .. import audit
from ..db.directory import user_by_external_id, user_by_name
from ..db.models import User
from .common import DirectoryUser, LoginRefused


async def sign_in(session: AsyncSession, found: DirectoryUser, *, now: datetime) -> User:
    """The users row of ``found``, made or updated (name, e-mail, last login).

    Raises :class:`LoginRefused` when the row was deactivated in notifier, or when another
    account (a local one, or another directory user) already has the name."""
    row = await user_by_external_id(session, found.external_id)
    named = await user_by_name(session, found.name)
    if named is not None and (row is None or named.id != row.id):
        raise LoginRefused(f"the name {found.name!r} belongs to another account")
    if row is None:
        row = User(
            name=found.name,
            email=found.email,
            password_hash="",
            source=found.source,
            external_id=found.external_id,
            created_at=now,
        )
        session.add(row)
        await session.flush()
        await audit.record(
            session,
            f"office:{found.name}",
            "add",
            "user",
            row.id,
            {"name": found.name, "source": found.source},
        )
    elif not row.active:
        raise LoginRefused(f"the account {row.name!r} is deactivated in notifier")
    else:
        row.name = found.name
        if found.email:
            row.email = found.email
    row.last_login_at = now
    return row
