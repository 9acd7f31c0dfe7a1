"""Every periodic purge in one place.

The parts own their tables and so their purge statements; `app.main` lists them here as
`Purge` jobs, and one `Housekeeping` task per process runs them all every `interval`
seconds on a pooled connection. Each job runs on its own, so one that fails (logged with
its name) does not stop the others, and a database that is down costs one warning a
round. Purges are idempotent deletes of expired rows: copies of the service may run them
at the same time without harm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg
from databases import Database

from app.core.db import connection
from app.core.errors import DATABASE_OUTAGES

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Purge:
    """A named job: delete what has expired in one table, on the connection given."""

    name: str
    run: Callable[[asyncpg.Connection], Awaitable[object]]


class Housekeeping:
    """Runs every purge every `interval` seconds, the first round at start."""

    def __init__(
        self, database: Database, purges: Sequence[Purge], *, interval: float = 60.0
    ) -> None:
        self.database = database
        self.purges = list(purges)
        self.interval = interval
        self.rounds = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="housekeeping")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancelled(task)

    async def run_once(self) -> list[str]:
        """One round; returns the names of the purges that failed or could not run."""
        failed: list[str] = []
        try:
            async with connection(self.database) as conn:
                for purge in self.purges:
                    try:
                        await purge.run(conn)
                    except DATABASE_OUTAGES:
                        raise
                    except Exception:
                        logger.exception("purge %s failed", purge.name)
                        failed.append(purge.name)
        except DATABASE_OUTAGES as exc:
            logger.warning("housekeeping skipped: database unavailable (%s)", type(exc).__name__)
            return [p.name for p in self.purges if p.name not in failed]
        finally:
            self.rounds += 1
        return failed

    async def _loop(self) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(self.interval)


async def cancelled(task: asyncio.Task[None] | None) -> None:
    """Cancel a background task (if any) and wait until it has ended."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
