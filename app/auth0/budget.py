"""The Management API budget: at most COUNT calls in any SECONDS (AUTH0_MANAGEMENT_RATE),
across every copy of the service, since Auth0 limits the tenant, not the copy.

Each call takes a slot first, in one atomic operation on the shared store: Postgres
(`auth0_budget_take`, migrations/0012) or, when Redis holds the rate limits, a Lua script on
a sorted set. Both keep the times of the calls in the window and admit a call only while
fewer than the caller's limit lie in it, so the budget holds under any load; the window is
counted a little longer than SECONDS (`MARGIN_SECONDS`), so calls admitted back to back
still arrive at Auth0 inside it.

Priorities: a call that serves somebody now (`normal`: an update, an admin's read, a profile
nobody has a copy of) may use the whole budget; a refresh of a profile we can still serve
stale (`low`) leaves a quarter of it to them. A refused call is `BudgetSpent`, a 503 with
Retry-After: the caller waits for a slot only when it says so, within the wait budget.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol

from databases import Database

from app.core.db import connection
from app.core.errors import UpstreamUnavailable
from app.core.metrics import AUTH0_BUDGET
from app.core.settings.values import Quota

Priority = Literal["normal", "low"]
MARGIN_SECONDS = 0.05
BUDGET_NAME = "management-api"
TAKE = "SELECT auth0_budget_take($1, $2, $3, $4)"

# KEYS[1]: the sorted set; ARGV: window ms, limit, keep. Redis's own clock, so every copy
# counts on one clock; the member is unique per call (the time and a counter).
_REDIS_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
if n < limit then
  local seq = redis.call('INCR', KEYS[1] .. ':seq')
  redis.call('ZADD', KEYS[1], now, now .. ':' .. seq)
  redis.call('PEXPIRE', KEYS[1], window)
  redis.call('PEXPIRE', KEYS[1] .. ':seq', window)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], n - limit, n - limit, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""


class BudgetSpent(UpstreamUnavailable):
    """No Management API slot is free now; Retry-After says when one will be."""

    def __init__(self, wait_seconds: float) -> None:
        super().__init__(
            "the Auth0 Management API budget is spent for now",
            retry_after=max(1, math.ceil(wait_seconds)),
        )
        self.wait_seconds = wait_seconds


class BudgetStore(Protocol):
    async def take(self, window_seconds: float, limit: int, keep: int) -> float:
        """Record a call and answer 0 when fewer than `limit` calls lie in the window; else
        record nothing and answer the seconds until one would be admitted."""
        ...


class PostgresBudget:
    def __init__(self, database: Database, name: str = BUDGET_NAME) -> None:
        self.database, self.name = database, name

    async def take(self, window_seconds: float, limit: int, keep: int) -> float:
        async with connection(self.database) as conn:
            wait: float = await conn.fetchval(TAKE, self.name, window_seconds, limit, keep)
        return wait


class RedisBudget:
    def __init__(self, url: str, name: str = BUDGET_NAME) -> None:
        from redis.asyncio import Redis

        self.client = Redis.from_url(url)
        self.key = f"bff:auth0-budget:{name}"
        self._script = self.client.register_script(_REDIS_TAKE)

    async def take(self, window_seconds: float, limit: int, keep: int) -> float:
        waited = await self._script(keys=[self.key], args=[int(window_seconds * 1000), limit])
        return float(waited) / 1000

    async def aclose(self) -> None:
        await self.client.aclose()


class ManagementBudget:
    """`take(priority)` before every Management API call; one per process."""

    def __init__(self, quota: Quota, store: BudgetStore) -> None:
        self.quota, self.store = quota, store
        self.window_seconds = quota.seconds + MARGIN_SECONDS
        self.reserve = math.ceil(quota.count / 4)  # what a `low` call leaves to `normal` ones

    def limit(self, priority: Priority) -> int:
        if priority == "low":
            return max(1, self.quota.count - self.reserve)
        return self.quota.count

    async def take(self, priority: Priority = "normal") -> None:
        """Take a slot, or raise `BudgetSpent` with the seconds until one is free."""
        wait = await self.store.take(self.window_seconds, self.limit(priority), self.quota.count)
        AUTH0_BUDGET.labels(priority=priority, outcome="spent" if wait <= 0 else "refused").inc()
        if wait > 0:
            raise BudgetSpent(wait)

    async def aclose(self) -> None:
        close = getattr(self.store, "aclose", None)
        if close is not None:
            await close()


def management_budget(
    quota: Quota | None, database: Database, redis_url: str | None
) -> ManagementBudget | None:
    """The budget in the store the rate limits use (Redis when REDIS_URL is set), or None
    when AUTH0_MANAGEMENT_RATE is off."""
    if quota is None:
        return None
    store: BudgetStore = RedisBudget(redis_url) if redis_url else PostgresBudget(database)
    return ManagementBudget(quota, store)
