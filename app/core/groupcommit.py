"""Group commit: several requests' writes in one statement or one transaction.

Each request hands its work to a per-process `GroupCommit` and waits for the result. The
committer sends whatever requests have queued as one batch (`commit`), so concurrent
requests share one round trip, one commit and one WAL flush instead of paying for one each.
With one request at a time it writes at once: batching adds no wait, only sharing.

A batch that fails for a reason of its own data (not the database's state) is retried one
request at a time, so a bad request fails alone. When the database is unreachable every
waiting request fails with the pool's `DatabaseUnavailable` (503).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from app.core.errors import DATABASE_OUTAGES, DatabaseUnavailable

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(slots=True)
class Waiting(Generic[Item, Result]):
    item: Item
    done: asyncio.Future[Result]


class Batches(ABC, Generic[Item, Result]):
    """The queue under every group write: `submit` queues an item and, while fewer than
    `max_in_flight` batches are being written, starts one with everything queued (at most
    `max_size` in `size` units), so one batch is written while the next forms; with one
    request at a time each is written at once. `_write` answers every item of its batch
    (`GroupCommit` below, and the DPoP replay stores, app/auth/replay.py)."""

    def __init__(self, *, max_size: int, max_in_flight: int = 2) -> None:
        self._max_size = max_size
        self._max_in_flight = max_in_flight
        self._queue: list[Waiting[Item, Result]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @abstractmethod
    async def _write(self, batch: list[Waiting[Item, Result]]) -> None:
        """Write the batch and set each item's `done` that is not done yet (a request that
        went away cancelled its own)."""

    def size(self, item: Item) -> int:
        return 1

    async def submit(self, item: Item) -> Result:
        done: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append(Waiting(item, done))
        if len(self._tasks) < self._max_in_flight:
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # A request cancelled while it waits (the client went away) cancels only `done`:
        # its work stays queued, is written with the rest, and does not fail the batch
        # (results are set only on futures not done). No `asyncio.shield`: it doubled the
        # wait's cost (a second future and two callbacks) for nothing more.
        return await done

    async def aclose(self) -> None:
        """Wait for the batches in flight (at shutdown, after the last request)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _drain(self) -> None:
        """Write batches while any are queued. The task leaves `_tasks` in the same step
        as it finds the queue empty: a request that queues right after (its waiter may
        run before the done callbacks) then starts a new one instead of waiting on a
        task that is over."""
        try:
            while self._queue:
                batch: list[Waiting[Item, Result]] = []
                size = 0
                while self._queue and (
                    not batch or size + self.size(self._queue[0].item) <= self._max_size
                ):
                    waiting = self._queue.pop(0)
                    batch.append(waiting)
                    size += self.size(waiting.item)
                await self._write(batch)
        finally:
            self._tasks.discard(asyncio.current_task())


class GroupCommit(Batches[Item, Result]):
    """`submit` returns once the item's batch is committed, with the item's result.

    `max_size` bounds one batch (in `size` units); `max_in_flight` batches may run at once
    (two: one commits while the next forms and encodes).
    """

    what = "a batch"  # for the log line of a failed batch

    def __init__(self, *, max_size: int, max_in_flight: int = 2) -> None:
        super().__init__(max_size=max_size, max_in_flight=max_in_flight)
        self.batches = 0  # batches committed, for tests and the benchmark
        self.requests = 0

    @abstractmethod
    async def commit(self, batch: Sequence[Item]) -> Sequence[Result]:
        """Write the batch, committed when it returns; one result per item, in order."""

    def committed(self, count: int) -> None:
        """Called after each committed batch of `count` requests (for metrics)."""

    async def _write(self, batch: list[Waiting[Item, Result]]) -> None:
        try:
            results = await self.commit([w.item for w in batch])
        except DATABASE_OUTAGES as exc:
            reason = f"{self.what} not written: {type(exc).__name__}"
            for waiting in batch:  # each its own error: they are raised in separate tasks
                _fail(waiting, DatabaseUnavailable(reason))
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            logger.warning(
                "%s failed; retrying its requests one by one",
                self.what,
                extra={"requests": len(batch), "error": type(exc).__name__},
            )
            for waiting in batch:
                await self._write([waiting])
        else:
            self.batches += 1
            self.requests += len(batch)
            self.committed(len(batch))
            for waiting, result in zip(batch, results, strict=True):
                if not waiting.done.done():
                    waiting.done.set_result(result)


def _fail(waiting: Waiting[Item, Result], error: BaseException) -> None:
    if not waiting.done.done():
        waiting.done.set_exception(error)
