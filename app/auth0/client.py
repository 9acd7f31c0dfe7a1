"""The policy every call to Auth0 runs inside: M2M token, breaker, timeout, retries within a
wait budget, one token renewal on 401.

`Auth0Transport.call` runs one Management API call made with auth0-python's `AsyncAuth0`
(`app.auth0.management` builds it on the app's shared `httpx.AsyncClient`); `request` sends
the two calls the SDK does not make asynchronously (the client-credentials grant and the
password-change request) over the same client. The SDK's own retrying is off
(`max_retries=0`): it retries every method on 408, 409, 429 and 5xx (a retried POST can send
a second email), sleeps with an `asyncio.sleep` we cannot inject, has no total wait budget
and cannot "drop the M2M token and retry once" on 401. So each attempt is one SDK request,
and what follows an answer is decided here.

The SDK asks `sdk_token()` for its bearer token; that answers the token `call()` fetched for
the attempt (a context variable), so a 401 drops exactly the token that was refused, and an
SDK call made outside `call()` fails instead of escaping the policy.

The M2M token is kept by `app.auth0.tokens` (its grant is sent from here, inside the policy);
what an answer means is `app.auth0.answers`. 429, 5xx, a network error or an open breaker end
in `UpstreamUnavailable` (503 + Retry-After) once retrying is not allowed or the budget is
spent. Every call counts in `AUTH0_CALLS` by operation and outcome, every retry in
`AUTH0_RETRIES`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar

import httpx
import orjson
from auth0.management.core.api_error import ApiError
from auth0.management.core.parse_error import ParsingError

from app.auth0.answers import Answered, client_error, from_sdk, json_object, rate_limit_wait
from app.auth0.breaker import CircuitBreaker
from app.auth0.budget import BudgetSpent, ManagementBudget, Priority
from app.auth0.tokens import M2MToken
from app.core.errors import AppError, UpstreamError, UpstreamUnavailable
from app.core.metrics import (
    AUTH0_BREAKER_OPEN,
    AUTH0_BREAKER_OPENINGS,
    AUTH0_CALLS,
    AUTH0_RETRIES,
)
from app.core.settings import Settings
from app.core.timings import phase

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 4  # the wait budget normally ends retries first; this bounds zero-wait loops
BACKOFF_SECONDS = 0.2  # first wait after a 5xx or network error, doubled per attempt
JITTER_SECONDS = 0.25  # at most this much is added at random so callers do not retry in step

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

# The M2M token of the attempt `Auth0Transport.call` is running in this task, for the SDK.
_ATTEMPT_TOKEN: ContextVar[str | None] = ContextVar("auth0_attempt_token", default=None)


class Auth0Transport:
    """Runs calls to the tenant inside one policy; one per process.

    `stats` counts what it did (requests, retries, token fetches, breaker events).
    """

    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient,
        *,
        budget: ManagementBudget | None = None,
        sleep: Sleep,
        clock: Clock,
        wall_clock: Clock,
        rand: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.http = http
        self.budget = budget
        self.stats: Counter[str] = Counter()
        self._sleep, self._clock, self._wall, self._rand = sleep, clock, wall_clock, rand
        self._timeout = httpx.Timeout(settings.auth0.timeout_seconds)
        self._token = M2MToken(self._grant, clock=clock, stats=self.stats)
        self._breaker = CircuitBreaker(
            failures=settings.auth0.breaker_failures,
            cooldown_seconds=settings.auth0.breaker_cooldown_seconds,
            clock=clock,
            stats=self.stats,
            on_change=_breaker_metrics,
        )

    async def aclose(self) -> None:
        """Forget the token; the shared HTTP client is the lifespan's."""
        self._token.close()

    # --- M2M token -----------------------------------------------------------------------

    async def sdk_token(self) -> str:
        """The bearer token for the SDK request being sent: the one `call()` chose for it."""
        token = _ATTEMPT_TOKEN.get()
        if token is None:
            raise RuntimeError("Management API calls must run inside Auth0Transport.call")
        return token

    async def _grant(self) -> tuple[str, float]:
        """A client-credentials grant for the Management API: the token and its lifetime.

        Asked of the canonical domain, for its audience: a token is issued by the domain it
        was asked of, and the Management API takes a token only on the domain that issued it
        (Auth0, "Get Access Tokens": custom domains and the Management API).
        """
        auth0 = self.settings.auth0
        grant = {
            "grant_type": "client_credentials",
            "client_id": auth0.client_id,
            "client_secret": auth0.client_secret.get_secret_value(),
            "audience": auth0.management_audience,
        }
        # JSON, which Auth0 accepts as well as a form. Repeating the grant only mints another
        # token, so it is safe to retry.
        response = await self.request(
            "oauth.token",
            "POST",
            f"{auth0.management_url}/oauth/token",
            json=grant,
            retryable=True,
            m2m=False,
            our_input=False,
        )
        body = json_object(response)
        token, lifetime = body.get("access_token"), body.get("expires_in")
        if not isinstance(token, str) or not token or not isinstance(lifetime, int | float):
            raise UpstreamError("Auth0 sent an unusable token response")
        if lifetime <= 0:
            raise UpstreamError("Auth0 sent an unusable token response")
        return token, float(lifetime)

    # --- The two ways in -------------------------------------------------------------------

    async def call(
        self,
        operation: str,
        send: Callable[[], Awaitable[T]],
        *,
        retryable: bool = False,
        priority: Priority = "normal",
        wait: bool = True,
    ) -> T:
        """Run one Management API call made with the SDK (`send` makes one request) and
        return its result, or raise an `AppError`. `operation` names it in logs and metrics.

        `retryable` says repeating cannot duplicate an effect: such calls are retried on 429,
        5xx and network errors while the summed waits fit the wait budget. A 401 is retried
        once with a fresh token whatever the method: Auth0 acted on nothing. Every attempt
        first takes a slot of the Management API budget at `priority`; with `wait`, a call
        refused one waits for it within the wait budget, else it is `BudgetSpent` at once.
        """

        async def attempt(token: str | None) -> T:
            bound = _ATTEMPT_TOKEN.set(token)
            try:
                return await send()
            except (ApiError, ParsingError) as error:
                raise from_sdk(error) from None
            finally:
                _ATTEMPT_TOKEN.reset(bound)

        return await self._run(
            operation,
            attempt,
            retryable=retryable,
            m2m=True,
            our_input=True,
            slot=(priority, wait) if self.budget is not None else None,
        )

    async def request(
        self,
        operation: str,
        method: str,
        url: str,
        *,
        json: Any = None,
        retryable: bool = False,
        m2m: bool = True,
        our_input: bool = True,
    ) -> httpx.Response:
        """Send one call over plain httpx and return its 2xx response, or raise an `AppError`.

        The same policy as `call`; `our_input` False makes a 400/404/409 our own
        misconfiguration (502), not the caller's.
        """
        content = None if json is None else orjson.dumps(json)

        async def attempt(token: str | None) -> httpx.Response:
            headers = {"Content-Type": "application/json"} if content is not None else {}
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
            response = await self.http.request(
                method, url, content=content, headers=headers, timeout=self._timeout
            )
            if not 200 <= response.status_code < 300:
                raise Answered(response.status_code, response.headers)
            return response

        return await self._run(
            operation, attempt, retryable=retryable, m2m=m2m, our_input=our_input
        )

    # --- The policy --------------------------------------------------------------------------

    async def _run(
        self,
        operation: str,
        attempt: Callable[[str | None], Awaitable[T]],
        *,
        retryable: bool,
        m2m: bool,
        our_input: bool,
        slot: tuple[Priority, bool] | None = None,
    ) -> T:
        outcome = "error"
        try:
            with phase("auth0"):
                result = await self._attempts(
                    operation,
                    attempt,
                    retryable=retryable,
                    m2m=m2m,
                    our_input=our_input,
                    slot=slot,
                )
            outcome = "ok"
            return result
        except BudgetSpent:
            outcome = "budget_spent"
            raise
        except UpstreamUnavailable:
            outcome = "unavailable"
            raise
        except UpstreamError:
            outcome = "bad_answer"
            raise
        except AppError:
            outcome = "refused"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            AUTH0_CALLS.labels(operation=operation, outcome=outcome).inc()

    async def _attempts(
        self,
        operation: str,
        attempt: Callable[[str | None], Awaitable[T]],
        *,
        retryable: bool,
        m2m: bool,
        our_input: bool,
        slot: tuple[Priority, bool] | None,
    ) -> T:
        budget = self.settings.auth0.retry_budget_seconds
        waited, token_renewed, attempts = 0.0, False, 0
        while True:
            attempts += 1
            token = await self._token.get() if m2m else None
            if slot is not None:
                waited = await self._take_slot(*slot, waited=waited, budget=budget)
            trial = self._breaker.admit()
            self.stats["requests"] += 1
            try:
                result = await attempt(token)
            except httpx.TransportError as exc:
                self._breaker.record(ok=False)
                logger.warning("Auth0 %s: %s", operation, type(exc).__name__)
                problem, wait = "unreachable", _backoff(attempts)
            except Answered as answer:
                status = answer.status
                self._breaker.record(ok=status < 500)
                if not answer.readable:
                    logger.warning(
                        "Auth0 %s answered %d in a shape we cannot read", operation, status
                    )
                    raise UpstreamError("Auth0 sent an answer of an unexpected shape") from None
                level = logging.WARNING if status == 429 or status >= 500 else logging.INFO
                logger.log(level, "Auth0 %s answered %d", operation, status)
                if status == 401 and token is not None and not token_renewed:
                    self.stats["token_renewals_after_401"] += 1
                    token_renewed = True
                    self._token.drop(token)
                    continue
                if status == 429:
                    asked = rate_limit_wait(answer, self._wall())
                    wait = _backoff(attempts) if asked is None else asked
                    problem = "rate-limiting us"
                elif status >= 500:
                    problem, wait = "failing", _backoff(attempts)
                else:
                    raise client_error(status, our_input) from None
            except BaseException:
                if trial:  # cancelled or broken mid-trial: let the next request try instead
                    self._breaker.abandon_trial()
                raise
            else:
                self._breaker.record(ok=True)
                return result
            if not retryable or attempts >= MAX_ATTEMPTS or waited + wait > budget:
                raise UpstreamUnavailable(f"Auth0 is {problem}", retry_after=math.ceil(wait))
            wait += self._rand() * min(JITTER_SECONDS, budget - waited - wait)
            self.stats["retries"] += 1
            AUTH0_RETRIES.labels(operation=operation).inc()
            await self._sleep(wait)
            waited += wait

    async def _take_slot(
        self, priority: Priority, wait: bool, *, waited: float, budget: float
    ) -> float:
        """A Management API slot, waiting for one (if `wait`) while the waits fit `budget`;
        the time waited so far."""
        assert self.budget is not None
        while True:
            try:
                await self.budget.take(priority)
            except BudgetSpent as spent:
                if not wait or waited + spent.wait_seconds > budget:
                    raise
                self.stats["budget_waits"] += 1
                await self._sleep(spent.wait_seconds)
                waited += spent.wait_seconds
            else:
                return waited


def _breaker_metrics(is_open: bool) -> None:
    AUTH0_BREAKER_OPEN.set(1 if is_open else 0)
    if is_open:
        AUTH0_BREAKER_OPENINGS.inc()


def _backoff(attempt: int) -> float:
    return BACKOFF_SECONDS * 2.0 ** (attempt - 1)
