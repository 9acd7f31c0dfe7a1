"""The typed state the lifespan creates once and every handler reads as `request.state.ctx`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
from databases import Database
from starlette.requests import Request

from app.account.services import AccountServices
from app.audit.batcher import AuditWriter
from app.auth.tokens import TokenVerifier
from app.auth0.client import Auth0Client
from app.core.settings import Settings
from app.ratelimit import Limit

if TYPE_CHECKING:  # app.auth.requires imports this module
    from app.auth.requires import DenialHook


@dataclass
class AppContext:
    settings: Settings
    database: Database
    http: httpx.AsyncClient
    verifier: TokenVerifier
    auth0: Auth0Client
    account: AccountServices
    # Records reads: their events, batched with other requests' (app/audit/batcher.py).
    audit: AuditWriter
    per_user_limit: Limit | None = None
    # Called by `requires` for every 401/403 it raises (the audit log records the 403s).
    on_denied: DenialHook | None = None


def context(request: Request) -> AppContext:
    ctx: AppContext = request.state.ctx
    return ctx
