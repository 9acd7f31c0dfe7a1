"""The account part's per-process object (`AccountRuntime`: the flows' rate limits, the
revocation store, the calls made after the response), how the lifespan runs it, and its
accessor (`account_of`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
from databases import Database

from app.account.cached_profiles import CachedProfiles, purge_profiles
from app.account.logstream import purge_ingested_log_ids
from app.account.profiles import purge_sessions
from app.auth.revocation import RevocationStore
from app.auth.tokens import TokenVerifier
from app.auth0.management import Auth0Client
from app.core.settings import Settings
from app.core.state import HasState, part_of
from app.core.tasks import Purge
from app.ratelimit.buckets import Rate, RateLimiter

logger = logging.getLogger(__name__)


class AfterResponse:
    """Runs calls whose duration must not show in the response (the password-reset call
    to Auth0 takes as long for a known address as for an unknown one only if nobody
    waits for it). At most `limit` run at once; beyond that a call is dropped and logged,
    since a flood must not grow memory without bound."""

    def __init__(self, limit: int = 100) -> None:
        self.limit = limit
        self.dropped = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, call: Callable[[], Awaitable[object]]) -> bool:
        if len(self._tasks) >= self.limit:
            self.dropped += 1
            logger.warning("after-response queue full; a call was dropped")
            return False

        async def run() -> None:
            try:
                await call()
            except Exception:
                logger.exception("a call made after the response failed")

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def drain(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait for the calls in flight (shutdown, tests); cancel what is left after it."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)


@dataclass
class AccountRuntime:
    """What the account endpoints need besides the database and Auth0; one per process."""

    limiter: RateLimiter = field(default_factory=RateLimiter)
    revocations: RevocationStore = field(default_factory=RevocationStore)
    after_response: AfterResponse = field(default_factory=AfterResponse)
    log_id_retention_days: int = 90
    # The profile page's shared copies of Auth0 records; the lifespan gives a runtime built
    # without one the process's cache.
    profiles: CachedProfiles | None = None

    def purges(self) -> list[Purge]:
        """The account part's periodic purges (run by app/core/tasks.py)."""
        retention, profiles = self.log_id_retention_days, self.profiles

        async def purge_log_ids(conn: asyncpg.Connection) -> None:
            await purge_ingested_log_ids(conn, older_than_days=retention)

        purges = [
            Purge("revocations", self.revocations.purge),
            Purge("flow rate limits", RateLimiter.purge),
            Purge("auth0 log ids", purge_log_ids),
            Purge("sign-in sessions", purge_sessions),
        ]
        if profiles is not None:

            async def purge_old_profiles(conn: asyncpg.Connection) -> None:
                await purge_profiles(conn, older_than_seconds=profiles.max_stale_seconds)

            purges.append(Purge("cached profiles", purge_old_profiles))
        return purges

    async def start(self, database_url: str) -> None:
        await self.revocations.start(database_url)

    async def aclose(self) -> None:
        await self.after_response.drain()
        if self.profiles is not None:
            await self.profiles.drain()
        await self.revocations.stop()


def account_runtime(settings: Settings) -> AccountRuntime:
    """`AccountRuntime` configured from settings."""
    account = settings.account
    return AccountRuntime(
        limiter=RateLimiter(
            password_reset_per_ip=Rate(
                account.rate_limit_password_reset_ip_count,
                account.rate_limit_password_reset_ip_seconds,
            ),
            password_reset_per_email=Rate(
                account.rate_limit_password_reset_email_count,
                account.rate_limit_password_reset_email_seconds,
            ),
            verification_email_per_user=Rate(
                account.rate_limit_verification_email_count,
                account.rate_limit_verification_email_seconds,
            ),
        ),
        revocations=RevocationStore(
            leeway_seconds=settings.auth.leeway_seconds,
            session_seconds=settings.auth.revoked_session_seconds,
        ),
        log_id_retention_days=settings.auth0.log_id_retention_days,
    )


def cached_profiles(settings: Settings, database: Database, auth0: Auth0Client) -> CachedProfiles:
    """The profile page's shared cache, configured from settings."""
    return CachedProfiles(
        database,
        auth0,
        fresh_seconds=settings.auth0.profile_cache_seconds,
        max_stale_seconds=settings.auth0.profile_max_stale_seconds,
        wait_seconds=settings.auth0.timeout_seconds + settings.auth0.retry_budget_seconds,
    )


@contextlib.asynccontextmanager
async def running_account(
    runtime: AccountRuntime, database_url: str, verifier: TokenVerifier
) -> AsyncIterator[AccountRuntime]:
    """Start the runtime, plug revocation into the verifier, and stop them on exit."""
    await runtime.start(database_url)
    verifier.revocation_check = runtime.revocations.is_revoked
    try:
        yield runtime
    finally:
        verifier.revocation_check = None
        await runtime.aclose()


def account_of(conn: HasState) -> AccountRuntime:
    return part_of(conn, "account", AccountRuntime)
