"""A real IMAP server for tests: Dovecot (Debian's dovecot-imapd) started from a config of its own
in a temporary folder, on a loopback port, with plaintext login allowed there and a passwd-file
of test users. It runs unprivileged: as root, its login processes run as dovenull and the
mailboxes belong to the dovecot user (Dovecot refuses root for both); otherwise everything runs
as the current user.

Without Dovecot the IMAP tests are skipped, unless NOTIFIER_REQUIRE_IMAP=1 (CI), where they fail.
"""

from __future__ import annotations

import contextlib
import grp
import imaplib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .certs import self_signed
from .processes import terminate

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
USERS = 200  # mailboxes one test session may use


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Mailbox:
    """One test user's mailbox on the server."""

    host: str
    port: int
    user: str
    password: str
    tls_port: int  # implicit TLS (imaps), with the certificate below
    cert: Path

    @contextlib.contextmanager
    def client(self) -> Iterator[imaplib.IMAP4]:
        client = imaplib.IMAP4(self.host, self.port, timeout=10)
        try:
            client.login(self.user, self.password)
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.logout()

    def deliver(self, raw: bytes, folder: str = "INBOX") -> None:
        with self.client() as client:
            status, _ = client.append(folder, None, None, raw)
            assert status == "OK"

    def messages(self, folder: str = "INBOX") -> list[tuple[bytes, bytes]]:
        """(flags, message) of every message in ``folder`` (flags include \\Seen if read)."""
        with self.client() as client:
            status, _ = client.select(folder, readonly=True)
            if status != "OK":
                return []
            _, found = client.uid("search", None, "ALL")
            out = []
            for uid in found[0].split():
                _, data = client.uid("fetch", uid, "(FLAGS BODY.PEEK[])")
                first = data[0]
                assert isinstance(first, tuple)
                out.append((first[0], first[1]))
            return out


class Dovecot:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.tls_port = _free_port()
        self.passwd = root / "passwd"
        self.cert = root / "cert.pem"  # self-signed for 127.0.0.1: tests trust it as a CA
        self.proc: subprocess.Popen[bytes] | None = None
        self.users: list[tuple[str, str]] = []

    def _config(self) -> str:
        root = self.root
        if os.geteuid() == 0:
            login_user, internal_user = "dovenull", "dovecot"
            mail_uid, mail_gid = pwd.getpwnam("dovecot").pw_uid, grp.getgrnam("dovecot").gr_gid
        else:
            login_user = internal_user = pwd.getpwuid(os.getuid()).pw_name
            mail_uid, mail_gid = os.getuid(), os.getgid()
        home = root / "home"
        home.mkdir()
        os.chown(home, mail_uid, mail_gid)
        return f"""
base_dir = {root}/run
state_dir = {root}/state
instance_name = notifier-test-{uuid.uuid4().hex[:8]}
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{self.cert}
ssl_key = <{root}/key.pem
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = {internal_user}
default_login_user = {login_user}
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:{home}/%u/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.passwd}
}}
userdb {{
  driver = static
  args = uid={mail_uid} gid={mail_gid} home={home}/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.tls_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
"""

    def start(self) -> Dovecot:
        (self.root / "run").mkdir()
        (self.root / "state").mkdir()
        # Every user is there from the start: Dovecot may miss a passwd-file changed twice
        # within a second.
        self.users = [(f"bounces{i}", uuid.uuid4().hex) for i in range(USERS)]
        self.passwd.write_text("".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in self.users))
        self_signed(self.root / "key.pem", self.cert)
        config = self.root / "dovecot.conf"
        config.write_text(self._config())
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock,
            ):
                if sock.recv(100).startswith(b"* OK"):
                    return self
            time.sleep(0.1)
        log = self.root / "dovecot.log"
        self.stop()
        raise RuntimeError(f"Dovecot did not start: {log.read_text() if log.exists() else ''}")

    def mailbox(self) -> Mailbox:
        """A user with an empty mailbox, not handed out before."""
        if not self.users:
            raise RuntimeError(f"all {USERS} test users of this Dovecot are used")
        user, password = self.users.pop()
        return Mailbox("127.0.0.1", self.port, user, password, self.tls_port, self.cert)

    def stop(self) -> None:
        terminate(self.proc)


@pytest.fixture(scope="session")
def dovecot_server() -> Iterator[Dovecot]:
    if not os.path.exists(DOVECOT):
        reason = "Dovecot is not installed (apt-get install dovecot-imapd)"
        if os.environ.get("NOTIFIER_REQUIRE_IMAP") == "1":
            pytest.fail(f"NOTIFIER_REQUIRE_IMAP=1, but {reason}", pytrace=False)
        pytest.skip(reason)
    # Not under pytest's tmp_path: the unprivileged Dovecot processes must reach it.
    root = Path(tempfile.mkdtemp(prefix="notifier-dovecot-"))
    root.chmod(0o755)
    server = Dovecot(root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def mailbox(dovecot_server: Dovecot) -> Mailbox:
    return dovecot_server.mailbox()
