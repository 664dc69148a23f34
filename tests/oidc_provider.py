"""A real OpenID provider for tests: the certified ``oidc-provider`` npm package (tests/oidc/,
installed by ``npm ci --prefix tests/oidc``, which scripts/test runs) started with Node on a
loopback port. Its development login page accepts any password for the accounts of
tests/oidc/server.js (``anna`` in the office's group ``notifier-buero``, ``bernd`` not);
clients are registered per test (dynamic registration) with the test's redirect URI.

Without Node or the package the OpenID tests are skipped, unless NOTIFIER_REQUIRE_SSO=1 (CI).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest

from .processes import terminate
from .slapd import free_port, need_sso

HERE = Path(__file__).parent / "oidc"
NODE = shutil.which("node") or "/usr/bin/node"
GROUP = "notifier-buero"


@dataclass
class OidcProvider:
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OidcProvider:
        self.proc = subprocess.Popen(
            [NODE, str(HERE / "server.js"), str(self.port)],
            cwd=HERE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if any("listening on" in line for line in self.lines):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("oidc-provider did not start:\n" + "".join(self.lines))

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self) -> None:
        terminate(self.proc)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def register(self, redirect_uri: str) -> tuple[str, str]:
        """A new confidential client for ``redirect_uri``: (client_id, client_secret)."""
        answer = httpx.post(
            f"{self.issuer}/reg",
            json={
                "redirect_uris": [redirect_uri],
                "token_endpoint_auth_method": "client_secret_basic",
            },
            timeout=10,
        )
        answer.raise_for_status()
        data = answer.json()
        return data["client_id"], data["client_secret"]

    def auth_config(self, base_url: str, **changes: Any) -> dict[str, Any]:
        """The ``[auth.oidc]`` section of an application at ``base_url``, with a new client."""
        client_id, secret = self.register(base_url + "/buero/anmelden/oidc")
        return {
            "enabled": True,
            "issuer": self.issuer,
            "client_id": client_id,
            "client_secret": secret,
            "scopes": ["openid", "profile", "email", "groups"],
            "group_claim": "groups",
            "group": GROUP,
            "timeout": 5,
            **changes,
        }

    def log_in(self, url: str, account: str) -> str:
        """Goes through the provider's pages as a browser without JavaScript would (its login
        form, then its consent form) and returns the address it sends back to."""
        with httpx.Client(follow_redirects=False, timeout=10) as browser:
            for _ in range(20):
                if not url.startswith(self.issuer):
                    return url
                answer = browser.get(url)
                if answer.is_redirect:
                    url = urljoin(url, answer.headers["location"])
                    continue
                form = re.search(r'<form[^>]*action="([^"]+)"', answer.text)
                assert form is not None, answer.text
                fields = dict(
                    re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', answer.text)
                )
                if 'name="login"' in answer.text:
                    fields.update({"login": account, "password": "egal"})
                posted = browser.post(urljoin(url, form.group(1)), data=fields)
                assert posted.is_redirect, posted.text
                url = urljoin(url, posted.headers["location"])
        raise AssertionError("the provider did not send the browser back")


def _missing() -> str | None:
    if not Path(NODE).exists():
        return "Node.js is not installed (apt-get install nodejs npm)"
    if not (HERE / "node_modules" / "oidc-provider").exists():
        return "oidc-provider is not installed (npm ci --prefix tests/oidc)"
    return None


@pytest.fixture(scope="session")
def oidc_provider() -> Iterator[OidcProvider]:
    need_sso("the OpenID provider cannot run", _missing())
    provider = OidcProvider().start()
    try:
        yield provider
    finally:
        provider.stop()
