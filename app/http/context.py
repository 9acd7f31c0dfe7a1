"""The lifespan's typed state, as a handler reads it from its request."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from app.core.state import AppContext


def context(request: HTTPConnection) -> AppContext:
    ctx: AppContext = request.state.ctx
    return ctx
