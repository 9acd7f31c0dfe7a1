"""What every command of `python -m app` shares: a failure told in one line, the owner's
database URL, and work done on a connection of its own."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from app.core.db import connect_raw
from app.core.settings.database import DatabaseSettings

T = TypeVar("T")


def fail(message: str, code: int = 1) -> int:
    """Say `message` on stderr as the one line a failing command prints; the exit code."""
    print(f"error: {message}", file=sys.stderr)
    return code


def owner_url() -> str:
    """The migrations owner's URL (MIGRATIONS_DATABASE_URL, else DATABASE_URL)."""
    return DatabaseSettings.load().owner_url


def on_connection(url: str, work: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    """`work` on a connection of its own to `url`, closed after."""

    async def run() -> T:
        conn = await connect_raw(url)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(run())
