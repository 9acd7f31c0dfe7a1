"""The group-commit queue itself (app/core/groupcommit.py), with a store in memory: what
the audit writer and the patient creates rely on, whatever they write."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from app.core.groupcommit import GroupCommit


class Doubling(GroupCommit[int, int]):
    """Answers each item with its double after one turn of the loop (a 'commit')."""

    def __init__(self, *, max_in_flight: int) -> None:
        super().__init__(max_size=100, max_in_flight=max_in_flight)
        self.written: list[list[int]] = []

    async def commit(self, batch: Sequence[int]) -> Sequence[int]:
        await asyncio.sleep(0)
        self.written.append(list(batch))
        return [2 * n for n in batch]


async def test_requests_one_after_another_each_get_their_answer() -> None:
    # The next request queues as soon as the previous answer wakes it, before the finished
    # batch's task is forgotten by its done callback: it must start a batch of its own,
    # not wait on a task that is over.
    async def one_after_another(queue: Doubling) -> list[int]:
        return [await queue.submit(n) for n in range(6)]  # no task between: the same step

    for max_in_flight in (1, 2):
        queue = Doubling(max_in_flight=max_in_flight)
        answers = await asyncio.wait_for(one_after_another(queue), 5)
        await queue.aclose()
        assert answers == [0, 2, 4, 6, 8, 10]
        assert queue.written == [[n] for n in range(6)]


async def test_concurrent_requests_share_batches_and_a_cancelled_one_is_still_written() -> None:
    queue = Doubling(max_in_flight=1)
    tasks = [asyncio.create_task(queue.submit(n)) for n in range(10)]
    await asyncio.sleep(0)  # the first batch ([0]) is on its way; the rest queue behind it
    tasks[5].cancel()
    answers = await asyncio.gather(*tasks, return_exceptions=True)
    await queue.aclose()
    assert isinstance(answers[5], asyncio.CancelledError)
    assert [a for n, a in enumerate(answers) if n != 5] == [2 * n for n in range(10) if n != 5]
    assert sorted(n for batch in queue.written for n in batch) == list(range(10))  # 5 too
    assert len(queue.written) < 10  # shared
