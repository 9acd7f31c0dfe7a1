"""A fault switch for the stand-in tenant (`devkit.tenant`), for the fault-injection runs.

`POST /dev/fault` with `{"mode": "slow", "seconds": 2}` delays every tenant answer by that
long; `{"mode": "429", "retry_after": 5}` answers 429 with `Retry-After` as Auth0 does when
it rate-limits; `{"mode": "500"}` answers 500; `{"mode": "none"}` clears it. The `/dev/`
endpoints themselves are never faulted, so the switch can always be turned off again.
A tenant that is down is a stopped process, not a mode: nothing else refuses connections.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

FaultMode = Literal["none", "slow", "429", "500"]
MODES: tuple[FaultMode, ...] = ("none", "slow", "429", "500")


@dataclass
class TenantFault:
    mode: FaultMode = "none"
    seconds: float = 0.0
    retry_after: int = 1
    faulted: int = 0  # how many answers the fault changed


class FaultMiddleware:
    """Applies the tenant's current fault to every request outside `/dev/`."""

    def __init__(self, app: ASGIApp, fault: TenantFault) -> None:
        self.app = app
        self.fault = fault

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fault = self.fault
        if scope["type"] != "http" or fault.mode == "none" or scope["path"].startswith("/dev/"):
            await self.app(scope, receive, send)
            return
        fault.faulted += 1
        if fault.mode == "slow":
            await asyncio.sleep(fault.seconds)
            await self.app(scope, receive, send)
            return
        status = int(fault.mode)
        body = {"statusCode": status, "error": "Fault", "message": f"injected {status}"}
        headers = {"Retry-After": str(fault.retry_after)} if status == 429 else {}
        await JSONResponse(body, status, headers=headers)(scope, receive, send)


async def set_fault(request: Request, fault: TenantFault) -> Response:
    """The body of `POST /dev/fault`; answers the fault now in force."""
    body = orjson.loads(await request.body() or b"{}")
    mode = str(body.get("mode", "none"))
    if mode not in MODES:
        return JSONResponse({"error": f"mode must be one of {', '.join(MODES)}"}, 400)
    fault.mode = mode
    fault.seconds = float(body.get("seconds", 0.0))
    fault.retry_after = int(body.get("retry_after", 1))
    return JSONResponse(
        {"mode": fault.mode, "seconds": fault.seconds, "retry_after": fault.retry_after}
    )
