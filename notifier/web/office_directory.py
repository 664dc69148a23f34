"""Office login through the Kreis's directory, on the console's login page: LDAP with the
login form (:func:`ldap_login`, called by the form's handler) and OpenID Connect with a button
that leads to the provider and a route the provider sends the browser back to.

The directory clients live in :mod:`notifier.auth`; this module turns their answers into
sessions, throttling and German pages."""

from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import datetime
from typing import TYPE_CHECKING

from fastapi import Request, Response
from fastapi.responses import RedirectResponse

from .. import audit
from ..accounts import forget_failures, login_wait, record_failure
from ..auth.common import DirectoryError, DirectoryUser, LoginRefused
from ..auth.users import sign_in
from ..db.directory import local_user_exists
from .officekit import next_page, router
from .request import WebContext, context_of, page

if TYPE_CHECKING:
    from ..auth.ldap import LdapDirectory
    from ..auth.oidc import OidcClient

logger = logging.getLogger(__name__)

FAILED = "Anmeldung über das Verzeichnis fehlgeschlagen"
# A failed login waits this long before the answer: guessing gets slow even before throttling.
FAILED_LOGIN_DELAY = 0.5
CALLBACK = "/buero/anmelden/oidc"
PENDING_KEY = "oidc_pending"


def ldap_directory(ctx: WebContext) -> LdapDirectory | None:
    settings = ctx.settings.auth.ldap
    if not settings.enabled:
        return None
    # Imported here: ldap3 and authlib cost every web process a moment at start, needed only
    # where the directory login is configured.
    from ..auth.ldap import LdapDirectory

    found = ctx.extra.get("ldap")
    if not isinstance(found, LdapDirectory):
        ca = ctx.settings.path(settings.ca_file) if settings.ca_file else None
        found = ctx.extra["ldap"] = LdapDirectory(settings, ca_file=ca)
    return found


def oidc_client(ctx: WebContext) -> OidcClient | None:
    if not ctx.settings.auth.oidc.enabled:
        return None
    from ..auth.oidc import OidcClient

    found = ctx.extra.get("oidc")
    if not isinstance(found, OidcClient):
        found = ctx.extra["oidc"] = OidcClient(ctx.settings.auth.oidc)
    return found


def login_page(
    request: Request,
    *,
    name: str = "",
    error: str = "",
    next_target: str = "/buero",
    message: str = "",
    status: int = 200,
) -> Response:
    """The login page, with the directory's button and hints where configured."""
    ctx = context_of(request)
    oidc = ctx.settings.auth.oidc
    return page(
        request,
        "office/login.html",
        {
            "name": name,
            "error": error,
            "next": next_target,
            "message": message,
            "ldap": ctx.settings.auth.ldap.enabled,
            "oidc_label": oidc.button_label if oidc.enabled else "",
        },
        status=status,
    )


def start_session(request: Request, user_id: int, user_name: str, now: datetime) -> None:
    """A new session for the logged-in user: nothing of the anonymous one carries over."""
    request.session.clear()
    request.session.update(
        {
            "user_id": user_id,
            "user_name": user_name,
            "csrf": secrets.token_urlsafe(32),
            "login_at": now.timestamp(),
        }
    )


async def _signed_in(
    request: Request, found: DirectoryUser, *, client: str, now: datetime, throttle_name: str
) -> tuple[int, str]:
    """Makes or updates the user's row, notes the login; raises LoginRefused."""
    ctx = context_of(request)
    async with ctx.db.transaction() as session:
        user = await sign_in(session, found, now=now)
        if throttle_name:
            await forget_failures(session, client, throttle_name)
        await audit.record(
            session,
            f"office:{user.name}",
            "login",
            "user",
            user.id,
            {"ip": client, "source": found.source},
        )
        return user.id, user.name


