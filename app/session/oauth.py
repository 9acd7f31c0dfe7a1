"""The tenant as an OAuth 2.0 / OpenID Connect provider, through authlib's `AsyncOAuth2Client`.

authlib builds the authorization URL (PKCE `S256` challenge from our verifier), and makes
the code exchange, the refresh grant and the RFC 7009 revocation, authenticating the
Regular Web Application with `client_secret_post` (Auth0's default for that kind).

Each call uses a fresh `AsyncOAuth2Client`: authlib keeps the last token on the client
object, which must never be shared between two users' requests. Its requests go through
`SharedTransport` to the app's one `httpx.AsyncClient`, so they use its pool and limits
(and respx stubs in tests) and carry the same timeout as every other call to the tenant.
A session with a DPoP key (app/session/dpop.py) sends its grants through `ProofTransport`
instead, which adds the proof; a `use_dpop_nonce` answer is tried once more, with the
nonce the tenant named.

Errors: an OAuth error answer (`invalid_grant` and the like) is `GrantRefused`; no answer,
a 429 or a 5xx is `UpstreamUnavailable` (503 + Retry-After); anything else unreadable is
`UpstreamError` (502). Messages never quote a token or the tenant's body.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from app.core.errors import UpstreamError, UpstreamUnavailable
from app.core.settings import Settings
from app.session.dpop import ProofTransport, SessionKey, TenantNonce

with warnings.catch_warnings():
    # authlib 1.x warns on import that it prefers `httpx2`; it falls back to httpx, which is
    # what the app uses (app/audit/signing.py silences its other 1.x warning the same way).
    import authlib.deprecate

    warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError

logger = logging.getLogger(__name__)

SCOPE = "openid profile email offline_access"
RETRY_AFTER_SECONDS = 5
# OAuth error codes that say "not now" rather than "no": the session is kept, the caller
# gets a 503.
_ERROR_CODE = re.compile(r"[a-z_]{1,64}")
_TRANSIENT = frozenset({"temporarily_unavailable", "server_error", "too_many_requests"})


class GrantRefused(Exception):
    """The tenant refused a grant (e.g. `invalid_grant`: a reused or revoked refresh token)."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


