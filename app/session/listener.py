"""One dedicated connection per process that LISTENs for session changes (app/session/repository.py
NOTIFYs them when a session ends or is refreshed), kept up by `app.core.listen.Listener` as
the revocations' listener is.

`on_change(hashes)` gets the hex cookie hashes of each notification (or `None`: "drop
everything"). While the connection is down nothing can be trusted to arrive, so `listening`
is False (the cache is then bypassed) and every (re)connection starts with `on_change(None)`.
"""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from app.core.listen import Listener
from app.session.repository import CHANNEL

APPLICATION_NAME = "auth0-bff-sessions"  # names the listener in pg_stat_activity
OnChange = Callable[[list[str] | None], None]


class SessionListener(Listener):
    what = "session"
    application_name = APPLICATION_NAME

    def __init__(
        self,
        on_change: OnChange,
        *,
        channel: str = CHANNEL,
        keepalive_seconds: float = 5.0,
        reconnect_max_seconds: float = 5.0,
    ) -> None:
        super().__init__(
            channel,
            keepalive_seconds=keepalive_seconds,
            reconnect_max_seconds=reconnect_max_seconds,
        )
        self.on_change = on_change

    async def on_listening(self, conn: asyncpg.Connection) -> None:
        self.on_change(None)  # whatever changed while nobody listened

    def on_notification(self, payload: str) -> None:
        hashes = None if payload == "*" else [h for h in payload.split(",") if h]
        self.on_change(hashes)
