"""LDAP login (Active Directory, OpenLDAP): bind with the service account, search the user,
bind as the user with the password typed, check the membership in the office's group.

ldap3 is synchronous; each login runs in a worker thread, with timeouts on connecting and on
every answer (``[auth.ldap] timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import warnings
from pathlib import Path
from typing import Any

from ..config import LdapSettings
from .common import DirectoryError, DirectoryUser, LoginRefused

with warnings.catch_warnings():
    # ldap3 2.9 imports names that pyasn1 0.6 marks as deprecated; nothing we call.
    warnings.simplefilter("ignore", DeprecationWarning)
    import ldap3
    from ldap3.core.exceptions import LDAPException
    from ldap3.utils.conv import escape_filter_chars

logger = logging.getLogger(__name__)


class _Tls(ldap3.Tls):  # type: ignore[misc]
    """ldap3's TLS with the standard library's checks: the certificate against the CA file (or
    the system's CAs) and the host name during the handshake. ldap3 itself checks the name with
    ``ssl.match_hostname``, deprecated since Python 3.7 and gone in 3.12."""

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        context = ssl.create_default_context(cafile=self.ca_certs_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        connection.socket = context.wrap_socket(
            connection.socket,
            server_hostname=connection.server.host,
            do_handshake_on_connect=do_handshake,
        )


MAX_NAME = 100
MAX_PASSWORD = 200


class LdapDirectory:
    """The Kreis's LDAP directory, as configured in ``[auth.ldap]``."""

    def __init__(self, settings: LdapSettings, *, ca_file: Path | None = None) -> None:
        self.settings = settings
        self.ca_file = ca_file

    async def authenticate(self, name: str, password: str) -> DirectoryUser:
        """The user if the directory knows ``name``, the password is theirs and they are in the
        office's group. Raises :class:`LoginRefused` otherwise, :class:`DirectoryError` when the
        directory cannot be asked."""
        if not name or not password or len(name) > MAX_NAME or len(password) > MAX_PASSWORD:
            # An empty password would be an anonymous bind, which many servers accept.
            raise LoginRefused("empty or overlong name or password")
        return await asyncio.to_thread(self._authenticate, name, password)

    def _server(self) -> Any:
        s = self.settings
        tls = _Tls(
            validate=ssl.CERT_REQUIRED,
            version=ssl.PROTOCOL_TLS_CLIENT,
            ca_certs_file=str(self.ca_file) if self.ca_file else None,
        )
        return ldap3.Server(
            s.url,
            use_ssl=s.url.startswith("ldaps://"),
            tls=tls,
            connect_timeout=_seconds(s.timeout),
            get_info=ldap3.NONE,
        )

    def _connection(self, server: Any, user: str, password: str) -> Any:
        """An open connection bound as ``user``; None if the directory refused the bind."""
        s = self.settings
        conn = ldap3.Connection(
            server,
            user=user,
            password=password,
            receive_timeout=_seconds(s.timeout),
            read_only=True,
            raise_exceptions=False,
            auto_referrals=False,
        )
        try:
            conn.open()
            if s.start_tls and not s.url.startswith("ldaps://") and not conn.start_tls():
                raise DirectoryError(
                    f"LDAP {s.url}: StartTLS refused ({conn.result['description']})"
                )
            if not conn.bind():
                _close(conn)
                return None
        except BaseException:
            _close(conn)
            raise
        return conn

    def _authenticate(self, name: str, password: str) -> DirectoryUser:
        s = self.settings
        server = self._server()
        try:
            service = self._connection(server, s.bind_dn, s.bind_password.get_secret_value())
            if service is None:
                raise DirectoryError(f"LDAP {s.url}: the service account {s.bind_dn} cannot bind")
            try:
                service.search(
                    s.user_base,
                    s.user_filter.replace("{name}", escape_filter_chars(name)),
                    search_scope=ldap3.SUBTREE,
                    attributes=[s.email_attribute],
                    size_limit=2,
                    time_limit=_seconds(s.timeout),
                )
                found = [r for r in service.response or [] if r.get("type") == "searchResEntry"]
                if len(found) != 1:
                    raise LoginRefused(f"{len(found)} entries match the name")
                dn: str = found[0]["dn"]
                email = _first(found[0].get("attributes", {}).get(s.email_attribute))
                as_user = self._connection(server, dn, password)
                if as_user is None:
                    raise LoginRefused("wrong password")
                _close(as_user)
                service.search(
                    s.group_dn,
                    s.group_filter.replace("{user_dn}", escape_filter_chars(dn)),
                    search_scope=ldap3.BASE,
                    attributes=[],
                    size_limit=1,
                    time_limit=_seconds(s.timeout),
                )
                if not any(r.get("type") == "searchResEntry" for r in service.response or []):
                    raise LoginRefused(f"{dn} is not in {s.group_dn}")
            finally:
                _close(service)
        except LDAPException as exc:
            raise DirectoryError(f"LDAP {s.url}: {type(exc).__name__}: {exc}") from exc
        except OSError as exc:  # pragma: no cover - ldap3 wraps most socket errors itself
            raise DirectoryError(f"LDAP {s.url}: {exc}") from exc
        return DirectoryUser("ldap", dn, name.casefold(), email)


def _close(conn: Any) -> None:
    """Unbinds and closes the socket, also of a connection that never opened (ldap3 leaves
    the socket of a refused connect open)."""
    with contextlib.suppress(LDAPException, OSError):
        conn.unbind()
    sock = getattr(conn, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


def _seconds(timeout: float) -> int:
    # ldap3 packs timeouts into socket options as whole seconds.
    return max(1, math.ceil(timeout))


def _first(value: object) -> str:
    if isinstance(value, list):
        value = value[0] if value else ""
    return value if isinstance(value, str) else ""