async def ldap_login(
    request: Request, name: str, password: str, target: str, *, client: str
) -> Response | None:
    """The answer to the login form through LDAP; None when LDAP is off or a local account
    (the emergency login) has the name, which then logs in as before."""
    ctx = context_of(request)
    directory = ldap_directory(ctx)
    if directory is None or not name:
        return None
    now = ctx.clock()
    async with ctx.db.transaction() as session:
        if await local_user_exists(session, name):
            return None
        wait_until = await login_wait(session, client, name, now=now)
    if wait_until is not None:
        return None  # the local check answers with the wait, as for any name
    error, status = "", 401
    try:
        found = await directory.authenticate(name, password)
        user_id, user_name = await _signed_in(
            request, found, client=client, now=now, throttle_name=name
        )
    except LoginRefused as exc:
        logger.warning("LDAP login refused for %r: %s", name, exc.reason)
        async with ctx.db.transaction() as session:
            await record_failure(session, client, name, settings=ctx.settings.web, now=now)
        error = (
            f"{FAILED}: Name oder Passwort ist nicht richtig, oder der Zugang gehört nicht zur "
            "Gruppe des Projektbüros."
        )
    except DirectoryError as exc:
        logger.error("LDAP login of %r failed: %s", name, exc)
        error = (
            f"{FAILED}: Der Verzeichnisdienst ist nicht erreichbar. Bitte versuchen Sie es "
            "später noch einmal; im Notfall hilft ein lokaler Zugang der IT."
        )
        status = 503
    else:
        start_session(request, user_id, user_name, now)
        return RedirectResponse(target, 303)
    await asyncio.sleep(FAILED_LOGIN_DELAY)
    return login_page(request, name=name, error=error, next_target=target, status=status)


# -- OpenID Connect --------------------------------------------------------------------------


@router.get("/anmelden/verzeichnis")
async def oidc_start(request: Request, weiter: str = "") -> Response:
    """Sends the browser to the provider's login, with state, nonce and the PKCE challenge."""
    ctx = context_of(request)
    client = oidc_client(ctx)
    if client is None:
        return RedirectResponse("/buero/anmelden", 303)
    target = next_page(weiter)
    try:
        url, pending = await client.start(ctx.settings.mail.public_base_url + CALLBACK, target)
    except DirectoryError as exc:
        logger.error("OpenID login could not start: %s", exc)
        return login_page(
            request,
            error=(
                f"{FAILED}: Der Anmeldedienst der Kreisverwaltung ist nicht erreichbar. Bitte "
                "versuchen Sie es später noch einmal."
            ),
            next_target=target,
            status=503,
        )
    request.session[PENDING_KEY] = pending.as_dict()
    return RedirectResponse(url, 303)


@router.get("/anmelden/oidc")
async def oidc_return(request: Request) -> Response:
    """Where the provider sends the browser back: checks everything, then logs in."""
    ctx = context_of(request)
    client = oidc_client(ctx)
    if client is None:
        return RedirectResponse("/buero/anmelden", 303)
    from ..auth.oidc import PendingLogin

    pending = PendingLogin.from_dict(request.session.pop(PENDING_KEY, None))
    target = pending.next if pending is not None else "/buero"
    params = {k: v[:4000] for k, v in request.query_params.items()}
    now = ctx.clock()
    host = request.client.host if request.client else "unbekannt"
    try:
        found = await client.finish(pending, params, ctx.settings.mail.public_base_url + CALLBACK)
        user_id, user_name = await _signed_in(
            request, found, client=host, now=now, throttle_name=""
        )
    except LoginRefused as exc:
        logger.warning("OpenID login refused: %s", exc.reason)
        error = (
            f"{FAILED}: Ihr Zugang gehört nicht zur Gruppe des Projektbüros, oder die Anmeldung "
            "wurde abgebrochen oder ist abgelaufen. Bitte versuchen Sie es noch einmal."
        )
        status = 403
    except DirectoryError as exc:
        logger.error("OpenID login failed: %s", exc)
        error = (
            f"{FAILED}: Der Anmeldedienst der Kreisverwaltung hat nicht wie erwartet "
            "geantwortet. Bitte versuchen Sie es später noch einmal."
        )
        status = 502
    else:
        start_session(request, user_id, user_name, now)
        return RedirectResponse(next_page(target), 303)
    return login_page(request, error=error, next_target=target, status=status)
