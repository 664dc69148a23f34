"""Office login with OpenID Connect against a real provider (the certified oidc-provider, see
tests/oidc_provider.py) and a real ``notifier run``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from notifier.auth import DirectoryError, LoginRefused, OidcClient, PendingLogin
from notifier.auth.oidc import PENDING_SECONDS
from notifier.config import OidcSettings, load_settings
from notifier.db import Database
from notifier.db.models import AuditEntry, User
from notifier.errors import ConfigError

from .conftest import Project, Web, free_port
from .oidc_provider import OidcProvider, oidc_provider

__all__ = ["oidc_provider"]

FAILED = "Anmeldung über das Verzeichnis fehlgeschlagen"


def _site(web: Callable[..., Web], provider: OidcProvider, **changes: object) -> Web:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    return web(
        {
            "web": {"port": port},
            "mail": {"public_base_url": base},
            "auth": {"oidc": provider.auth_config(base, **changes)},
        },
        seed=False,
    )


def _start(site: Web) -> str:
    """The provider's address the login button leads to."""
    answer = site.client.get("/buero/anmelden/verzeichnis?weiter=/buero/abonnenten")
    assert answer.status_code == 303, answer.text
    return answer.headers["location"]


async def _rows(project: Project) -> tuple[list[User], list[AuditEntry]]:
    db = Database(project.settings.database_url)
    try:
        async with db.reading() as session:
            users = list(await session.scalars(select(User).order_by(User.id)))
            entries = list(await session.scalars(select(AuditEntry).order_by(AuditEntry.id)))
    finally:
        await db.engine.dispose()
    return users, entries


def test_a_member_of_the_group_logs_in_through_the_provider(
    web: Callable[..., Web], project: Project, oidc_provider: OidcProvider
) -> None:
    site = _site(web, oidc_provider)
    page = site.client.get("/buero/anmelden").text
    assert "Mit dem Konto der Kreisverwaltung anmelden" in page
    url = _start(site)
    query = parse_qs(urlsplit(url).query)
    assert url.startswith(oidc_provider.issuer + "/auth?")
    assert query["code_challenge_method"] == ["S256"]
    assert query["redirect_uri"] == [site.base + "/buero/anmelden/oidc"]
    assert len(query["state"][0]) >= 32 and len(query["nonce"][0]) >= 32
    back = oidc_provider.log_in(url, "anna")
    assert back.startswith(site.base + "/buero/anmelden/oidc?")
    answer = site.client.get(back)
    assert (answer.status_code, answer.headers.get("location")) == (303, "/buero/abonnenten")
    assert site.client.get("/buero").status_code == 200
    # The same answer of the provider cannot be used twice (the state is spent).
    again = site.client.get(back)
    assert again.status_code == 403
    assert FAILED in again.text

    users, entries = asyncio.run(_rows(project))
    assert [(u.name, u.source, u.external_id, u.email, u.password_hash) for u in users] == [
        ("anna", "oidc", f"{oidc_provider.issuer}|anna", "anna@kreis.example", "")
    ]
    assert [(e.actor, e.action) for e in entries if e.entity == "user"] == [
        ("office:anna", "add"),
        ("office:anna", "login"),
    ]
    secret = project.settings.auth.oidc.client_secret.get_secret_value()
    assert secret not in site.running.output


def test_a_user_outside_the_group_is_refused_in_german(
    web: Callable[..., Web], project: Project, oidc_provider: OidcProvider
) -> None:
    site = _site(web, oidc_provider)
    answer = site.client.get(oidc_provider.log_in(_start(site), "bernd"))
    assert answer.status_code == 403
    assert FAILED in answer.text
    assert "nicht zur Gruppe des Projektbüros" in answer.text
    assert site.client.get("/buero").status_code == 303
    assert asyncio.run(_rows(project))[0] == []


def test_an_answer_for_another_session_or_state_is_refused(
    web: Callable[..., Web], oidc_provider: OidcProvider
) -> None:
    site = _site(web, oidc_provider)
    back = oidc_provider.log_in(_start(site), "anna")
    # Another browser (no login started there) brings the same answer: refused.
    with Web(site.project, site.running, site.base).client as other:
        assert other.get(back).status_code == 403
    # The right session, but the state changed.
    site.client.get("/buero/anmelden/verzeichnis")
    forged = back.replace("state=", "state=x")
    answer = site.client.get(forged)
    assert answer.status_code == 403
    assert FAILED in answer.text
    assert site.client.get("/buero").status_code == 303


