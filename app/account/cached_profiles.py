"""The profile page's copies of users' Auth0 records, shared by every copy of the service.

Auth0's Management API is slow to ask and allows the whole tenant a few calls a second, so
the profile page (seed diagram 5) reads `auth0_profiles` (migrations/0012): the filtered
profile (`safe_profile`, never the raw record) as JSON, when it was fetched, and who is
fetching it now (`refreshing_until`, a claim every copy respects). A profile is

- fresh for PROFILE_CACHE_SECONDS: served as it is;
- stale after that, up to PROFILE_MAX_STALE_SECONDS: served at once with its age, while one
  copy refetches it in the background at `low` priority (it never waits for the budget);
- missing (or older): fetched now by whichever copy claims it, at `normal` priority without
  waiting; every other request for that user, on any copy, waits for that fetch. No budget
  and no copy is a 503 with Retry-After, never Auth0's 429.

Our own profile update stores Auth0's answer as the fresh profile, and a Log Streams event
that says a user changed marks theirs stale: both are rows every copy reads at once, so no
notification is needed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from databases import Database

from app.account.profiles import safe_profile
from app.auth0.budget import BudgetSpent
from app.auth0.management import Auth0Client
from app.core.db import connection
from app.core.errors import UpstreamUnavailable
from app.core.metrics import PROFILE_CACHE

logger = logging.getLogger(__name__)

CLAIM_SECONDS = 15.0  # a fetch that takes longer than this may be taken over by another copy
POLL_SECONDS = 0.05  # how often a request waiting for another copy's fetch looks again

SELECT_PROFILE = """
SELECT profile::text AS profile,
       extract(epoch FROM clock_timestamp() - fetched_at) AS age,
       refreshing_until > clock_timestamp() AS claimed
FROM auth0_profiles WHERE user_id = $1
"""
# The claim: taken only when nobody holds it and the profile is not fresh.
CLAIM = """
INSERT INTO auth0_profiles AS p (user_id, refreshing_until)
VALUES ($1, clock_timestamp() + make_interval(secs => $2))
ON CONFLICT (user_id) DO UPDATE SET refreshing_until = EXCLUDED.refreshing_until
WHERE (p.refreshing_until IS NULL OR p.refreshing_until <= clock_timestamp())
  AND (p.fetched_at IS NULL OR p.fetched_at <= clock_timestamp() - make_interval(secs => $3))
RETURNING refreshing_until
"""
# A claimed fetch stores its answer only while it still holds the claim: an update stored
# meanwhile (which drops the claim) is newer than what the fetch read.
STORE_CLAIMED = """
UPDATE auth0_profiles
SET profile = $2::jsonb, fetched_at = clock_timestamp(), refreshing_until = NULL
WHERE user_id = $1 AND refreshing_until = $3
"""
RELEASE = (
    "UPDATE auth0_profiles SET refreshing_until = NULL WHERE user_id = $1 AND refreshing_until = $2"
)
STORE = """
INSERT INTO auth0_profiles (user_id, profile, fetched_at, refreshing_until)
VALUES ($1, $2::jsonb, clock_timestamp(), NULL)
ON CONFLICT (user_id) DO UPDATE
SET profile = EXCLUDED.profile, fetched_at = EXCLUDED.fetched_at, refreshing_until = NULL
"""
MARK_STALE = """
UPDATE auth0_profiles
SET fetched_at = least(fetched_at, clock_timestamp() - make_interval(secs => $2))
WHERE user_id = ANY($1::text[]) AND profile IS NOT NULL
"""
PURGE = """
DELETE FROM auth0_profiles
WHERE fetched_at < clock_timestamp() - make_interval(secs => $1)
   OR (profile IS NULL AND (refreshing_until IS NULL OR refreshing_until < clock_timestamp()))
