"""Per-IP and per-user request limits: decided in memory, shared across copies in the background.

    limiter = GlobalRateLimiter()
    per_ip = limiter.limit("ip", Quota(600, 60))
    wait = per_ip.check("203.0.113.7")   # None: go ahead; else seconds until a retry may pass
    await limiter.start(database)        # the sync task; `await limiter.stop()` flushes

`check` is synchronous and does no I/O (about a microsecond), so the read path keeps its
speed. Every `sync_interval` a background task sends this copy's unsent hits to the shared
store in ONE statement and reads back, in the same statement, the totals of every copy for
the keys this copy has seen since the last sync. A copy then decides with
(global total at its last sync) + (its own hits since), so the store is never on the
request path. Postgres (`rate_counters`, migration 0006) is the store; `RedisCounters` is
the same with INCRBY/PEXPIREAT in one pipeline.

Algorithm: a sliding-window counter. Windows are fixed, aligned to the epoch (so every copy
names the same window without talking), and a hit is allowed while

    previous_window_total * (1 - elapsed_fraction_of_current) + current_total + 1 <= limit

which approximates a true sliding window (the previous window's hits are assumed evenly
spread) without the fixed window's double burst at a boundary. Refused hits do not count:
a client that backs off as told gets through when `Retry-After` says.

Error bound (how far over the limit N copies can go). A copy sees another's hits once that
copy has flushed them and it has synced since: at most about two sync intervals (2 * s) late.
Each copy admits only while its own view is under the limit L, so at any moment the true
count exceeds L by at most what the *other* copies admitted for the key in the last 2 * s:

- an attacker spreading R requests/s evenly over N copies: at most 2 * s * R * (N - 1) / N
  (measured, 4 copies, s = 0.5 s, L = 600, R = 400/s: 741-747 admitted; L + bound = 900);
- once a key is saturated, the copies only share the budget that slides free, L/P per
  second, so the excess is at most 2 * s * (N - 1) * L / P (30 for 4 copies at 600/min);
- hard ceiling whatever the timing, and the bound while the store is unreachable (each
  copy then limits alone): N * L per period;
- a key is read back only when this copy saw it since its last sync (reading every tracked
  key every tick would cost the store far more), so the first hits on a key new to this
  copy, or idle here since its last sync, are decided on what this copy knew then, for one
  interval at most; a key under attack is hit every interval, so its view stays fresh.

The sliding estimate is exact for evenly spread traffic only: a client whose hits all fell at
the very end of the previous window gets up to about L extra early in the next one (a fixed
window's worst case, rarely reached). Clock skew between copies shifts window boundaries by
the skew, which NTP keeps to milliseconds.

A failed sync (store down, timeout) keeps the unsent hits and tries again next tick: local
limiting never stops and nothing is raised into a request. A statement that committed but
whose answer was lost is counted twice, which errs on the strict side. Memory is bounded:
each limit tracks at most `max_keys` keys, evicting the least recently used, and drops keys
idle for two windows at every sync. Keys longer than 128 characters are stored as a digest.

Modules: `quota` (a limit and its windows), `sync` (the task), `stores` (Postgres, Redis),
`middleware` (per-IP limits on every request), and `buckets`: the account flows' limits on
rare, costly calls, checked exactly in Postgres on the request path instead.
"""

from app.core.settings import Quota
from app.ratelimit.middleware import ClientRateLimitMiddleware, client_key
from app.ratelimit.quota import MAX_KEY_LENGTH, Limit, retry_after
from app.ratelimit.stores import CounterStore, PostgresCounters, RedisCounters, Row
from app.ratelimit.sync import RETENTION_GRACE_MS, GlobalRateLimiter

__all__ = [
    "MAX_KEY_LENGTH",
    "RETENTION_GRACE_MS",
    "ClientRateLimitMiddleware",
    "CounterStore",
    "GlobalRateLimiter",
    "Limit",
    "PostgresCounters",
    "Quota",
    "RedisCounters",
    "Row",
    "client_key",
    "retry_after",
]
