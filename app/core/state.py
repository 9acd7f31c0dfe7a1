"""What every part stands on at run time, and how a part finds its own runtime object.

`Core` is built once per process by the lifespan (`running_core`): the settings, the
database pool and the one shared HTTP client, plus what the parts add for `/readyz`: named
readiness checks, and named states shown beside them that never make a copy unready. Every
other part owns its runtime object (a verifier, a writer, a client) and the accessor that
finds it on a request (`part_of`); `core` knows none of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import httpx
from databases import Database

from app.core.db import create_database
from app.core.settings import Settings
from app.core.timings import LoopLag

T = TypeVar("T")
# True when the part can serve; `/readyz` answers 503 while any check says False.
ReadinessCheck = Callable[[], Awaitable[bool]]
# A part's state as `/readyz` shows it, without gating readiness: "stopped" is a part that
# stopped on purpose where every copy would (taking them all out of service would help no
# one); the metrics and the log say why.
StateReport = Callable[[], Literal["ok", "stopped"]]


class HasState(Protocol):
    """A request or a WebSocket: whatever carries the lifespan's state (Starlette's
    `HTTPConnection`), named structurally so `core` needs no web framework."""

    @property
    def state(self) -> Any: ...


@dataclass
class Core:
    settings: Settings
    database: Database
    http: httpx.AsyncClient
    # `/readyz` beside the database: a check per name, each True for the copy to take traffic.
    checks: dict[str, ReadinessCheck] = field(default_factory=dict)
    # `/readyz` also shows these, by name, whatever they say.
    reports: dict[str, StateReport] = field(default_factory=dict)


def part_of(conn: HasState, name: str, kind: type[T]) -> T:
    """The runtime object the lifespan put in its state under `name`; a `RuntimeError` when
    the app was built without it (a wiring mistake, never a client's)."""
    found = getattr(conn.state, name, None)
    if not isinstance(found, kind):
        raise RuntimeError(f"{name} ({kind.__name__}) is not wired into this app")
    return found


@contextlib.asynccontextmanager
async def running_core(settings: Settings) -> AsyncIterator[Core]:
    """The pool connected, the shared HTTP client open and the event loop's lag sampled;
    all stopped on exit."""
    database = create_database(
        settings.database.url,
        min_size=settings.database.pool_min_size,
        max_size=settings.database.pool_max_size,
        statement_timeout_ms=settings.database.statement_timeout_ms,
    )
    timeout = settings.auth0.timeout_seconds
    http = httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 2.0)),
        follow_redirects=False,
        limits=httpx.Limits(max_connections=50),
    )
    await database.connect()
    lag = LoopLag()
    lag.start()
    try:
        yield Core(settings, database, http)
    finally:
        await lag.stop()
        await http.aclose()
        await database.disconnect()
