"""A router that tries the routes under one prefix before all the others.

Starlette's router matches a request against its routes in order, a regular expression
each, until one takes it. A forwarded call (`/remote/...`, the last routes of about 60)
paid for every route before its own; here the routes whose path starts with `prefix` are
tried first, for a request under `prefix`, and anything they do not take fully (another
path, a method they do not allow) goes through the whole list in its usual order. No
other route may match a path under the prefix (tests/test_main.py checks the app's), so
what a request reaches is unchanged, and so is `routes`, which the OpenAPI document lists
in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute, Match, Route, Router
from starlette.types import Lifespan, Receive, Scope, Send


class PrefixFirstRouter(Router):
    def __init__(
        self, routes: Sequence[BaseRoute], *, prefix: str, lifespan: Lifespan[Any] | None
    ) -> None:
        super().__init__(list(routes), lifespan=lifespan)
        self.prefix = prefix
        self.first = [r for r in self.routes if isinstance(r, Route) and r.path.startswith(prefix)]

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.first and scope["path"].startswith(self.prefix):
            for route in self.first:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.setdefault("router", self)
                    scope["route"] = route
                    scope.update(child_scope)
                    await route.handle(scope, receive, send)
                    return
        await super().app(scope, receive, send)
