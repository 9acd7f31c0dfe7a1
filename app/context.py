"""The typed state the lifespan creates once and every handler reads as `request.state.ctx`."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from databases import Database
from starlette.requests import Request

from app.account import AccountServices
from app.auth0 import Auth0Client
from app.ratelimit import Limit
from app.settings import Settings
from app.tokens import TokenVerifier


@dataclass
class AppContext:
    settings: Settings
    database: Database
    http: httpx.AsyncClient
    verifier: TokenVerifier
    auth0: Auth0Client
    account: AccountServices
    per_user_limit: Limit | None = None


def context(request: Request) -> AppContext:
    ctx: AppContext = request.state.ctx
    return ctx
