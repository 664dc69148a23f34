"""Office login through the Kreis's directory: LDAP (Active Directory, OpenLDAP) and OpenID
Connect (Keycloak, ADFS). The directory clients (:mod:`.ldap`, :mod:`.oidc`) only talk to the
directory; :mod:`.users` writes the users row that a directory login makes or updates. Local
accounts (``notifier users add``) stay for emergencies (:mod:`notifier.accounts`)."""

from .common import DirectoryError, DirectoryUser, LoginRefused
from .ldap import LdapDirectory
from .oidc import OidcClient, PendingLogin
from .users import sign_in

__all__ = [
    "DirectoryError",
    "DirectoryUser",
    "LdapDirectory",
    "LoginRefused",
    "OidcClient",
    "PendingLogin",
    "sign_in",
]
