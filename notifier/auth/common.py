"""What the directory clients share: the user they found and their errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import NotifierError


@dataclass(frozen=True)
class DirectoryUser:
    """A user the directory vouched for, who belongs to the office's group."""

    source: Literal["ldap", "oidc"]
    # Stable identity in the directory: the LDAP DN, or "issuer|subject" of OpenID Connect.
    external_id: str
    # The name in the console and the audit log (login name or the name claim).
    name: str
    email: str = ""


class DirectoryError(NotifierError):
    """The directory could not be asked or gave an answer that cannot be used (unreachable,
    timeout, misconfigured service account, a broken token). Not the user's fault."""


class LoginRefused(NotifierError):
    """The directory refused the user: unknown name, wrong password, not in the office's group,
    or a flow that does not match (state, nonce). ``reason`` is for the log, never the page."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
