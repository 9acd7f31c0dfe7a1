"""The request's view of what every part stands on: `context(request)` is the process's `Core`
(settings, database, the shared HTTP client)."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from app.core.state import Core, part_of


def context(request: HTTPConnection) -> Core:
    return part_of(request, "core", Core)
