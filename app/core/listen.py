"""One dedicated Postgres connection per process that LISTENs on a channel, kept up in the
background: checked every `keepalive_seconds`, and replaced, with a growing pause, when it
drops or goes silent (a connection that died without a FIN fails the check).

Its users say what a (re)connection loads (`on_listening`, run after LISTEN so nothing
committed meanwhile is missed), what a notification means (`on_notification`), and what
each good check does besides (`on_check`): the revocation store (app/auth/revocation.py)
and the session cache's listener (app/session/listener.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from app.core.db import asyncpg_dsn
from app.core.tasks import cancelled

logger = logging.getLogger(__name__)


class Listener:
    """Subclasses set `what` (names it in log lines) and `application_name` (names its
    connection in pg_stat_activity), and implement `on_notification`."""

    what = "notification"
    application_name = "auth0-bff-listener"

    def __init__(
        self, channel: str, *, keepalive_seconds: float = 5.0, reconnect_max_seconds: float = 5.0
    ) -> None:
        self.channel = channel
        self.keepalive_seconds = keepalive_seconds
        self.reconnect_max_seconds = reconnect_max_seconds
        self._dsn: str | None = None
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def listening(self) -> bool:
        """Whether notifications are arriving: connected, and the connection not lost."""
        return self._conn is not None and not self._conn.is_closed() and not self._lost.is_set()

    async def start(self, database_url: str) -> None:
        """Connect and LISTEN, then keep that up in the background. Raises when the first
        connection fails (start-up should then fail)."""
        if self._task is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        self._dsn = asyncpg_dsn(database_url)
        await self._connect()
        self._task = asyncio.get_running_loop().create_task(self._supervise())

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        task, self._task = self._task, None
        await cancelled(task)
        await self._close()

    # --- What users say ---------------------------------------------------------------

    async def on_listening(self, conn: asyncpg.Connection) -> None:
        """After every (re)connection's LISTEN, before it counts as listening; raising
        drops the connection."""

    def on_notification(self, payload: str) -> None:
        raise NotImplementedError

    def on_check(self) -> None:
        """After every good keepalive check."""

    # --- Keeping the connection -----------------------------------------------------------

    async def _connect(self) -> None:
        assert self._dsn is not None
        conn: asyncpg.Connection = await asyncpg.connect(
            self._dsn, timeout=10, server_settings={"application_name": self.application_name}
        )
        try:
            self._lost.clear()
            conn.add_termination_listener(self._on_terminated)
            await conn.add_listener(self.channel, self._on_notification)
            await self.on_listening(conn)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn

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
        self.on_notification(payload)

    async def _supervise(self) -> None:
        """Keep a live, listening connection, checked every `keepalive_seconds`."""
        delay = 0.2
        while True:
            if self._conn is None or self._conn.is_closed():
                await self._close()
                try:
                    await self._connect()
                    delay = 0.2
                except Exception as exc:  # whatever the cause, keep trying: never stop
                    logger.warning(
                        "%s listener cannot connect (%s); retrying in %.1fs",
                        self.what,
                        type(exc).__name__,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.reconnect_max_seconds)
                    continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), timeout=self.keepalive_seconds)
            if self._lost.is_set():
                logger.warning("%s listener lost its connection; reconnecting", self.what)
                await self._close()
                continue
            await self._tick()

    async def _tick(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            await conn.fetchval("SELECT 1", timeout=max(1.0, self.keepalive_seconds))
            self.on_check()
        except Exception as exc:  # a broken connection is replaced, whatever broke it
            logger.warning("%s listener check failed (%s)", self.what, type(exc).__name__)
            conn.terminate()
            self._lost.set()
