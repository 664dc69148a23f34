"""OpenID Connect login (Keycloak, ADFS): the authorization code flow with PKCE (S256), state
and nonce, a client secret sent with HTTP Basic, the ID token's signature checked against the
provider's keys and its claims (issuer, audience, expiry, nonce, at_hash) by authlib.

The provider's configuration and keys are read on first use and kept; an ID token signed with
a key not seen before makes the keys be read again (key rotation). Every request has a timeout
and a size limit (``[auth.oidc] timeout``).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import httpx
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from ..config import OidcSettings, _loopback_host
from .common import DirectoryError, DirectoryUser, LoginRefused

logger = logging.getLogger(__name__)

MAX_RESPONSE = 1_000_000  # bytes of one answer of the provider
PENDING_SECONDS = 600  # a login started must come back within this time
LEEWAY = 120  # seconds of clock difference allowed for the token's times


@dataclass(frozen=True)
class PendingLogin:
    """What a started login keeps in the (signed) session until the provider sends the user
    back: compared with what comes back, then dropped."""

    state: str
    nonce: str
    verifier: str
    next: str
    started: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> PendingLogin | None:
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                str(data["state"]),
                str(data["nonce"]),
                str(data["verifier"]),
                str(data["next"]),
                float(data["started"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


class OidcClient:
    """The Kreis's OpenID provider, as configured in ``[auth.oidc]``."""

    def __init__(self, settings: OidcSettings) -> None:
        self.settings = settings
        self._metadata: dict[str, Any] | None = None
        self._keys: dict[str, Any] | None = None

    # -- talking to the provider ---------------------------------------------------------------

    def _check_url(self, url: object, what: str) -> str:
        if not isinstance(url, str):
            raise DirectoryError(f"OpenID {self.settings.issuer}: no {what} in its configuration")
        parts = urlsplit(url)
        if parts.scheme != "https" and not (
            parts.scheme == "http" and _loopback_host(parts.hostname or "")
        ):
            raise DirectoryError(f"OpenID {self.settings.issuer}: {what} is not https ({url})")
        return url

    async def _request(self, method: str, url: str, **kwargs: Any) -> Any:
        """The JSON answer of one request; DirectoryError for anything else."""
        try:
            async with (
                httpx.AsyncClient(timeout=self.settings.timeout, follow_redirects=False) as client,
                client.stream(method, url, **kwargs) as response,
            ):
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_RESPONSE:
                        raise DirectoryError(f"OpenID {url}: answer larger than {MAX_RESPONSE} B")
        except httpx.HTTPError as exc:
            raise DirectoryError(f"OpenID {url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            # The body may name the error (invalid_grant …); it holds no secret of ours.
            raise DirectoryError(f"OpenID {url}: HTTP {response.status_code}: {body[:300]!r}")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise DirectoryError(f"OpenID {url}: the answer is not JSON") from exc

    async def metadata(self) -> dict[str, Any]:
        """The provider's configuration (``/.well-known/openid-configuration``)."""
        if self._metadata is None:
            issuer = self.settings.issuer.rstrip("/")
            found = await self._request("GET", f"{issuer}/.well-known/openid-configuration")
            if not isinstance(found, dict) or found.get("issuer") != self.settings.issuer:
                raise DirectoryError(
                    f"OpenID {self.settings.issuer}: the configuration names another issuer"
                )
            for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                self._check_url(found.get(key), key)
            if found.get("userinfo_endpoint") is not None:
                self._check_url(found["userinfo_endpoint"], "userinfo_endpoint")
            self._metadata = found
        return self._metadata

    async def _key_set(self, *, fresh: bool = False) -> KeySet:
        if self._keys is None or fresh:
            meta = await self.metadata()
            found = await self._request("GET", meta["jwks_uri"])
            if not isinstance(found, dict):
                raise DirectoryError(f"OpenID {meta['jwks_uri']}: not a key set")
            self._keys = found
        try:
            return KeySet.import_key_set(self._keys)  # type: ignore[arg-type]
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            raise DirectoryError(f"OpenID {self.settings.issuer}: unusable keys: {exc}") from exc

    # -- the flow ------------------------------------------------------------------------------

    async def start(self, redirect_uri: str, next_page: str) -> tuple[str, PendingLogin]:
        """The provider's address to send the browser to, and what to keep until it returns."""
        meta = await self.metadata()
        pending = PendingLogin(
            state=generate_token(32),
            nonce=generate_token(32),
            verifier=generate_token(64),
            next=next_page,
            started=time.time(),
        )
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.settings.client_id,
                "redirect_uri": redirect_uri,
                "scope": " ".join(self.settings.scopes),
                "state": pending.state,
                "nonce": pending.nonce,
                "code_challenge": create_s256_code_challenge(pending.verifier),
                "code_challenge_method": "S256",
            }
        )
        endpoint: str = meta["authorization_endpoint"]
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}", pending

    async def finish(
        self, pending: PendingLogin | None, params: Mapping[str, str], redirect_uri: str
    ) -> DirectoryUser:
        """The user the provider sent back, after checking state, exchanging the code (with
        the PKCE verifier), checking the ID token and the office's group.

        Raises :class:`LoginRefused` for a flow that does not match or a user outside the
        group, :class:`DirectoryError` when the provider cannot be asked or answers wrongly."""
        s = self.settings
        if pending is None or time.time() - pending.started > PENDING_SECONDS:
            raise LoginRefused("no login started in this session, or started too long ago")
        state = params.get("state", "")
        if not hmac.compare_digest(state.encode(), pending.state.encode()):
            raise LoginRefused("state does not match")
        if params.get("error"):
            raise LoginRefused(f"the provider answered {params['error'][:100]!r}")
        code = params.get("code", "")
        if not code or len(code) > 2000:
            raise LoginRefused("no code")
        meta = await self.metadata()
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": pending.verifier,
        }
        secret = s.client_secret.get_secret_value()
        if secret:
            # RFC 6749 2.3.1: both parts form-encoded before Basic encoding.
            basic = httpx.BasicAuth(quote(s.client_id, safe=""), quote(secret, safe=""))
            token = await self._request("POST", meta["token_endpoint"], data=data, auth=basic)
        else:
            data["client_id"] = s.client_id
            token = await self._request("POST", meta["token_endpoint"], data=data)
        if not isinstance(token, dict) or not isinstance(token.get("id_token"), str):
            raise DirectoryError(f"OpenID {s.issuer}: the token answer has no ID token")
        claims = await self._id_token_claims(token, pending.nonce)
        if (s.group_claim not in claims or s.name_claim not in claims) and meta.get(
            "userinfo_endpoint"
        ):
            info = await self._request(
                "GET",
                meta["userinfo_endpoint"],
                headers={"Authorization": f"Bearer {token.get('access_token', '')}"},
            )
            if isinstance(info, dict) and info.get("sub") == claims["sub"]:
                claims = {**info, **claims}
        groups = claims.get(s.group_claim)
        if isinstance(groups, str):
            groups = [groups]
        if not isinstance(groups, list) or s.group not in groups:
            raise LoginRefused(f"subject {claims['sub']!r} is not in the group {s.group!r}")
        name = claims.get(s.name_claim)
        if not isinstance(name, str) or not name.strip():
            name = str(claims["sub"])
        email = claims.get("email")
        return DirectoryUser(
            "oidc",
            f"{s.issuer}|{claims['sub']}",
            name.strip()[:100],
            email if isinstance(email, str) else "",
        )

    async def _id_token_claims(self, token: dict[str, Any], nonce: str) -> dict[str, Any]:
        meta = await self.metadata()
        algorithms = meta.get("id_token_signing_alg_values_supported") or ["RS256"]
        algorithms = [a for a in algorithms if a != "none"]
        registry = JWSRegistry(algorithms=algorithms, strict_check_header=False)
        try:
            try:
                decoded = jwt.decode(token["id_token"], await self._key_set(), registry=registry)
            except JoseError:
                # A key the provider added since we read the keys: read them once more.
                decoded = jwt.decode(
                    token["id_token"], await self._key_set(fresh=True), registry=registry
                )
        except (JoseError, ValueError) as exc:
            raise DirectoryError(f"OpenID {self.settings.issuer}: ID token refused: {exc}") from exc
        client_id = self.settings.client_id
        claims = CodeIDToken(
            decoded.claims,
            decoded.header,
            {
                "iss": {"essential": True, "values": [self.settings.issuer]},
                "aud": {"essential": True, "values": [client_id]},
            },
            {"nonce": nonce, "client_id": client_id, "access_token": token.get("access_token")},
        )
        try:
            # Issuer, audience, expiry, nonce, azp and at_hash.
            claims.validate(leeway=LEEWAY)
        except (JoseError, ValueError) as exc:
            raise LoginRefused(f"ID token refused: {exc}") from exc
        if not isinstance(claims.get("sub"), str):
            raise DirectoryError(f"OpenID {self.settings.issuer}: the ID token has no subject")
        return dict(claims)
