"""What the stand-in tenant remembers: its keys and clients, users, roles and organisation
members, the browser login's codes, refresh tokens and login sessions, and its counts.

The tenant's routes (`devkit.tenant.app`, `devkit.tenant.oauth`) and grants
(`devkit.tenant.grants`) read and change one `TenantState`.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from devkit.keys import TokenMinter
from devkit.tenant.faults import TenantFault


@dataclass
class Login:
    """Who signed in, to which client, in which tenant session, and what was asked for."""

    sub: str
    client_id: str
    sid: str
    auth_time: int
    scope: str
    audience: str
    org_id: str | None = None


@dataclass
class AuthCode:
    login: Login
    redirect_uri: str
    code_challenge: str
    nonce: str | None
    expires_at: float


@dataclass
class RefreshToken:
    login: Login
    family: str  # every refresh token descended from one code exchange
    rotated: bool = False
    jkt: str | None = None  # issued with a DPoP proof of this key: refreshed with it only


@dataclass
class DPoPState:
    """The token endpoint's DPoP (devkit/tenant/dpop.py): whether it binds tokens at all (an
    API in Auth0 without DPoP does not), whether a proof must carry a nonce (Auth0's
    `use_dpop_nonce` dance), its nonces and the proof ids it has seen."""

    enabled: bool = True
    require_nonce: bool = True
    nonce_seconds: int = 300
    nonce_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    seen: dict[str, float] = field(default_factory=dict)  # jti -> when it may be forgotten


@dataclass
class LoginStore:
    """Codes, refresh tokens and tenant login sessions (by `sid`) of the stand-in tenant."""

    codes: dict[str, AuthCode] = field(default_factory=dict)
    refresh_tokens: dict[str, RefreshToken] = field(default_factory=dict)
    revoked_families: set[str] = field(default_factory=set)
    sessions: dict[str, Login] = field(default_factory=dict)

    def end_sessions(self, *, sid: str | None, sub: str | None, revoke: bool) -> None:
        """Ends the login sessions matching `sid` and `sub` (None matches any); with
        `revoke`, their refresh tokens too (a logout alone leaves them, as Auth0 does)."""

        def matches(login: Login) -> bool:
            return sid in (None, login.sid) and sub in (None, login.sub)

        for ended in [key for key, login in self.sessions.items() if matches(login)]:
            del self.sessions[ended]
        if revoke:
            tokens = self.refresh_tokens.values()
            self.revoked_families |= {t.family for t in tokens if matches(t.login)}


@dataclass
class TenantState:
    """What the stand-in tenant remembers: its keys, M2M client, users, roles and counts."""

    minter: TokenMinter
    client_id: str
    client_secret: str
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    roles: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    org_members: dict[str, set[str]] = field(default_factory=dict)
    member_roles: dict[tuple[str, str], list[dict[str, str]]] = field(default_factory=dict)
    m2m_tokens: set[str] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)
    # When each Management API request arrived (time.monotonic), to hold a budget to account.
    management_calls: list[float] = field(default_factory=list)
    m2m_ttl_seconds: int = 86400
    fault: TenantFault = field(default_factory=TenantFault)
    # The browser login (devkit/tenant/oauth.py): a Regular Web Application and what it was given.
    session_client_id: str = "dev-session-client"
    session_client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    allowed_callbacks: list[str] = field(default_factory=list)  # empty: any
    allowed_logout_urls: list[str] = field(default_factory=list)  # empty: any
    backchannel_logout_url: str | None = None
    session_access_token_ttl_seconds: int = 86400
    user_permissions: dict[str, list[str]] = field(default_factory=dict)
    logins: LoginStore = field(default_factory=LoginStore)
    dpop: DPoPState = field(default_factory=DPoPState)
    # APIs besides the login's own that a refresh token may ask a token for (`audience` in
    # the refresh grant: Auth0's multi-resource refresh tokens); others: access_denied.
    other_audiences: set[str] = field(default_factory=set)

    def user(self, user_id: str) -> dict[str, Any]:
        if user_id not in self.users:
            now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
            local = user_id.split("|")[-1]
            self.users[user_id] = {
                "user_id": user_id,
                "email": f"{local}@example.com",
                "email_verified": True,
                "name": local,
                "nickname": local,
                "given_name": None,
                "family_name": None,
                "picture": "https://example.com/avatar.png",
                "user_metadata": {},
                "app_metadata": {"plan": "internal"},
                "created_at": now,
                "updated_at": now,
                "identities": [
                    {
                        "provider": "auth0",
                        "user_id": local,
                        "connection": "Username-Password-Authentication",
                        "isSocial": False,
                    }
                ],
                "last_ip": "127.0.0.1",
                "logins_count": 1,
            }
        return self.users[user_id]

    def busiest_window(self, seconds: float) -> int:
        """The most Management API requests that arrived within any `seconds`."""
        calls, most, start = self.management_calls, 0, 0
        for end, arrived in enumerate(calls):
            while arrived - calls[start] > seconds:
                start += 1
            most = max(most, end - start + 1)
        return most
