"""Account services: shared rate limits, keyed email hashes, calls made after the response,
sign-in history, and `AccountServices`, which bundles them with the revocation store.

Rate limits live in Postgres so that every copy of the service counts the same hits. Each
bucket is a generic cell rate algorithm (GCRA) in a single upsert: one row and one round
trip per check, no counters to reset, no race between copies (the row lock orders them).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import asyncpg

from app.account.logstream import SIGN_IN_ACTIONS, purge_ingested_log_ids
from app.auth.revocation import RevocationStore
from app.auth.tokens import TokenVerifier
from app.core.errors import TooManyRequests
from app.core.settings import Settings

logger = logging.getLogger("app.account.services")


# --- Rate limits -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rate:
    """`count` hits per `per_seconds`, as a burst, refilled evenly."""

    count: int
    per_seconds: float

    def __post_init__(self) -> None:
        if self.count < 1 or self.per_seconds <= 0:
            raise ValueError("a rate needs count >= 1 and per_seconds > 0")

    @property
    def emission_seconds(self) -> float:
        return self.per_seconds / self.count


# One statement for every bucket of a request; rows are locked in bucket order so two
# requests sharing buckets cannot deadlock. A refused hit leaves the bucket as it was.
TAKE = """
INSERT INTO rate_limits AS r (bucket, tat, emission, period, allowed)
SELECT b.bucket, now() + b.emission_s * interval '1 second',
       b.emission_s * interval '1 second', b.period_s * interval '1 second', true
FROM unnest($1::text[], $2::float8[], $3::float8[]) AS b(bucket, emission_s, period_s)
ORDER BY b.bucket
ON CONFLICT (bucket) DO UPDATE SET
    allowed = greatest(r.tat, now()) + EXCLUDED.emission <= now() + EXCLUDED.period,
    tat = CASE WHEN greatest(r.tat, now()) + EXCLUDED.emission <= now() + EXCLUDED.period
               THEN greatest(r.tat, now()) + EXCLUDED.emission ELSE r.tat END,
    emission = EXCLUDED.emission,
    period = EXCLUDED.period
RETURNING r.bucket, r.allowed,
    extract(epoch FROM r.tat + r.emission - r.period - now())::float8 AS retry_after
"""
PURGE_RATE_LIMITS = "DELETE FROM rate_limits WHERE tat < now()"


class RateLimiter:
    """The service's limits, shared by every copy through the `rate_limits` table."""

    def __init__(
        self,
        *,
        password_reset_per_ip: Rate = Rate(20, 900),
        password_reset_per_email: Rate = Rate(5, 900),
        verification_email_per_user: Rate = Rate(3, 900),
    ) -> None:
        self.password_reset_per_ip = password_reset_per_ip
        self.password_reset_per_email = password_reset_per_email
        self.verification_email_per_user = verification_email_per_user

    async def take(self, conn: asyncpg.Connection, buckets: Sequence[tuple[str, Rate]]) -> None:
        """Count one hit in each bucket, or raise `TooManyRequests` with the longest wait.

        Buckets that allowed the hit keep it even when another refused: a client that
        keeps trying from one IP with many addresses still uses up its IP's budget.
        """
        if not buckets:
            return
        rows = await conn.fetch(
            TAKE,
            [name for name, _ in buckets],
            [rate.emission_seconds for _, rate in buckets],
            [rate.per_seconds for _, rate in buckets],
        )
        waits = [row["retry_after"] for row in rows if not row["allowed"]]
        if waits:
            raise TooManyRequests(math.ceil(max(waits)), "too many requests; try again later")

    @staticmethod
    async def purge(conn: asyncpg.Connection) -> None:
        """Delete buckets that are full again (equivalent to never used)."""
        await conn.execute(PURGE_RATE_LIMITS, timeout=30)


# --- Email addresses, never stored in clear -----------------------------------------------


def normalise_email(email: str) -> str:
    return email.strip().lower()


