"""The typed state the lifespan creates once (`app.main.create_app`) and every handler
reads through `app.http.context.context(request)`.

`core` imports nothing else of `app` at run time: the parts' types are named for the type
checker only, so this module can sit below every part that reads it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from databases import Database

from app.core.errors import AppError
from app.core.settings import Settings

if TYPE_CHECKING:
    from app.account.services import AccountServices
    from app.audit.batcher import AuditWriter
    from app.auth.tokens import TokenVerifier
    from app.auth0.management import Auth0Client
    from app.ratelimit import Limit
    from app.session.resolver import SessionResolver


# Awaited by `requires` (app/auth/requires.py) for every 401/403 it raises, with the request,
# the verified principal (None for a 401) and the error; app/audit/http.py records the 403s.
DenialHook = Callable[[Any, Any, AppError], Awaitable[None]]


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
    # Cookie sessions (app/session/), when SESSION_CLIENT_ID is set: `requires` takes the
    # access token of a request with the session cookie and no bearer token from here.
    sessions: SessionResolver | None = None