def test_a_wrong_client_secret_is_a_failed_directory_login(
    web: Callable[..., Web], oidc_provider: OidcProvider
) -> None:
    site = _site(web, oidc_provider, client_secret="nicht-das-geheimnis")
    answer = site.client.get(oidc_provider.log_in(_start(site), "anna"))
    assert answer.status_code == 502
    assert FAILED in answer.text
    assert "nicht-das-geheimnis" not in site.running.output


def test_an_unreachable_provider_is_reported_on_the_login_page(
    web: Callable[..., Web], oidc_provider: OidcProvider
) -> None:
    site = _site(web, oidc_provider, issuer=f"http://127.0.0.1:{free_port()}", timeout=2)
    answer = site.client.get("/buero/anmelden/verzeichnis")
    assert answer.status_code == 503
    assert FAILED in answer.text


@pytest.mark.parametrize(
    ("issuer", "allowed"),
    [
        ("https://keycloak.kreis.example/realms/kreis", True),
        ("http://127.0.0.1:8081", True),
        ("http://localhost:8081/realms/kreis", True),
        ("http://keycloak.kreis.example/realms/kreis", False),
        ("ftp://keycloak.kreis.example", False),
    ],
)
def test_only_https_issuers_are_accepted_except_on_loopback(
    project: Project, issuer: str, allowed: bool
) -> None:
    section = {"enabled": True, "issuer": issuer, "client_id": "notifier", "group": "g"}
    project.write_config({"auth": {"oidc": section}})
    if allowed:
        assert load_settings(project.config, environ={}).auth.oidc.issuer == issuer
    else:
        with pytest.raises(ConfigError, match="https"):
            load_settings(project.config, environ={})


def test_the_secrets_may_come_from_the_environment(project: Project) -> None:
    section = {"enabled": True, "issuer": "https://idp.example", "client_id": "n", "group": "g"}
    project.write_config({"auth": {"oidc": section}})
    settings = load_settings(
        project.config,
        environ={
            "NOTIFIER_AUTH__OIDC__CLIENT_SECRET": "aus-der-umgebung",
            "NOTIFIER_AUTH__LDAP__BIND_PASSWORD": "auch-aus-der-umgebung",
        },
    )
    assert settings.auth.oidc.client_secret.get_secret_value() == "aus-der-umgebung"
    assert settings.auth.ldap.bind_password.get_secret_value() == "auch-aus-der-umgebung"
    assert "aus-der-umgebung" not in repr(settings)


# -- the client on its own: what the provider's answers are checked against --------------------


def _client_login(provider: OidcProvider) -> tuple[OidcClient, PendingLogin, dict[str, str], str]:
    """A login through the provider up to its answer (not yet exchanged)."""
    redirect = f"http://127.0.0.1:{free_port()}/buero/anmelden/oidc"
    section = provider.auth_config(redirect.removesuffix("/buero/anmelden/oidc"))
    client = OidcClient(OidcSettings.model_validate(section))
    url, pending = asyncio.run(client.start(redirect, "/buero"))
    back = provider.log_in(url, "anna")
    params = {k: v[0] for k, v in parse_qs(urlsplit(back).query).items()}
    return client, pending, params, redirect


def test_the_client_finishes_a_login_and_names_the_user(oidc_provider: OidcProvider) -> None:
    client, pending, params, redirect = _client_login(oidc_provider)
    found = asyncio.run(client.finish(pending, params, redirect))
    assert (found.source, found.name, found.email) == ("oidc", "anna", "anna@kreis.example")
    assert found.external_id == f"{oidc_provider.issuer}|anna"


def test_an_id_token_for_another_nonce_is_refused(oidc_provider: OidcProvider) -> None:
    client, pending, params, redirect = _client_login(oidc_provider)
    with pytest.raises(LoginRefused, match="nonce"):
        asyncio.run(client.finish(replace(pending, nonce="ein-anderer-nonce"), params, redirect))


def test_a_code_without_its_pkce_verifier_is_refused_by_the_provider(
    oidc_provider: OidcProvider,
) -> None:
    client, pending, params, redirect = _client_login(oidc_provider)
    with pytest.raises(DirectoryError, match="invalid_grant"):
        asyncio.run(client.finish(replace(pending, verifier="x" * 64), params, redirect))


def test_a_login_that_came_back_too_late_is_refused(oidc_provider: OidcProvider) -> None:
    client, pending, params, redirect = _client_login(oidc_provider)
    stale = replace(pending, started=pending.started - PENDING_SECONDS - 1)
    with pytest.raises(LoginRefused, match="too long ago"):
        asyncio.run(client.finish(stale, params, redirect))
