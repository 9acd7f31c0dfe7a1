"""The transport to Auth0: M2M token, breaker, timeout, retries and wait budget, per call.

Why a thin httpx client and not auth0-python (6.8.0): its low-level `AsyncAuth0` takes
`base_url`, `async_token`, `httpx_client` and `max_retries`, but its retry loop retries every
method on 408, 409, 429 and 5xx (a retried POST can send a second email), sleeps with an
`asyncio.sleep` we cannot inject, has no total wait budget and cannot "drop the M2M token and
retry once" on 401. With `max_retries=0` all it would add is URL building and pydantic models
we would turn back into dicts, for eight endpoints. So the whole policy lives here; the calls
themselves are in `app.auth0.management`.

Why our own token cache (one shared fetch task) and not authlib's `AsyncOAuth2Client`: it is a
second `httpx.AsyncClient` (its own pool beside the app's shared one), times expiry by a wall
clock we cannot steer in tests, and its token request would bypass our timeout, budget and
breaker.

Status mapping (for calls about a user): 400 -> `ValidationFailed` (422: Auth0 refused values
we passed on), 404 -> `NotFound`, 409 -> `Conflict`, 429 / 5xx / network error / open breaker
-> `UpstreamUnavailable` (503 + Retry-After), anything else or an unreadable body ->
`UpstreamError` (502). Details never carry a token, a secret or Auth0's body.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson

from app.auth0.breaker import CircuitBreaker
from app.core.errors import Conflict, NotFound, UpstreamError, UpstreamUnavailable, ValidationFailed
from app.core.settings import Settings

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 4  # the wait budget normally ends retries first; this bounds zero-wait loops
BACKOFF_SECONDS = 0.2  # first wait after a 5xx or network error, doubled per attempt
JITTER_SECONDS = 0.25  # at most this much is added at random so callers do not retry in step

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


class Auth0Transport:
    """Sends calls to the tenant over the app's shared `httpx.AsyncClient`; one per process.

    `stats` counts what it did (requests, retries, token fetches, breaker events).
    """

    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient,
        *,
        sleep: Sleep,
        clock: Clock,
        wall_clock: Clock,
        rand: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.http = http
        self.stats: Counter[str] = Counter()
        self._sleep, self._clock, self._wall, self._rand = sleep, clock, wall_clock, rand
        self._base = settings.tenant_url
        self._timeout = httpx.Timeout(settings.auth0_timeout_seconds)
        self._token: str | None = None
        self._token_renew_at = 0.0
        self._token_fetch: asyncio.Future[str] | None = None
        self._breaker = CircuitBreaker(
            failures=settings.auth0_breaker_failures,
            cooldown_seconds=settings.auth0_breaker_cooldown_seconds,
            clock=clock,
            stats=self.stats,
        )

    async def aclose(self) -> None:
        """Forget the token; the shared HTTP client is the lifespan's."""
        if self._token_fetch is not None:
            self._token_fetch.cancel()
        self._token = None

    # --- M2M token -----------------------------------------------------------------------

    async def _m2m_token(self) -> str:
        """The cached Management API token; one fetch at a time, whatever the callers.

        Callers that arrive while a fetch runs await that same task, so a failed fetch fails
        them all at once instead of each trying again in turn behind a lock. The task is
        shielded: a caller that gives up does not cancel the others' fetch.
        """
        if self._token is not None and self._clock() < self._token_renew_at:
            return self._token
        if self._token_fetch is None:
            self._token_fetch = asyncio.ensure_future(self._fetch_token())
            self._token_fetch.add_done_callback(self._token_fetched)
        return await asyncio.shield(self._token_fetch)

    async def _fetch_token(self) -> str:
        self.stats["token_requests"] += 1
        grant = {
            "grant_type": "client_credentials",
            "client_id": self.settings.auth0_client_id,
            "client_secret": self.settings.auth0_client_secret.get_secret_value(),
            "audience": f"https://{self.settings.auth0_domain}/api/v2/",
        }
        # JSON, which Auth0 accepts as well as a form. Repeating the grant only mints another
        # token, so it is safe to retry.
        response = await self.request(
            "POST", "/oauth/token", json=grant, retryable=True, m2m=False, our_input=False
        )
        body = json_object(json_body(response))
        token, lifetime = body.get("access_token"), body.get("expires_in")
        if not isinstance(token, str) or not token or not isinstance(lifetime, int | float):
            raise UpstreamError("Auth0 sent an unusable token response")
        if lifetime <= 0:
            raise UpstreamError("Auth0 sent an unusable token response")
        # Renew early (a tenth of the lifetime, at most a minute) so that no call carries a
        # token that expires on the way.
        self._token_renew_at = self._clock() + lifetime - min(60.0, lifetime / 10)
        self._token = token
        return token

    def _token_fetched(self, task: asyncio.Future[str]) -> None:
        self._token_fetch = None
        if not task.cancelled():
            task.exception()  # marks it retrieved even if every waiter was cancelled

    def _drop_token(self, token: str) -> None:
        # Only the token that was refused: a concurrent caller may already have a new one.
        if self._token == token:
            self._token = None

    # --- One call: token, breaker, timeout, retries --------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str | int] | None = None,
        retryable: bool = False,
        m2m: bool = True,
        our_input: bool = True,
    ) -> httpx.Response:
        """Send one logical call and return its 2xx response, or raise an `AppError`.

        `retryable` says repeating cannot duplicate an effect: such calls are retried on 429,
        5xx and network errors while the summed waits fit the budget. A 401 on a Management
        call is retried once with a fresh token whatever the method: Auth0 acted on nothing.
        `our_input` False makes a 400/404/409 our own misconfiguration (502), not the caller's.
        """
        budget = self.settings.auth0_retry_budget_seconds
        waited, token_renewed, attempt = 0.0, False, 0
        content = None if json is None else orjson.dumps(json)
        while True:
            attempt += 1
            headers = {"Content-Type": "application/json"} if content is not None else {}
            token = await self._m2m_token() if m2m else None
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
            trial = self._breaker.admit()
            self.stats["requests"] += 1
            try:
                response = await self.http.request(
                    method,
                    self._base + path,
                    content=content,
                    params=params,
                    headers=headers,
                    timeout=self._timeout,
                )
            except httpx.TransportError as exc:
                self._breaker.record(ok=False)
                logger.warning("Auth0 %s %s: %s", method, _kind(path), type(exc).__name__)
                problem, wait = "unreachable", _backoff(attempt)
            except BaseException:
                if trial:  # cancelled or broken mid-trial: let the next request try instead
                    self._breaker.abandon_trial()
                raise
            else:
                status = response.status_code
                self._breaker.record(ok=status < 500)
                if status < 300:
                    return response
                level = logging.WARNING if status == 429 or status >= 500 else logging.INFO
                logger.log(level, "Auth0 %s %s answered %d", method, _kind(path), status)
                if status == 401 and token is not None and not token_renewed:
                    self.stats["token_renewals_after_401"] += 1
                    token_renewed = True
                    self._drop_token(token)
                    continue
                if status == 429:
                    problem, wait = "rate-limiting us", self._rate_limit_wait(response, attempt)
                elif status >= 500:
                    problem, wait = "failing", _backoff(attempt)
                else:
                    raise _client_error(status, our_input)
            if not retryable or attempt >= MAX_ATTEMPTS or waited + wait > budget:
                raise UpstreamUnavailable(f"Auth0 is {problem}", retry_after=math.ceil(wait))
            wait += self._rand() * min(JITTER_SECONDS, budget - waited - wait)
            self.stats["retries"] += 1
            await self._sleep(wait)
            waited += wait

    def _rate_limit_wait(self, response: httpx.Response, attempt: int) -> float:
        """Seconds Auth0 asks us to wait: `Retry-After` (seconds or a date), else
        `x-ratelimit-reset` (unix epoch seconds), else our own backoff."""
        retry_after = response.headers.get("retry-after", "").strip()
        reset = response.headers.get("x-ratelimit-reset", "").strip()
        try:
            if retry_after.isdigit():
                return float(retry_after)
            if retry_after:
                return max(0.0, parsedate_to_datetime(retry_after).timestamp() - self._wall())
            if reset:
                return max(0.0, float(reset) - self._wall())
        except (ValueError, TypeError, OverflowError):
            pass
        return _backoff(attempt)


