"""A real LDAP directory for tests: OpenLDAP (Debian's slapd) started from a slapd.conf of its
own in a temporary folder, mdb backend, on loopback ports (ldap:// with StartTLS and ldaps://,
a self-signed certificate for 127.0.0.1), loaded with slapadd before it starts: a service
account, three people and the office's group (groupOfNames).

- ``anna`` is in the office's group, ``bernd`` is not, ``carla`` is in it and has a local
  account's name in some tests.

Without slapd the LDAP tests are skipped, unless NOTIFIER_REQUIRE_SSO=1 (CI), where they fail.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .certs import self_signed
from .processes import terminate

SLAPD = shutil.which("slapd") or "/usr/sbin/slapd"
SLAPADD = shutil.which("slapadd") or "/usr/sbin/slapadd"
SCHEMA = Path("/etc/ldap/schema")
MODULES = Path("/usr/lib/ldap")
SUFFIX = "dc=kreis,dc=example"
SERVICE_DN = f"cn=notifier,ou=dienste,{SUFFIX}"
GROUP_DN = f"cn=notifier-buero,ou=gruppen,{SUFFIX}"
PEOPLE = f"ou=people,{SUFFIX}"


def need_sso(what: str, reason: str | None) -> None:
    """Skip (or, with NOTIFIER_REQUIRE_SSO=1, fail) when a directory server cannot run."""
    if reason is None:
        return
    if os.environ.get("NOTIFIER_REQUIRE_SSO") == "1":
        pytest.fail(f"NOTIFIER_REQUIRE_SSO=1, but {what}: {reason}", pytrace=False)
    pytest.skip(f"{what}: {reason}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@dataclass
class Slapd:
    root: Path
    port: int = field(default_factory=free_port)
    tls_port: int = field(default_factory=free_port)  # ldaps://
    service_password: str = "dienst-passwort-7Hq"
    # login name -> password
    passwords: dict[str, str] = field(
        default_factory=lambda: {
            "anna": "Anna-geheim-2026",
            "bernd": "Bernd-geheim-2026",
            "carla": "Carla-geheim-2026",
        }
    )
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.tls_port}"

    @property
    def cert(self) -> Path:
        """The server's self-signed certificate for 127.0.0.1: tests trust it as a CA."""
        return self.root / "cert.pem"

    def user_dn(self, name: str) -> str:
        return f"uid={name},{PEOPLE}"

    def auth_config(self, **changes: Any) -> dict[str, Any]:
        """The ``[auth.ldap]`` section for this server (no TLS on loopback)."""
        return {
            "enabled": True,
            "url": self.url,
            "start_tls": False,
            "bind_dn": SERVICE_DN,
            "bind_password": self.service_password,
            "user_base": PEOPLE,
            "user_filter": "(&(objectClass=inetOrgPerson)(uid={name}))",
            "group_dn": GROUP_DN,
            "timeout": 5,
            **changes,
        }

    def _config(self) -> str:
        includes = "".join(
            f"include {SCHEMA / name}.schema\n"
            for name in ("core", "cosine", "inetorgperson", "nis")
        )
        return f"""{includes}
modulepath {MODULES}
moduleload back_mdb
TLSCertificateFile {self.cert}
TLSCertificateKeyFile {self.root}/key.pem
pidfile {self.root}/slapd.pid
argsfile {self.root}/slapd.args

database mdb
maxsize 10485760
suffix "{SUFFIX}"
rootdn "cn=admin,{SUFFIX}"
rootpw admin-nur-fuer-tests
directory {self.root}/data
access to attrs=userPassword by self read by anonymous auth by * none
access to * by dn.exact="{SERVICE_DN}" read by self read by * none
"""

    def _ldif(self) -> str:
        names = {"anna": "Anna Äpfelbäum", "bernd": "Bernd Brück", "carla": "Carla Çelik"}
        people = "".join(
            f"""dn: {self.user_dn(uid)}
objectClass: inetOrgPerson
uid: {uid}
cn:: {_b64(cn)}
sn:: {_b64(cn.split()[-1])}
mail: {uid}@kreis.example
userPassword: {self.passwords[uid]}

"""
            for uid, cn in names.items()
        )
        return f"""dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
dc: kreis
o: Kreisverwaltung

dn: ou=people,{SUFFIX}
objectClass: organizationalUnit
ou: people

dn: ou=dienste,{SUFFIX}
objectClass: organizationalUnit
ou: dienste

dn: ou=gruppen,{SUFFIX}
objectClass: organizationalUnit
ou: gruppen

dn: {SERVICE_DN}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: notifier
userPassword: {self.service_password}

{people}dn: {GROUP_DN}
objectClass: groupOfNames
cn: notifier-buero
member: {self.user_dn("anna")}
member: {self.user_dn("carla")}
"""

    def start(self) -> Slapd:
        (self.root / "data").mkdir()
        self_signed(self.root / "key.pem", self.cert)
        config = self.root / "slapd.conf"
        config.write_text(self._config(), "utf-8")
        ldif = self.root / "data.ldif"
        ldif.write_text(self._ldif(), "utf-8")
        loaded = subprocess.run(
            [SLAPADD, "-f", str(config), "-l", str(ldif)], capture_output=True, text=True
        )
        if loaded.returncode != 0:
            raise RuntimeError(f"slapadd failed: {loaded.stderr}")
        self.proc = subprocess.Popen(
            [SLAPD, "-f", str(config), "-h", f"{self.url}/ {self.tls_url}/", "-d", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            time.sleep(0.1)
        self.stop()
        error = self.proc.stderr.read().decode() if self.proc.stderr else ""
        raise RuntimeError(f"slapd did not start: {error}")

    def stop(self) -> None:
        terminate(self.proc)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()


def _missing() -> str | None:
    for path in (SLAPD, SLAPADD, SCHEMA / "inetorgperson.schema", MODULES / "back_mdb.so"):
        if not os.path.exists(path):
            return f"{path} is missing (apt-get install slapd)"
    return None


@pytest.fixture(scope="session")
def slapd_server() -> Iterator[Slapd]:
    need_sso("OpenLDAP cannot run", _missing())
    root = Path(tempfile.mkdtemp(prefix="notifier-slapd-"))
    server = Slapd(root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
