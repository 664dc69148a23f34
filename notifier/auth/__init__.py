"""Office login through the Kreis's directory: LDAP (Active Directory, OpenLDAP) and OpenID
Connect (Keycloak, ADFS). The directory clients (:mod:`.ldap`, :mod:`.oidc`) only talk to the
directory; :mod:`.users` writes the users row that a directory login makes or updates. Local
accounts (``notifier users add``) stay for emergencies (:mod:`notifier.accounts`).

The clients are imported on first use (ldap3 and authlib take a moment to load, which a web
process without a directory login should not pay)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .common import DirectoryError, DirectoryUser, LoginRefused
from .users import sign_in

if TYPE_CHECKING:
    from .ldap import LdapDirectory
    from .oidc import OidcClient, PendingLogin

__all__ = [
    "DirectoryError",
    "DirectoryUser",
    "LdapDirectory",
    "LoginRefused",
    "OidcClient",
    "PendingLogin",
    "sign_in",
]


def __getattr__(name: str) -> Any:
    if name == "LdapDirectory":
        from .ldap import LdapDirectory

        return LdapDirectory
    if name in ("OidcClient", "PendingLogin"):
        from . import oidc

        return getattr(oidc, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
