"""The service's own tokens for remote APIs: a client-credentials token per audience (and
scopes), kept per process until shortly before it expires, one fetch at a time however
many calls need it (app/auth0/tokens.py's `M2MToken`, the Management API token's cache).

The grant is made by the Machine-to-Machine application of AUTH0_CLIENT_ID, which the
tenant admin must authorise for each audience (docs/remote-apis.md). A refusal is a 502:
the configuration is ours to fix, not the caller's. Tokens are never logged.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

import httpx
import orjson

from app.auth0.tokens import M2MToken
from app.core.errors import UpstreamError, UpstreamUnavailable
from app.core.metrics import REMOTE_TOKENS
from app.core.settings import Settings

logger = logging.getLogger(__name__)


class ClientTokens:
    """`get(audience, scopes)`: the client-credentials token for that API."""

    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._http = http
        self._clock = clock
        self._tokens: dict[tuple[str, tuple[str, ...]], M2MToken] = {}
        self.stats: Counter[str] = Counter()

    async def get(self, audience: str, scopes: tuple[str, ...] = ()) -> str:
        key = (audience, scopes)
        token = self._tokens.get(key)
        if token is None:

            async def grant() -> tuple[str, float]:
                return await self._grant(audience, scopes)

            token = self._tokens[key] = M2MToken(
                grant, clock=self._clock, stats=self.stats, counted=_counted_by_grant
            )
        return await token.get()

    def drop(self, audience: str, scopes: tuple[str, ...], value: str) -> None:
        """Forget a token an upstream refused (401), if it is still the current one."""
        token = self._tokens.get((audience, scopes))
        if token is not None:
            token.drop(value)

    def close(self) -> None:
        for token in self._tokens.values():
            token.close()

    async def _grant(self, audience: str, scopes: tuple[str, ...]) -> tuple[str, float]:
        auth0 = self._settings.auth0
        body = {
            "grant_type": "client_credentials",
            "client_id": auth0.client_id,
            "client_secret": auth0.client_secret.get_secret_value(),
            "audience": audience,
        }
        if scopes:
            body["scope"] = " ".join(scopes)
        try:
            response = await self._http.post(f"{auth0.tenant_url}/oauth/token", json=body)
        except httpx.HTTPError as exc:
            REMOTE_TOKENS.labels(kind="client", outcome="unavailable").inc()
            logger.warning("a client-credentials grant failed (%s)", type(exc).__name__)
            raise UpstreamUnavailable("the identity provider is unavailable") from None
        if response.status_code == 429 or response.status_code >= 500:
            REMOTE_TOKENS.labels(kind="client", outcome="unavailable").inc()
            raise UpstreamUnavailable("the identity provider is unavailable")
        answer = _json(response.content)
        token, lifetime = answer.get("access_token"), answer.get("expires_in")
        if response.status_code != 200 or not isinstance(token, str) or not token:
            REMOTE_TOKENS.labels(kind="client", outcome="refused").inc()
            error = answer.get("error")
            logger.error(
                "the tenant refused a client-credentials grant for a remote API (%s)",
                error if isinstance(error, str) and error.isidentifier() else response.status_code,
            )
            raise UpstreamError("the identity provider refused a token for the remote API")
        if not isinstance(lifetime, int | float) or lifetime <= 0:
            raise UpstreamError("the identity provider sent an unusable token answer")
        REMOTE_TOKENS.labels(kind="client", outcome="ok").inc()
        return token, float(lifetime)


def _counted_by_grant(outcome: str) -> None:
    """`_grant` counts its own outcomes in `remote_token_grants`; the Management API's
    `m2m_token_fetches` (and its alert) never see these."""


def _json(body: bytes) -> dict[str, object]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
