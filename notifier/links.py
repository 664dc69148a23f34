"""Signed personal links: confirmation of a sign-up, preferences, one-click unsubscribe, and
"wieder anmelden" after an unsubscribe (valid :data:`RESUBSCRIBE_DAYS`).

A link carries the subscriber's id and ``token_version`` and is signed with the service's secret
key (itsdangerous, HMAC): it cannot be guessed or altered, it is bound to one subscriber, and
raising the subscriber's ``token_version`` revokes every link sent before. Confirmation and
preferences links expire (``[web] confirm_hours``, ``link_days``); an unsubscribe link keeps
working as long as its version is current, as RFC 8058 expects of a ``List-Unsubscribe`` URL.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from itsdangerous import BadData, SignatureExpired, URLSafeTimedSerializer

from .config import Settings
from .errors import NotifierError

CONFIRM = "confirm"
PERSONAL = "personal"  # the preferences and the unsubscribe link of a message share one token
RESUBSCRIBE = "resubscribe"  # "wieder anmelden" after an unsubscribe
# How long a "wieder anmelden" link works: 30 days, or less if [retention] unsubscribed_days
# removes an unsubscribed person's choices sooner (the link restores them).
RESUBSCRIBE_DAYS = 30


class LinkError(NotifierError):
    """A personal link that cannot be used: ``expired`` tells whether it was merely old."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


def secret_key(settings: Settings) -> bytes:
    """``[web] secret_key``, or the key kept in ``secret_key_file`` (made on first use)."""
    configured = settings.web.secret_key.get_secret_value()
    if configured:
        return configured.encode()
    path = settings.secret_key_path
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: two processes starting at once cannot both write a different key.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(48))
    key = path.read_text("ascii").strip()
    if len(key) < 32:
        raise NotifierError(f"{path}: der Schlüssel ist zu kurz (mindestens 32 Zeichen)")
    return key.encode()


def resubscribe_days(settings: Settings) -> int:
    return min(RESUBSCRIBE_DAYS, settings.retention.unsubscribed_days)


@dataclass(frozen=True)
class LinkTarget:
    subscriber_id: int
    version: int


class Links:
    """Makes and reads the signed personal links of one service."""

    def __init__(self, settings: Settings, key: bytes | None = None) -> None:
        self.base = settings.mail.public_base_url.rstrip("/")
        self.confirm_seconds = int(settings.web.confirm_hours * 3600)
        self.link_seconds = int(settings.web.link_days * 86400)
        self.resubscribe_seconds = resubscribe_days(settings) * 86400
        # Also keys hashes that must not be reversible by a reader of the database.
        self.key = key if key is not None else secret_key(settings)
        self._signers = {
            purpose: URLSafeTimedSerializer(self.key, salt=f"notifier-{purpose}")
            for purpose in (CONFIRM, PERSONAL, RESUBSCRIBE)
        }

    def token(self, purpose: str, subscriber_id: int, version: int) -> str:
        return str(self._signers[purpose].dumps([subscriber_id, version]))

    def confirm_url(self, subscriber_id: int, version: int) -> str:
        return f"{self.base}/bestaetigen/{self.token(CONFIRM, subscriber_id, version)}"

    def personal_urls(self, subscriber_id: int, version: int) -> tuple[str, str]:
        """The preferences and the unsubscribe URL (one signature for both)."""
        token = self.token(PERSONAL, subscriber_id, version)
        return f"{self.base}/einstellungen/{token}", f"{self.base}/abmelden/{token}"

    def resubscribe_url(self, subscriber_id: int, version: int) -> str:
        """The one-click "wieder anmelden" link offered after an unsubscribe."""
        return f"{self.base}/wieder-anmelden/{self.token(RESUBSCRIBE, subscriber_id, version)}"

    def read(self, purpose: str, token: str, *, expires: bool = True) -> LinkTarget:
        """The subscriber a link is for; raises :class:`LinkError` if it is forged, damaged or
        expired (``expires=False``: only forged or damaged). The caller checks the version
        against the subscriber's current one."""
        max_age = None
        if expires:
            max_age = {CONFIRM: self.confirm_seconds, RESUBSCRIBE: self.resubscribe_seconds}.get(
                purpose, self.link_seconds
            )
        try:
            value = self._signers[purpose].loads(token, max_age=max_age)
        except SignatureExpired as exc:
            raise LinkError("Der Link ist abgelaufen.", expired=True) from exc
        except BadData as exc:
            raise LinkError("Der Link ist ungültig.") from exc
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise LinkError("Der Link ist ungültig.")
        return LinkTarget(value[0], value[1])
