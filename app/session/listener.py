"""One dedicated connection per process that LISTENs for session changes (app/session/store.py
NOTIFYs them when a session ends or is refreshed), as app/auth/revocation.py does for
revocations.

`on_change(hashes)` gets the hex cookie hashes of each notification (or `None`: "drop
everything"). While the connection is down nothing can be trusted to arrive, so `listening`
is False (the cache is then bypassed) and every (re)connection starts with `on_change(None)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

from app.core.db import asyncpg_dsn
from app.core.tasks import cancelled
from app.session.store import CHANNEL

logger = logging.getLogger(__name__)

APPLICATION_NAME = "auth0-bff-sessions"  # names the listener in pg_stat_activity
OnChange = Callable[[list[str] | None], None]


class SessionListener:
    def __init__(
        self,
        on_change: OnChange,
        *,
        channel: str = CHANNEL,
        keepalive_seconds: float = 5.0,
        reconnect_max_seconds: float = 5.0,
    ) -> None:
        self.on_change = on_change
        self.channel = channel
        self.keepalive_seconds = keepalive_seconds
        self.reconnect_max_seconds = reconnect_max_seconds
        self._dsn: str | None = None
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed() and not self._lost.is_set()

    async def start(self, database_url: str) -> None:
        """Connect and LISTEN, then keep that up in the background (raises if the first
        connection fails: start-up should then fail)."""
        if self._task is not None:
            raise RuntimeError("SessionListener already started")
        self._dsn = asyncpg_dsn(database_url)
        await self._connect()
        self._task = asyncio.get_running_loop().create_task(self._supervise())

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancelled(task)
        await self._close()

    async def _connect(self) -> None:
        assert self._dsn is not None
        conn: asyncpg.Connection = await asyncpg.connect(
            self._dsn, timeout=10, server_settings={"application_name": APPLICATION_NAME}
        )
        try:
            self._lost.clear()
            conn.add_termination_listener(self._on_terminated)
            await conn.add_listener(self.channel, self._on_notification)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self.on_change(None)  # whatever changed while nobody listened

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=2)
            except Exception:  # closing a broken connection: nothing left to do
                conn.terminate()

    def _on_terminated(self, conn: asyncpg.Connection) -> None:
        self._lost.set()

    def _on_notification(
        self, conn: asyncpg.Connection, pid: int, channel: str, payload: str
    ) -> None:
        hashes = None if payload == "*" else [h for h in payload.split(",") if h]
        self.on_change(hashes)

    async def _supervise(self) -> None:
        delay = 0.2
        while True:
            if self._conn is None or self._conn.is_closed():
                await self._close()
                try:
                    await self._connect()
                    delay = 0.2
                except Exception as exc:  # whatever the cause, keep trying: never stop
                    logger.warning(
                        "session listener cannot connect (%s); retrying in %.1fs",
                        type(exc).__name__,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.reconnect_max_seconds)
                    continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), timeout=self.keepalive_seconds)
            if self._lost.is_set():
                logger.warning("session listener lost its connection; reconnecting")
                await self._close()
                continue
            conn = self._conn
            if conn is None:
                continue
            try:
                await conn.fetchval("SELECT 1", timeout=max(1.0, self.keepalive_seconds))
            except Exception as exc:  # a broken connection is replaced, whatever broke it
                logger.warning("session listener check failed (%s)", type(exc).__name__)
                conn.terminate()
                self._lost.set()
