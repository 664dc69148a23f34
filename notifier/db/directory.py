"""The queries of the directory login (:mod:`notifier.auth`): office users by their identity in
the Kreis's directory, and local accounts by name."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from .models import User

LOCAL = "local"


async def user_by_external_id(session: AsyncSession, external_id: str) -> User | None:
    """The user with this identity in the directory (LDAP DN, or OpenID issuer and subject)."""
    found: User | None = await session.scalar(select(User).where(User.external_id == external_id))
    return found


async def user_by_name(session: AsyncSession, name: str) -> User | None:
    found: User | None = await session.scalar(select(User).where(User.name == name))
    return found


async def local_user_exists(session: AsyncSession, name: str) -> bool:
    """Whether an active local account (``notifier users add``) has this name."""
    found = await session.scalar(
        select(User.id).where(User.name == name, User.source == LOCAL, User.active.is_(True))
    )
    return found is not None
