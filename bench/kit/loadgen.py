"""A small asyncio load generator that keeps every answer, for the fault-injection runs.

wrk counts statuses; a fault run needs more: for each request its status (or the transport
error instead), whether a `Retry-After` came with it, its latency, when it started, and the
id of every patient a POST created, so the database can be checked against the 201s.
`concurrency` workers loop until stopped, each sending one request at a time, optionally
paced to a total `rate` per second (an open load: request n is due at start + n / rate,
whenever the one before it finished; `Answer.due` keeps when it was due, so the time a
request waited for a free connection can be counted too) and bounded to `limit` requests.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

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
    due: float | None = None  # monotonic, when paced: when the schedule wanted it sent

    @property
    def since_due(self) -> float:
        """Seconds from when it was due to its answer (its latency when not paced)."""
        return self.started + self.seconds - (self.due if self.due is not None else self.started)


Reply = tuple[int, bool, bytes]  # status, whether a Retry-After came, body
Send = Callable[[Call], Awaitable[Reply]]
# What a failed exchange raises (an answer with `error` set, not a crash of the load).
RAW_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
    TimeoutError,
    ValueError,
)
HTTPX_ERRORS: tuple[type[Exception], ...] = (httpx.HTTPError,)


class RawConnection:
    """One keep-alive HTTP/1.1 connection of one worker, on 127.0.0.1 only.

    httpx costs the load generator 1 to 6 ms of CPU a request at 64 connections (its pool
    looks at every connection for every request), more than the floor's whole request
    costs its server, on the same two cores; this writes the request's bytes and reads the
    answer (Content-Length or chunked) for 50 to 110 µs.
    It reconnects after an error or `Connection: close`.
    """

    def __init__(self, base_url: str, timeout: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname != "127.0.0.1" or not parts.port:
            raise ValueError("the raw client only speaks plain HTTP to 127.0.0.1:<port>")
        self.host, self.port, self.timeout = parts.hostname, parts.port, timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def send(self, call: Call) -> Reply:
        try:
            async with asyncio.timeout(self.timeout):
                return await self._exchange(call)
        except BaseException:
            self.close()  # the connection's state is unknown: never reuse it
            raise

    async def _exchange(self, call: Call) -> Reply:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        lines = [f"{call.method} {call.path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in call.headers.items()]
        if call.body is not None or call.method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(call.body or b'')}")
        self._writer.write("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + (call.body or b""))
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, _, header_block = head.partition(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        headers: dict[bytes, bytes] = {}
        for line in header_block.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name:
                headers[name.strip().lower()] = value.strip()
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = await self._chunked()
        else:
            body = await self._reader.readexactly(int(headers.get(b"content-length", b"0")))
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return status, b"retry-after" in headers, body

    async def _chunked(self) -> bytes:
        assert self._reader is not None
        parts: list[bytes] = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self._reader.readuntil(b"\r\n")  # no trailers from our servers
                return b"".join(parts)
            parts.append(await self._reader.readexactly(size))
            await self._reader.readexactly(2)


@dataclass
class Load:
    """`await load.run(stop)` until `stop` is set; then in-flight requests get `grace`
    seconds to finish, and `pending` counts any still unanswered (stuck).

    `raw`: each worker its own `RawConnection` instead of one httpx client shared by all
    (for latency at a fixed rate, where the generator's own CPU must stay small)."""

    base_url: str
    make_call: Callable[[int], Call]
    concurrency: int = 16
    rate: float | None = None
    timeout: float = 60.0
    fresh_connections: bool = False
    limit: int | None = None  # at most this many requests in all
    raw: bool = False
    answers: list[Answer] = field(default_factory=list)
    pending: int = 0
    _in_flight: int = 0
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    async def run(self, stop: asyncio.Event, grace: float = 30.0) -> None:
        if self.raw:
            if self.fresh_connections:
                raise ValueError("the raw client keeps its connections")
            connections = [
                RawConnection(self.base_url, self.timeout) for _ in range(self.concurrency)
            ]
            try:
                await self._run([c.send for c in connections], stop, grace)
            finally:
                for connection in connections:
                    connection.close()
            return
        limits = httpx.Limits(
            max_connections=self.concurrency,
            max_keepalive_connections=0 if self.fresh_connections else self.concurrency,
        )
        async with httpx.AsyncClient(
            base_url=self.base_url, limits=limits, timeout=self.timeout
        ) as client:

            async def send(call: Call) -> Reply:
                response = await client.request(
                    call.method, call.path, headers=call.headers, content=call.body
                )
                return response.status_code, "retry-after" in response.headers, response.content

            await self._run([send] * self.concurrency, stop, grace)

    async def _run(self, senders: list[Send], stop: asyncio.Event, grace: float) -> None:
        started = time.monotonic()
        workers = [asyncio.create_task(self._worker(send, stop, started)) for send in senders]
        await stop.wait()
        _, stuck = await asyncio.wait(workers, timeout=grace)
        self.pending = self._in_flight
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)

    async def _worker(self, send: Send, stop: asyncio.Event, t0: float) -> None:
        while not stop.is_set():
            n = next(self._counter)
            if self.limit is not None and n >= self.limit:
                return
            due = None
            if self.rate:
                due = t0 + n / self.rate
                if (delay := due - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                    if stop.is_set():
                        return
            await self._one(send, self.make_call(n), due)

    async def _one(self, send: Send, call: Call, due: float | None = None) -> None:
        errors = RAW_ERRORS if self.raw else HTTPX_ERRORS
        self._in_flight += 1
        started = time.monotonic()
        try:
            status, retry_after, body = await send(call)
        except errors as exc:
            self.answers.append(
                Answer(
                    call.name,
                    started,
                    time.monotonic() - started,
                    None,
                    type(exc).__name__,
                    due=due,
                )
            )
            return
        finally:
            self._in_flight -= 1
        patient_id = None
        if status == 201 and call.method == "POST":
            patient_id = orjson.loads(body).get("id")
        self.answers.append(
            Answer(
                call.name,
                started,
                time.monotonic() - started,
                status,
                retry_after=retry_after,
                patient_id=patient_id,
                due=due,
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