"""


@dataclass(frozen=True, slots=True)
class CachedProfile:
    """A profile as the page shows it: its JSON, ready to embed, and its age in seconds."""

    json: bytes
    age_seconds: float

    @property
    def fragment(self) -> orjson.Fragment:
        return orjson.Fragment(self.json)


@dataclass
class CachedProfiles:
    """One per process: the fetches it runs (one per user at a time, here and, through the
    claim, on every copy)."""

    database: Database
    auth0: Auth0Client
    fresh_seconds: float
    max_stale_seconds: float
    wait_seconds: float  # how long a request waits for another copy's fetch
    _fetching: dict[str, asyncio.Task[CachedProfile | None]] = field(default_factory=dict)
    # Until then (the loop's clock) the budget said no to refreshes: none is tried, so a
    # spent budget costs a stale read nothing but the read.
    _refreshes_after: float = 0.0

    async def get(self, user_id: str) -> CachedProfile:
        """The user's profile: fresh, stale (refetched behind it) or fetched now. Raises
        `UpstreamUnavailable` (503) when there is none to serve and Auth0 cannot be asked."""
        async with connection(self.database) as conn:
            found = await self.stored(conn, user_id)
        return found or await self.fetched(user_id)

    async def stored(self, conn: asyncpg.Connection, user_id: str) -> CachedProfile | None:
        """The stored profile when it may be served (fresh, or stale with a refetch started
        behind it), read on the caller's connection; None when it must be fetched first
        (`fetched`, on connections of its own: never hold the caller's while Auth0 answers)."""
        found, _ = await self._read(conn, user_id)
        if found is not None and found.age_seconds < self.fresh_seconds:
            PROFILE_CACHE.labels(result="fresh").inc()
            return found
        if found is not None and found.age_seconds < self.max_stale_seconds:
            PROFILE_CACHE.labels(result="stale").inc()
            self._refresh_behind(user_id)
            return found
        return None

    async def fetched(self, user_id: str) -> CachedProfile:
        """The profile fetched now, for a user `stored` had none to serve for."""
        PROFILE_CACHE.labels(result="miss").inc()
        try:
            return await self._fetched(user_id)
        except UpstreamUnavailable:
            PROFILE_CACHE.labels(result="unavailable").inc()
            raise

    async def store(self, user: dict[str, Any]) -> None:
        """Keep Auth0's record of a user (its safe fields) as their fresh profile."""
        profile = safe_profile(user)
        async with connection(self.database) as conn:
            await conn.execute(STORE, profile.user_id, profile.model_dump_json())

    async def drain(self) -> None:
        """Wait for the fetches in flight (shutdown)."""
        if self._fetching:
            await asyncio.gather(*self._fetching.values(), return_exceptions=True)

    # --- Reading and fetching ---------------------------------------------------------------

    async def _read(
        self, conn: asyncpg.Connection, user_id: str
    ) -> tuple[CachedProfile | None, bool]:
        """The stored profile (None when there is none), and whether a copy is fetching it."""
        row = await conn.fetchrow(SELECT_PROFILE, user_id)
        if row is None:
            return None, False
        claimed = bool(row["claimed"])
        if row["profile"] is None:
            return None, claimed
        return CachedProfile(row["profile"].encode(), max(0.0, float(row["age"]))), claimed

    async def _fetched(self, user_id: str) -> CachedProfile:
        """Fetch now (this process's one fetch for the user, shared by its requests), or wait
        for the copy that claimed it."""
        task = self._fetching.get(user_id)
        if task is None:
            task = self._start(user_id, background=False)
        found = await asyncio.shield(task)
        if found is not None:
            return found
        return await self._awaited(user_id)

    def _refresh_behind(self, user_id: str) -> None:
        if user_id in self._fetching or asyncio.get_running_loop().time() < self._refreshes_after:
            return
        self._start(user_id, background=True)

    def _start(self, user_id: str, *, background: bool) -> asyncio.Task[CachedProfile | None]:
        task = asyncio.get_running_loop().create_task(self._claim_and_fetch(user_id, background))
        self._fetching[user_id] = task
        task.add_done_callback(lambda _: self._fetching.pop(user_id, None))
        return task

    async def _claim_and_fetch(self, user_id: str, background: bool) -> CachedProfile | None:
        """The fetched profile; None when another copy holds the claim. In the background a
        failure is logged and the stale copy stays."""
        async with connection(self.database) as conn:
            claim = await conn.fetchval(CLAIM, user_id, CLAIM_SECONDS, self.fresh_seconds)
        if claim is None:
            return None
        try:
            user = await self.auth0.get_user(
                user_id, priority="low" if background else "normal", wait=False
            )
            text = safe_profile(user).model_dump_json()
            async with connection(self.database) as conn:
                await conn.execute(STORE_CLAIMED, user_id, text, claim)
        except BaseException as exc:
            await self._release(user_id, claim)
            if not background or isinstance(exc, asyncio.CancelledError):
                raise
            if isinstance(exc, BudgetSpent):
                loop = asyncio.get_running_loop()
                self._refreshes_after = max(self._refreshes_after, loop.time() + exc.wait_seconds)
            else:
                logger.warning("refreshing a cached profile failed (%s)", type(exc).__name__)
            return None
        return CachedProfile(text.encode(), 0.0)

    async def _release(self, user_id: str, claim: datetime) -> None:
        try:
            async with connection(self.database) as conn:
                await conn.execute(RELEASE, user_id, claim)
        except Exception:  # the claim expires by itself after CLAIM_SECONDS
            logger.warning("releasing a profile claim failed", exc_info=True)

    async def _awaited(self, user_id: str) -> CachedProfile:
        """The profile another copy is fetching, once it is stored; 503 when that copy gives
        up (its own request was answered 503 too) or takes too long."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_seconds
        while loop.time() < deadline:
            await asyncio.sleep(POLL_SECONDS)
            async with connection(self.database) as conn:
                found, claimed = await self._read(conn, user_id)
            if found is not None and found.age_seconds < self.max_stale_seconds:
                return found
            if not claimed:
                break
        raise UpstreamUnavailable("the profile cannot be fetched now; try again", retry_after=1)


async def mark_stale(
    conn: asyncpg.Connection, user_ids: list[str], *, fresh_seconds: float
) -> None:
    """These users changed at Auth0: their profiles are served stale once and refetched."""
    if user_ids:
        await conn.execute(MARK_STALE, sorted(set(user_ids)), fresh_seconds)


async def purge_profiles(conn: asyncpg.Connection, *, older_than_seconds: float) -> None:
    """Delete copies too old to serve (they hold personal data) and abandoned claims."""
    await conn.execute(PURGE, older_than_seconds, timeout=30)
