"""Office login with LDAP against a real OpenLDAP (tests/slapd.py): the directory client on
its own, then the login form of a real ``notifier run``."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import pytest
from sqlalchemy import select

from notifier.auth import DirectoryError, LdapDirectory, LoginRefused
from notifier.config import LdapSettings
from notifier.db import Database
from notifier.db.models import AuditEntry, User

from .conftest import Project, Web
from .slapd import GROUP_DN, Slapd, free_port, slapd_server

__all__ = ["slapd_server"]


def directory(server: Slapd, **changes: object) -> LdapDirectory:
    return LdapDirectory(LdapSettings.model_validate(server.auth_config(**changes)))


def test_a_member_of_the_group_is_found_with_dn_and_mail(slapd_server: Slapd) -> None:
    found = asyncio.run(
        directory(slapd_server).authenticate("Anna", slapd_server.passwords["anna"])
    )
    assert found.source == "ldap"
    assert found.external_id == slapd_server.user_dn("anna")
    assert found.name == "anna"
    assert found.email == "anna@kreis.example"


@pytest.mark.parametrize(
    ("name", "password", "reason"),
    [
        ("anna", "falsch-falsch-falsch", "wrong password"),
        ("anna", "", "empty"),  # an empty password would be an anonymous bind
        ("niemand", "egal-egal-egal", "0 entries"),
        ("*", "egal-egal-egal", "0 entries"),  # escaped: no wildcard search
        ("bernd", "Bernd-geheim-2026", "is not in"),
    ],
)
def test_wrong_password_unknown_name_or_outside_the_group_is_refused(
    slapd_server: Slapd, name: str, password: str, reason: str
) -> None:
    with pytest.raises(LoginRefused) as refused:
        asyncio.run(directory(slapd_server).authenticate(name, password))
    assert reason in refused.value.reason


def test_a_group_filter_for_active_directory_style_nesting_is_used_as_configured(
    slapd_server: Slapd,
) -> None:
    # OpenLDAP has no member:1.2.840.113556.1.4.1941: (AD's nested groups); a filter that
    # matches nobody shows the configured filter is the one searched.
    strict = directory(slapd_server, group_filter="(&(member={user_dn})(cn=andere-gruppe))")
    with pytest.raises(LoginRefused, match=re.escape(GROUP_DN)):
        asyncio.run(strict.authenticate("anna", slapd_server.passwords["anna"]))


def test_a_wrong_service_password_or_an_unreachable_server_is_a_directory_error(
    slapd_server: Slapd,
) -> None:
    wrong = directory(slapd_server, bind_password="nicht-das-passwort")
    with pytest.raises(DirectoryError) as failed:
        asyncio.run(wrong.authenticate("anna", slapd_server.passwords["anna"]))
    assert "nicht-das-passwort" not in str(failed.value)
    assert "service account" in str(failed.value)
    gone = directory(slapd_server, url=f"ldap://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(DirectoryError):
        asyncio.run(gone.authenticate("anna", slapd_server.passwords["anna"]))


def test_start_tls_and_ldaps_check_the_directorys_certificate(slapd_server: Slapd) -> None:
    password = slapd_server.passwords["anna"]
    ca = slapd_server.cert
    for url, start_tls in ((slapd_server.url, True), (slapd_server.tls_url, False)):
        trusted = LdapDirectory(
            LdapSettings.model_validate(slapd_server.auth_config(url=url, start_tls=start_tls)),
            ca_file=ca,
        )
        assert asyncio.run(trusted.authenticate("anna", password)).name == "anna"
        # Without the directory's CA (the system's CAs only) the certificate is refused.
        untrusted = directory(slapd_server, url=url, start_tls=start_tls)
        with pytest.raises(DirectoryError, match="certificate verify failed"):
            asyncio.run(untrusted.authenticate("anna", password))
    # The certificate names 127.0.0.1 only: "localhost" is another host.
    other_name = LdapDirectory(
        LdapSettings.model_validate(
            slapd_server.auth_config(url=f"ldaps://localhost:{slapd_server.tls_port}")
        ),
        ca_file=ca,
    )
    with pytest.raises(DirectoryError, match="certificate verify failed"):
        asyncio.run(other_name.authenticate("anna", password))


# -- the login form ----------------------------------------------------------------------------


def _log_in(site: Web, name: str, password: str) -> tuple[int, str, str]:
    token = site.csrf("/buero/anmelden")
    answer = site.client.post(
        "/buero/anmelden",
        data={"csrf_token": token, "name": name, "password": password, "next": "/buero"},
    )
    return answer.status_code, answer.headers.get("location", ""), answer.text


async def _users_and_audit(project: Project) -> tuple[list[User], list[AuditEntry]]:
    db = Database(project.settings.database_url)
    try:
        async with db.reading() as session:
            users = list(await session.scalars(select(User).order_by(User.id)))
            entries = list(await session.scalars(select(AuditEntry).order_by(AuditEntry.id)))
    finally:
        await db.engine.dispose()
    return users, entries


async def _deactivate(project: Project, name: str) -> None:
    db = Database(project.settings.database_url)
    try:
        async with db.transaction() as session:
            user = await session.scalar(select(User).where(User.name == name))
            assert user is not None
            user.active = False
    finally:
        await db.engine.dispose()


def test_the_office_logs_in_with_the_directory_and_gets_a_users_row(
    web: Callable[..., Web], project: Project, slapd_server: Slapd
) -> None:
    site = web({"auth": {"ldap": slapd_server.auth_config()}}, seed=False)
    status, _, text = _log_in(site, "bernd", slapd_server.passwords["bernd"])
    assert status == 401
    assert "Anmeldung über das Verzeichnis fehlgeschlagen" in text
    status, location, _ = _log_in(site, "anna", slapd_server.passwords["anna"])
    assert (status, location) == (303, "/buero")
    assert site.client.get("/buero").status_code == 200
    # A second login updates the row instead of making another.
    site.client.cookies.clear()
    assert _log_in(site, "ANNA", slapd_server.passwords["anna"])[:2] == (303, "/buero")

    users, entries = asyncio.run(_users_and_audit(project))
    assert [(u.name, u.source, u.external_id, u.password_hash) for u in users] == [
        ("anna", "ldap", slapd_server.user_dn("anna"), "")
    ]
    assert users[0].email == "anna@kreis.example"
    listed = project.cli("users", "list").output
    assert re.search(r"^anna +anna@kreis\.example +LDAP +aktiv", listed, re.M), listed
    logins = [(e.actor, e.action) for e in entries if e.entity == "user"]
    assert logins == [("office:anna", "add"), ("office:anna", "login"), ("office:anna", "login")]
    # Deactivated in notifier, the user stays out although the directory would let them in.
    asyncio.run(_deactivate(project, "anna"))
    site.client.cookies.clear()
    status, _, text = _log_in(site, "anna", slapd_server.passwords["anna"])
    assert status == 401
    assert "Anmeldung über das Verzeichnis fehlgeschlagen" in text
    # Nothing of the passwords reached the log.
    for secret in (slapd_server.service_password, *slapd_server.passwords.values()):
        assert secret not in site.running.output


def test_a_local_account_still_logs_in_and_a_directory_user_cannot_take_its_name(
    web: Callable[..., Web], project: Project, slapd_server: Slapd
) -> None:
    site = web({"auth": {"ldap": slapd_server.auth_config()}}, seed=False)
    project.cli("users", "add", "carla", "--password", "ein-langes-notfall-passwort")
    # The local account answers for its name (the emergency login) …
    status, location, _ = _log_in(site, "carla", "ein-langes-notfall-passwort")
    assert (status, location) == (303, "/buero")
    # … and the directory's carla does not log in as that account.
    site.client.cookies.clear()
    status, _, text = _log_in(site, "carla", slapd_server.passwords["carla"])
    assert status == 401
    assert "Name oder Passwort ist nicht richtig." in text


def test_failed_directory_logins_are_throttled_like_local_ones(
    web: Callable[..., Web], slapd_server: Slapd
) -> None:
    site = web(
        {"auth": {"ldap": slapd_server.auth_config()}, "web": {"login_max_failures": 2}},
        seed=False,
    )
    statuses = [_log_in(site, "anna", f"falsch-{i}")[0] for i in range(2)]
    assert statuses == [401, 401]
    # Beyond the limit even the right password waits: the directory is not asked.
    status, _, text = _log_in(site, "anna", slapd_server.passwords["anna"])
    assert status == 429
    assert "Zu viele fehlgeschlagene Anmeldungen" in text


def test_an_unreachable_directory_says_so_in_german_and_the_local_login_still_works(
    web: Callable[..., Web], project: Project, slapd_server: Slapd
) -> None:
    config = slapd_server.auth_config(url=f"ldap://127.0.0.1:{free_port()}", timeout=2)
    site = web({"auth": {"ldap": config}}, seed=False)
    status, _, text = _log_in(site, "anna", slapd_server.passwords["anna"])
    assert status == 503
    assert "Anmeldung über das Verzeichnis fehlgeschlagen" in text
    assert "nicht erreichbar" in text
    project.cli("users", "add", "notfall", "--password", "ein-langes-notfall-passwort")
    assert _log_in(site, "notfall", "ein-langes-notfall-passwort")[:2] == (303, "/buero")


def test_the_login_page_explains_the_directory_login(
    web: Callable[..., Web], slapd_server: Slapd
) -> None:
    site = web({"auth": {"ldap": slapd_server.auth_config()}}, seed=False)
    text = site.client.get("/buero/anmelden").text
    assert "Benutzernamen und Passwort der Kreisverwaltung" in text
    assert "Mit Benutzername und Passwort" not in text  # no OpenID button, no heading