class SharedTransport(httpx.AsyncBaseTransport):
    """Sends authlib's requests through the app's shared client; closing it closes nothing."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._client.send(request, stream=True)


@dataclass(frozen=True, slots=True)
class TokenSet:
    """What the token endpoint answered (values are secrets: never log them)."""

    access_token: str
    expires_in: float
    refresh_token: str | None
    id_token: str | None
    token_type: str = "Bearer"  # noqa: S105 - a scheme's name

    @property
    def bound(self) -> bool:
        """Whether the tenant bound the tokens to the DPoP key the grant was sent with."""
        return self.token_type.lower() == "dpop"


class TenantOAuth:
    """The session client's calls to the tenant; one per process."""

    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        if settings.sessions.client_id is None or settings.sessions.client_secret is None:
            raise ValueError("cookie sessions are off (SESSION_CLIENT_ID is unset)")
        self.client_id = settings.sessions.client_id
        self._secret = settings.sessions.client_secret
        self.redirect_uri = f"{settings.server.public_url}/auth/callback"
        self.audience = settings.auth0.audience
        self.base = settings.auth0.tenant_url
        self._http = http
        self._timeout = httpx.Timeout(
            settings.auth0.timeout_seconds, connect=min(settings.auth0.timeout_seconds, 2.0)
        )
        self.dpop_nonce = TenantNonce()

    def _client(self, key: SessionKey | None = None) -> AsyncOAuth2Client:
        transport: httpx.AsyncBaseTransport = (
            SharedTransport(self._http)
            if key is None
            else ProofTransport(self._http, key, self.dpop_nonce)
        )
        return AsyncOAuth2Client(
            client_id=self.client_id,
            client_secret=self._secret.get_secret_value(),
            token_endpoint_auth_method="client_secret_post",  # noqa: S106 - a method name
            revocation_endpoint_auth_method="client_secret_post",
            scope=SCOPE,
            redirect_uri=self.redirect_uri,
            code_challenge_method="S256",
            transport=transport,
            timeout=self._timeout,
            follow_redirects=False,
            trust_env=False,
        )

    def authorization_url(
        self, *, state: str, nonce: str, code_verifier: str, extra: dict[str, str]
    ) -> str:
        """The tenant's `/authorize` URL: code flow, PKCE S256, state, nonce, our audience."""
        client = self._client()
        url, _ = client.create_authorization_url(
            f"{self.base}/authorize",
            state=state,
            code_verifier=code_verifier,
            nonce=nonce,
            audience=self.audience,
            **extra,
        )
        return str(url)

    async def exchange_code(
        self, code: str, code_verifier: str, key: SessionKey | None = None
    ) -> TokenSet:
        """The `authorization_code` grant, with the PKCE verifier (and a proof of `key`)."""

        def call(client: AsyncOAuth2Client) -> Any:
            return client.fetch_token(
                f"{self.base}/oauth/token",
                grant_type="authorization_code",
                code=code,
                code_verifier=code_verifier,
            )

        return _token_set(await self._grant("code exchange", call, key))

    async def refresh(
        self,
        refresh_token: str,
        key: SessionKey | None = None,
        *,
        audience: str | None = None,
        scope: str | None = None,
    ) -> TokenSet:
        """The `refresh_token` grant (with a proof of `key`); the tenant rotates the refresh
        token. `audience` (and `scope`) ask for a token for another API with the same refresh
        token (Auth0's multi-resource refresh tokens, app/remote)."""
        extra = {"audience": audience} if audience else {}
        if scope:
            extra["scope"] = scope

        def call(client: AsyncOAuth2Client) -> Any:
            return client.refresh_token(f"{self.base}/oauth/token", refresh_token, **extra)

        return _token_set(await self._grant("refresh", call, key))

    async def _grant(
        self,
        what: str,
        call: Callable[[AsyncOAuth2Client], Any],
        key: SessionKey | None,
    ) -> Any:
        try:
            return await self._once(what, call, key)
        except GrantRefused as exc:
            # RFC 9449 section 8: the tenant wants its nonce in the proof; the transport
            # has kept the one it named.
            if exc.error != "use_dpop_nonce" or key is None:
                raise
        return await self._once(what, call, key)

    async def _once(
        self,
        what: str,
        call: Callable[[AsyncOAuth2Client], Any],
        key: SessionKey | None,
    ) -> Any:
        async with self._client(key) as client:
            return await self._call(what, call(client))

    async def revoke(self, refresh_token: str) -> None:
        """RFC 7009 revocation of a refresh token (Auth0's `/oauth/revoke`)."""
        async with self._client() as client:
            response = await self._call(
                "revocation",
                client.revoke_token(
                    f"{self.base}/oauth/revoke",
                    refresh_token,
                    token_type_hint="refresh_token",  # noqa: S106 - a hint's name, not a secret
                ),
            )
        if response.status_code != 200:
            raise UpstreamError(f"the tenant answered the revocation with {response.status_code}")

    async def _call(self, what: str, call: Any) -> Any:
        try:
            return await call
        except OAuthError as exc:
            error = str(getattr(exc, "error", "") or "")
            error = error if _ERROR_CODE.fullmatch(error) else "oauth_error"  # shown in a 400
            if error in _TRANSIENT:
                raise _unavailable(what, error) from None
            raise GrantRefused(error) from None
        except httpx.HTTPStatusError as exc:  # authlib raises it for a 5xx or a non-JSON body
            status = exc.response.status_code
            if status == 429 or status >= 500:
                raise _unavailable(what, f"HTTP {status}") from None
            raise UpstreamError(f"the tenant answered the {what} with {status}") from None
        except httpx.HTTPError as exc:
            raise _unavailable(what, type(exc).__name__) from None
        except ValueError:  # a body that is not a JSON object
            raise UpstreamError(f"the tenant's {what} answer is not usable") from None


def _unavailable(what: str, reason: str) -> UpstreamUnavailable:
    logger.warning("the tenant did not complete the %s (%s)", what, reason)
    return UpstreamUnavailable(
        "the identity provider is unavailable; try again shortly",
        retry_after=RETRY_AFTER_SECONDS,
    )


def _token_set(token: dict[str, Any]) -> TokenSet:
    access = token.get("access_token")
    expires_in = token.get("expires_in")
    refresh = token.get("refresh_token")
    id_token = token.get("id_token")
    if not isinstance(access, str) or not access:
        raise UpstreamError("the tenant's token answer has no access token")
    if not isinstance(expires_in, int | float) or not 0 < expires_in <= 90 * 86_400:
        raise UpstreamError("the tenant's token answer has no usable expires_in")
    token_type = token.get("token_type")
    return TokenSet(
        access_token=access,
        expires_in=float(expires_in),
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        id_token=id_token if isinstance(id_token, str) and id_token else None,
        token_type=token_type if isinstance(token_type, str) else "Bearer",
    )