def email_hash(key: bytes, email: str) -> str:
    """A keyed hash of an address: the same person's requests can be linked in the audit
    log and rate-limited, but the address cannot be recovered or guessed by hashing a list
    of candidates without the key."""
    return hmac.new(key, normalise_email(email).encode(), hashlib.sha256).hexdigest()


# --- Work done after the response ---------------------------------------------------------


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


# --- Sign-in history ---------------------------------------------------------------------

# Actions shown as sign-in history: the service's own and the Auth0 log types mapped to them
# (app/account/logstream.py). The first condition repeats the partial index's predicate (0004).
HISTORY_ACTIONS = ("user.signed_in", "user.signed_out", *SIGN_IN_ACTIONS)
_HISTORY = """
SELECT seq, occurred_at, action, outcome, outcome_reason, host(source_ip) AS ip, user_agent,
    client_id, detail->>'type' AS type, detail->>'client_name' AS client_name
FROM audit_events
WHERE actor = $1
  AND (action IN ('user.signed_in', 'user.signed_out') OR action LIKE 'idp.%')
  AND action = ANY($2::text[])
"""
HISTORY_FIRST_PAGE = _HISTORY + "ORDER BY occurred_at DESC, seq DESC LIMIT $3"
HISTORY_NEXT_PAGE = (
    _HISTORY + "AND (occurred_at, seq) < ($4, $5) ORDER BY occurred_at DESC, seq DESC LIMIT $3"
)


async def sign_in_history(
    conn: asyncpg.Connection,
    sub: str,
    *,
    limit: int,
    after: tuple[dt.datetime, int] | None = None,
) -> list[asyncpg.Record]:
    """The user's sign-in events across every scope, newest first (keyset by time, seq)."""
    if after is None:
        return list(await conn.fetch(HISTORY_FIRST_PAGE, sub, list(HISTORY_ACTIONS), limit))
    return list(
        await conn.fetch(HISTORY_NEXT_PAGE, sub, list(HISTORY_ACTIONS), limit, after[0], after[1])
    )


# --- The bundle the app holds -------------------------------------------------------------


@dataclass
class AccountServices:
    """What the account endpoints need besides the database and Auth0; one per process."""

    limiter: RateLimiter = field(default_factory=RateLimiter)
    revocations: RevocationStore = field(default_factory=RevocationStore)
    after_response: AfterResponse = field(default_factory=AfterResponse)
    log_id_retention_days: int = 90

    def __post_init__(self) -> None:
        retention = self.log_id_retention_days

        async def purge_log_ids(conn: asyncpg.Connection) -> None:
            await purge_ingested_log_ids(conn, older_than_days=retention)

        self.revocations.housekeeping += [RateLimiter.purge, purge_log_ids]

    async def start(self, database_url: str) -> None:
        await self.revocations.start(database_url)

    async def aclose(self) -> None:
        await self.after_response.drain()
        await self.revocations.stop()


def account_services(settings: Settings) -> AccountServices:
    """`AccountServices` configured from settings."""
    s = settings
    return AccountServices(
        limiter=RateLimiter(
            password_reset_per_ip=Rate(
                s.rate_limit_password_reset_ip_count, s.rate_limit_password_reset_ip_seconds
            ),
            password_reset_per_email=Rate(
                s.rate_limit_password_reset_email_count,
                s.rate_limit_password_reset_email_seconds,
            ),
            verification_email_per_user=Rate(
                s.rate_limit_verification_email_count, s.rate_limit_verification_email_seconds
            ),
        ),
        revocations=RevocationStore(
            leeway_seconds=s.token_leeway_seconds, session_seconds=s.revoked_session_seconds
        ),
        log_id_retention_days=s.auth0_log_id_retention_days,
    )


@contextlib.asynccontextmanager
async def running_account_services(
    services: AccountServices, database_url: str, verifier: TokenVerifier
) -> AsyncIterator[AccountServices]:
    """Start the services, plug revocation into the verifier, and stop them on exit."""
    await services.start(database_url)
    verifier.revocation_check = services.revocations.is_revoked
    try:
        yield services
    finally:
        verifier.revocation_check = None
        await services.aclose()
