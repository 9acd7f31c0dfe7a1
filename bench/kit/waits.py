"""What the database's backends are doing during a run: pg_stat_activity, sampled.

A thread polls `pg_stat_activity` for the benchmark's database every 50 ms and counts the
backends by state: `CPU` (active, no wait event: running or runnable), a wait event such
as `IO:WALSync` or `Lock:tuple`, or `idle in transaction` (the backend waits for the
application between two statements of a transaction). Averages per sample say how many
backends were in each state at a time.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from types import TracebackType

import asyncpg

from app.core.db import asyncpg_dsn

SAMPLE = """
SELECT CASE
    WHEN state = 'idle in transaction' THEN 'idle in transaction'
    WHEN wait_event IS NULL THEN 'CPU'
    ELSE wait_event_type || ':' || wait_event END
FROM pg_stat_activity
WHERE datname = $1 AND pid <> pg_backend_pid() AND state IN ('active', 'idle in transaction')
"""


class WaitSampler:
    def __init__(self, admin_url: str, database: str, interval: float = 0.05) -> None:
        self.admin_url = admin_url
        self.database = database
        self.interval = interval
        self.counts: Counter[str] = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WaitSampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.run(self._sample())

    async def _sample(self) -> None:
        try:
            conn = await asyncpg.connect(asyncpg_dsn(self.admin_url), timeout=5)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return
        try:
            while not self._stop.is_set():
                for (state,) in await conn.fetch(SAMPLE, self.database):
                    self.counts[state] += 1
                self.samples += 1
                await asyncio.sleep(self.interval)
        finally:
            await conn.close()

    def averages(self) -> dict[str, float]:
        """Backends in each state, on average over the samples, busiest first."""
        if not self.samples:
            return {}
        return {k: round(v / self.samples, 2) for k, v in self.counts.most_common()}
