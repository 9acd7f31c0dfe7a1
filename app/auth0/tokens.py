"""The Management API's M2M token: kept until shortly before it expires, fetched once however
many callers need it, forgotten when Auth0 refuses it.

Why our own cache (one shared fetch task) and not authlib's `AsyncOAuth2Client`: it is a
second `httpx.AsyncClient` (its own pool beside the app's shared one), times expiry by a wall
clock we cannot steer in tests, and its token request would bypass our timeout, budget and
breaker. The request itself is the transport's (`Auth0Transport._grant`), inside its policy.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

from app.core.metrics import M2M_TOKEN_FETCHES

# Fetches a token; answers it and its lifetime in seconds.
Grant = Callable[[], Awaitable[tuple[str, float]]]


class M2MToken:
    """`get()` the token, `drop(token)` one Auth0 refused. `stats` counts `token_requests`."""

    def __init__(
        self,
        grant: Grant,
        *,
        clock: Callable[[], float],
        stats: Counter[str],
        counted: Callable[[str], None] | None = None,
    ) -> None:
        """`counted(outcome)` counts each fetch ("ok", "failed"); by default in the
        Management API's `m2m_token_fetches` (another token's cache counts its own)."""
        self._grant = grant
        self._clock = clock
        self._stats = stats
        self._counted = counted or _management_fetch
        self._token: str | None = None
        self._renew_at = 0.0
        self._fetch: asyncio.Future[str] | None = None

    async def get(self) -> str:
        """The cached token; one fetch at a time, whatever the callers.

        Callers that arrive while a fetch runs await that same task, so a failed fetch fails
        them all at once instead of each trying again in turn behind a lock. The task is
        shielded: a caller that gives up does not cancel the others' fetch.
        """
        if self._token is not None and self._clock() < self._renew_at:
            return self._token
        if self._fetch is None:
            self._fetch = asyncio.ensure_future(self._fetch_token())
            self._fetch.add_done_callback(self._fetched)
        return await asyncio.shield(self._fetch)

    def drop(self, token: str) -> None:
        """Forget `token` if it is still the current one: a concurrent caller may already
        hold a new one."""
        if self._token == token:
            self._token = None

    def close(self) -> None:
        if self._fetch is not None:
            self._fetch.cancel()
        self._token = None

    async def _fetch_token(self) -> str:
        self._stats["token_requests"] += 1
        try:
            token, lifetime = await self._grant()
        except BaseException:
            self._counted("failed")
            raise
        self._counted("ok")
        # Renew early (a tenth of the lifetime, at most a minute) so that no call carries a
        # token that expires on the way.
        self._renew_at = self._clock() + lifetime - min(60.0, lifetime / 10)
        self._token = token
        return token

    def _fetched(self, task: asyncio.Future[str]) -> None:
        self._fetch = None
        if not task.cancelled():
            task.exception()  # marks it retrieved even if every waiter was cancelled


def _management_fetch(outcome: str) -> None:
    M2M_TOKEN_FETCHES.labels(outcome=outcome).inc()
