"""A small asyncio load generator that keeps every answer, for the fault-injection runs.

wrk counts statuses; a fault run needs more: for each request its status (or the transport
error instead), whether a `Retry-After` came with it, its latency, when it started, and the
id of every patient a POST created, so the database can be checked against the 201s.
`concurrency` workers loop until stopped, each sending one request at a time, optionally
paced to a total `rate` per second.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import orjson


@dataclass(frozen=True)
class Call:
    name: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    name: str
    started: float  # monotonic
    seconds: float
    status: int | None  # None: no HTTP answer (see `error`)
    error: str | None = None
    retry_after: bool = False
    patient_id: str | None = None


@dataclass
class Load:
    """`await load.run(stop)` until `stop` is set; then in-flight requests get `grace`
    seconds to finish, and `pending` counts any still unanswered (stuck)."""

    base_url: str
    make_call: Callable[[int], Call]
    concurrency: int = 16
    rate: float | None = None
    timeout: float = 60.0
    fresh_connections: bool = False
    answers: list[Answer] = field(default_factory=list)
    pending: int = 0
    _in_flight: int = 0
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    async def run(self, stop: asyncio.Event, grace: float = 30.0) -> None:
        limits = httpx.Limits(
            max_connections=self.concurrency,
            max_keepalive_connections=0 if self.fresh_connections else self.concurrency,
        )
        async with httpx.AsyncClient(
            base_url=self.base_url, limits=limits, timeout=self.timeout
        ) as client:
            started = time.monotonic()
            workers = [
                asyncio.create_task(self._worker(client, stop, started))
                for _ in range(self.concurrency)
            ]
            await stop.wait()
            _, stuck = await asyncio.wait(workers, timeout=grace)
            self.pending = self._in_flight
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)

    async def _worker(self, client: httpx.AsyncClient, stop: asyncio.Event, t0: float) -> None:
        while not stop.is_set():
            n = next(self._counter)
            if self.rate:
                due = t0 + n / self.rate
                if (delay := due - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                    if stop.is_set():
                        return
            await self._one(client, self.make_call(n))

    async def _one(self, client: httpx.AsyncClient, call: Call) -> None:
        self._in_flight += 1
        started = time.monotonic()
        try:
            response = await client.request(
                call.method, call.path, headers=call.headers, content=call.body
            )
        except httpx.HTTPError as exc:
            self.answers.append(
                Answer(call.name, started, time.monotonic() - started, None, type(exc).__name__)
            )
            return
        finally:
            self._in_flight -= 1
        patient_id = None
        if response.status_code == 201 and call.method == "POST":
            patient_id = orjson.loads(response.content).get("id")
        self.answers.append(
            Answer(
                call.name,
                started,
                time.monotonic() - started,
                response.status_code,
                retry_after="retry-after" in response.headers,
                patient_id=patient_id,
            )
        )


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass(frozen=True)
class Summary:
    requests: int
    ok: int  # 2xx
    unavailable: int  # 503
    unavailable_without_retry_after: int
    other: Counter[str]  # every other status or transport error, by name
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, answers: list[Answer]) -> Summary:
        other: Counter[str] = Counter()
        ok = unavailable = bare = 0
        for a in answers:
            if a.status is not None and 200 <= a.status < 300:
                ok += 1
            elif a.status == 503:
                unavailable += 1
                bare += not a.retry_after
            else:
                other[str(a.status) if a.status is not None else a.error or "?"] += 1
        latencies = [a.seconds * 1000 for a in answers]
        return cls(
            len(answers),
            ok,
            unavailable,
            bare,
            other,
            percentile(latencies, 50),
            percentile(latencies, 99),
            max(latencies, default=0.0),
        )
