"""Limits checked in Postgres on the request path, for rare and costly calls (the account
flows' password-reset and verification emails): exact across copies, one round trip each.

Each bucket is a generic cell rate algorithm (GCRA) in a single upsert: one row and one round
trip per check, no counters to reset, no race between copies (the row lock orders them).
The per-IP and per-user limits on every request are `app.ratelimit.quota`'s, decided in memory.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from app.core.errors import TooManyRequests


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
MAX_BUCKET_LENGTH = 200  # the `rate_limits.bucket` column's limit


def bucket_key(name: str) -> str:
    """The name as stored: itself, or a digest when it would not fit the column (a bucket
    named after a user id of up to 255 characters, say)."""
    if len(name) <= MAX_BUCKET_LENGTH:
        return name
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


class RateLimiter:
    """The account flows' limits, shared by every copy through the `rate_limits` table."""

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
            [bucket_key(name) for name, _ in buckets],
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
