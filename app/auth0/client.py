"""Auth0 Management and Authentication API calls: M2M token, retries, breaker, profile cache.

Why a thin httpx client and not auth0-python (6.8.0): its low-level `AsyncAuth0` takes
`base_url`, `async_token`, `httpx_client` and `max_retries`, but its retry loop retries every
method on 408, 409, 429 and 5xx (a retried POST can send a second email), sleeps with an
`asyncio.sleep` we cannot inject, has no total wait budget and cannot "drop the M2M token and
retry once" on 401. With `max_retries=0` all it would add is URL building and pydantic models
we would turn back into dicts, for eight endpoints. So the whole policy lives here.

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
import copy
import logging
import math
import random
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from app.auth0.breaker import CircuitBreaker
from app.core.errors import Conflict, NotFound, UpstreamError, UpstreamUnavailable, ValidationFailed
from app.core.settings import Settings

logger = logging.getLogger("app.auth0.client")

MAX_ATTEMPTS = 4  # the wait budget normally ends retries first; this bounds zero-wait loops
BACKOFF_SECONDS = 0.2  # first wait after a 5xx or network error, doubled per attempt
JITTER_SECONDS = 0.25  # at most this much is added at random so callers do not retry in step
PROFILE_CACHE_SIZE = 4096
PAGE_SIZE = 100

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


def user_path(user_id: str) -> str:
    """The Management API path of a user; subs contain `|`, so every character is encoded."""
    return f"/api/v2/users/{quote(user_id, safe='')}"


class Auth0Client:
    """One per process; shares the app's `httpx.AsyncClient`. `stats` counts what it did."""

    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        rand: Callable[[], float] = random.random,
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
        self._profiles: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._profile_writes = 0

    async def aclose(self) -> None:
        """Forget the token and cached profiles; the shared HTTP client is the lifespan's."""
        if self._token_fetch is not None:
            self._token_fetch.cancel()
        self._token = None
        self._profiles.clear()

    # --- Management API ------------------------------------------------------------------

    async def get_user(self, user_id: str) -> dict[str, Any]:
        """The user's full Auth0 record (callers filter it), served from a short cache."""
        cached = self._profiles.get(user_id)
        if cached is not None and self._clock() < cached[0]:
            self._profiles.move_to_end(user_id)
            self.stats["profile_cache_hits"] += 1
            return copy.deepcopy(cached[1])
        self.stats["profile_cache_misses"] += 1
        writes = self._profile_writes
        response = await self._request("GET", user_path(user_id), retryable=True)
        user = _dict(_json(response))
        # An update that ran while we read may have made this answer stale: don't keep it.
        if writes == self._profile_writes and self.settings.profile_cache_seconds > 0:
            expires = self._clock() + self.settings.profile_cache_seconds
            self._profiles[user_id] = (expires, copy.deepcopy(user))
            self._profiles.move_to_end(user_id)
            while len(self._profiles) > PROFILE_CACHE_SIZE:
                self._profiles.popitem(last=False)
        return user

    async def update_user(self, user_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """PATCH the user and return Auth0's updated record.

        Retried like a GET: Auth0 sets the given fields (and merges `user_metadata` at the top
        level), so sending the same body twice leaves the same result.
        """
        self._forget_profile(user_id)
        try:
            response = await self._request(
                "PATCH", user_path(user_id), json=dict(fields), retryable=True
            )
        finally:
            self._forget_profile(user_id)
        return _dict(_json(response))

    async def send_verification_email(self, user_id: str) -> dict[str, Any]:
        """Start Auth0's verification-email job; never retried (it would send two emails)."""
        body = {"user_id": user_id}
        response = await self._request("POST", "/api/v2/jobs/verification-email", json=body)
        return _dict(_json(response))

    async def get_user_roles(self, user_id: str) -> list[dict[str, Any]]:
        """Every role assigned directly to the user, across all pages."""
        roles: list[dict[str, Any]] = []
        for page in range(1000):
            params: dict[str, str | int] = {"per_page": PAGE_SIZE, "page": page}
            params["include_totals"] = "true"
            response = await self._request(
                "GET", user_path(user_id) + "/roles", params=params, retryable=True
            )
            body = _json(response)
            if isinstance(body, list):  # a tenant that ignores paging sends everything at once
                return _dicts(body)
            items, total = _dicts(_dict(body).get("roles")), body.get("total")
            roles += items
            if not items or not isinstance(total, int) or len(roles) >= total:
                break
        return roles

    async def assign_roles(self, user_id: str, role_ids: Sequence[str]) -> None:
        """Assign roles by id; a POST, so never retried (our caller sees 503 and decides)."""
        body = {"roles": list(role_ids)}
        await self._request("POST", user_path(user_id) + "/roles", json=body)

    async def remove_roles(self, user_id: str, role_ids: Sequence[str]) -> None:
        """Remove roles by id; retried, since removing an absent role is a no-op in Auth0."""
        body = {"roles": list(role_ids)}
        await self._request("DELETE", user_path(user_id) + "/roles", json=body, retryable=True)

    async def is_org_member(self, org_id: str, user_id: str) -> bool:
        """Whether the user belongs to the organization (an unknown organization: False).

        Walks the member list by checkpoint pagination (`take`/`from`, the only paging that
        reaches past 1000 members), asking for user ids only, and stops at the first match.
        """
        path = f"/api/v2/organizations/{quote(org_id, safe='')}/members"
        params: dict[str, str | int] = {"fields": "user_id", "include_fields": "true"}
        params["take"] = PAGE_SIZE
        seen: set[str] = set()
        while True:
            try:
                response = await self._request("GET", path, params=params, retryable=True)
            except NotFound:
                return False
            body = _json(response)
            members = _dicts(body if isinstance(body, list) else _dict(body).get("members"))
            if any(member.get("user_id") == user_id for member in members):
                return True
            cursor = body.get("next") if isinstance(body, dict) else None
            if not isinstance(cursor, str) or not cursor:
                return False
            if cursor in seen:
                raise UpstreamError("Auth0 sent a member list that does not end")
            seen.add(cursor)
            params["from"] = cursor

    # --- Authentication API --------------------------------------------------------------

    async def request_password_reset(self, email: str) -> None:
        """Ask Auth0 to email a password-reset link; a POST that sends mail, never retried."""
        body = {
            "client_id": self.settings.auth0_client_id,
            "email": email,
            "connection": self.settings.auth0_db_connection,
        }
        await self._request("POST", "/dbconnections/change_password", json=body, m2m=False)

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
        response = await self._request(
            "POST", "/oauth/token", json=grant, retryable=True, m2m=False, our_input=False
        )
        body = _dict(_json(response))
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

    def _forget_profile(self, user_id: str) -> None:
        self._profiles.pop(user_id, None)
        self._profile_writes += 1

    # --- One call: token, breaker, timeout, retries --------------------------------------

    async def _request(
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


def _json(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise UpstreamError("Auth0 sent an answer that is not JSON") from None


def _dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UpstreamError("Auth0 sent an answer of an unexpected shape")
    return value


def _dicts(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise UpstreamError("Auth0 sent an answer of an unexpected shape")
    return value
