"""An upstream that answers with the bytes a test scripts, on a loopback port: for what a
well-behaved server never sends (a malformed answer, a body cut short, a connection closed
between calls). Not a test module."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class Scripted:
    port: int = 0
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)  # the targets asked for, in order

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def scripted_upstream(
    answers: list[bytes], *, close_after: bool = False
) -> AsyncIterator[Scripted]:
    """Each request read (its head; it sends no body) gets the next of `answers`, the last
    one over and over; with `close_after` the connection is closed after each answer."""
    served = Scripted()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                served.requests.append(head.split(b" ", 2)[1])
                n = len(served.requests) - 1
                writer.write(answers[min(n, len(answers) - 1)])
                await writer.drain()
                if close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    served.port = server.sockets[0].getsockname()[1]
    try:
        yield served
    finally:
        server.close()
        await server.wait_closed()