def json_body(response: httpx.Response) -> Any:
    """The decoded body; `UpstreamError` (502) when it is not JSON."""
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise UpstreamError("Auth0 sent an answer that is not JSON") from None


def json_object(value: Any) -> dict[str, Any]:
    """`value` when it is a JSON object; `UpstreamError` (502) otherwise."""
    if not isinstance(value, dict):
        raise UpstreamError("Auth0 sent an answer of an unexpected shape")
    return value


def json_objects(value: Any) -> list[dict[str, Any]]:
    """`value` when it is a list of JSON objects; `UpstreamError` (502) otherwise."""
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise UpstreamError("Auth0 sent an answer of an unexpected shape")
    return value


def _backoff(attempt: int) -> float:
    return BACKOFF_SECONDS * 2.0 ** (attempt - 1)


def _kind(path: str) -> str:
    """A path without its user or organization id, for logs (`/api/v2/users/…/roles`)."""
    parts = path.split("/")
    if len(parts) > 4 and parts[3] in {"users", "organizations"}:
        parts[4] = "…"
    return "/".join(parts)


def _client_error(status: int, our_input: bool) -> Exception:
    if our_input and status == 400:
        return ValidationFailed("Auth0 refused the submitted values")
    if our_input and status == 404:
        return NotFound("not found in Auth0")
    if our_input and status == 409:
        return Conflict("Auth0 reports a conflicting change")
    return UpstreamError(f"Auth0 answered with an unexpected status {status}")
