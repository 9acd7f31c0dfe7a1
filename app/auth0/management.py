"""The Auth0 calls the service makes: users, tenant roles, organization members and their
roles, the verification email job (Management API) and the password-change request
(Authentication API).

Each call says whether it may be retried (`app.auth0.client` owns the policy): reads, PATCH
and DELETE of roles repeat safely; a POST that sends an email or assigns roles never does.
A user's record is kept in a short, bounded cache, forgotten around every update to it.
"""

from __future__ import annotations

import asyncio
import copy
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from app.auth0.client import (
    Auth0Transport,
    Clock,
    Sleep,
    json_body,
    json_object,
    json_objects,
)
from app.core.errors import NotFound, UpstreamError
from app.core.settings import Settings

PROFILE_CACHE_SIZE = 4096
PAGE_SIZE = 100


def user_path(user_id: str) -> str:
    """The Management API path of a user; subs contain `|`, so every character is encoded."""
    return f"/api/v2/users/{quote(user_id, safe='')}"


def org_path(org_id: str) -> str:
    return f"/api/v2/organizations/{quote(org_id, safe='')}"


def member_roles_path(org_id: str, user_id: str) -> str:
    """A member's roles within one organization (not the tenant-wide roles of the user)."""
    return f"{org_path(org_id)}/members/{quote(user_id, safe='')}/roles"


class Auth0Client:
    """One per process; shares the app's `httpx.AsyncClient`. `stats` counts what it did."""

    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.transport = Auth0Transport(
            settings, http, sleep=sleep, clock=clock, wall_clock=wall_clock, rand=rand
        )
        self.stats = self.transport.stats
        self._clock = clock
        self._profiles: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._profile_writes = 0

    async def aclose(self) -> None:
        """Forget the token and cached profiles; the shared HTTP client is the lifespan's."""
        await self.transport.aclose()
        self._profiles.clear()

    # --- Users ---------------------------------------------------------------------------

    async def get_user(self, user_id: str) -> dict[str, Any]:
        """The user's full Auth0 record (callers filter it), served from a short cache."""
        cached = self._profiles.get(user_id)
        if cached is not None and self._clock() < cached[0]:
            self._profiles.move_to_end(user_id)
            self.stats["profile_cache_hits"] += 1
            return copy.deepcopy(cached[1])
        self.stats["profile_cache_misses"] += 1
        writes = self._profile_writes
        response = await self.transport.request("GET", user_path(user_id), retryable=True)
        user = json_object(json_body(response))
        # An update that ran while we read may have made this answer stale: don't keep it.
        if writes == self._profile_writes and self.settings.profile_cache_seconds > 0:
            expires = self._clock() + self.settings.profile_cache_seconds
            self._profiles[user_id] = (expires, copy.deepcopy(user))
            self._profiles.move_to_end(user_id)
            while len(self._profiles) > PROFILE_CACHE_SIZE:
                self._profiles.popitem(last=False)
        return user

    async def update_user(self, user_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """PATCH the user and return Auth0's updated record.

        Retried like a GET: Auth0 sets the given fields (and merges `user_metadata` at the top
        level), so sending the same body twice leaves the same result.
        """
        self._forget_profile(user_id)
        try:
            response = await self.transport.request(
                "PATCH", user_path(user_id), json=dict(fields), retryable=True
            )
        finally:
            self._forget_profile(user_id)
        return json_object(json_body(response))

    async def send_verification_email(self, user_id: str) -> dict[str, Any]:
        """Start Auth0's verification-email job; never retried (it would send two emails)."""
        body = {"user_id": user_id}
        response = await self.transport.request(
            "POST", "/api/v2/jobs/verification-email", json=body
        )
        return json_object(json_body(response))

    def _forget_profile(self, user_id: str) -> None:
        self._profiles.pop(user_id, None)
        self._profile_writes += 1

    # --- Roles ---------------------------------------------------------------------------

    async def get_user_roles(self, user_id: str) -> list[dict[str, Any]]:
        """Every tenant role assigned directly to the user, across all pages."""
        return await self._all_roles(user_path(user_id) + "/roles")

    async def _all_roles(self, path: str) -> list[dict[str, Any]]:
        roles: list[dict[str, Any]] = []
        for page in range(1000):
            params: dict[str, str | int] = {"per_page": PAGE_SIZE, "page": page}
            params["include_totals"] = "true"
            response = await self.transport.request("GET", path, params=params, retryable=True)
            body = json_body(response)
            if isinstance(body, list):  # a tenant that ignores paging sends everything at once
                return json_objects(body)
            items, total = json_objects(json_object(body).get("roles")), body.get("total")
            roles += items
            if not items or not isinstance(total, int) or len(roles) >= total:
                break
        return roles

    async def assign_roles(self, user_id: str, role_ids: Sequence[str]) -> None:
        """Assign roles by id; a POST, so never retried (our caller sees 503 and decides)."""
        body = {"roles": list(role_ids)}
        await self.transport.request("POST", user_path(user_id) + "/roles", json=body)

    async def remove_roles(self, user_id: str, role_ids: Sequence[str]) -> None:
        """Remove roles by id; retried, since removing an absent role is a no-op in Auth0."""
        body = {"roles": list(role_ids)}
        await self.transport.request(
            "DELETE", user_path(user_id) + "/roles", json=body, retryable=True
        )

    # --- Organizations ---------------------------------------------------------------------

    async def is_org_member(self, org_id: str, user_id: str) -> bool:
        """Whether the user belongs to the organization (an unknown organization: False).

        Walks the member list by checkpoint pagination (`take`/`from`, the only paging that
        reaches past 1000 members), asking for user ids only, and stops at the first match.
        """
        path = org_path(org_id) + "/members"
        params: dict[str, str | int] = {"fields": "user_id", "include_fields": "true"}
        params["take"] = PAGE_SIZE
        seen: set[str] = set()
        while True:
            try:
                response = await self.transport.request("GET", path, params=params, retryable=True)
            except NotFound:
                return False
            body = json_body(response)
            members = json_objects(
                body if isinstance(body, list) else json_object(body).get("members")
            )
            if any(member.get("user_id") == user_id for member in members):
                return True
            cursor = body.get("next") if isinstance(body, dict) else None
            if not isinstance(cursor, str) or not cursor:
                return False
            if cursor in seen:
                raise UpstreamError("Auth0 sent a member list that does not end")
            seen.add(cursor)
            params["from"] = cursor

    async def get_member_roles(self, org_id: str, user_id: str) -> list[dict[str, Any]]:
        """The roles the user holds in the organization only, across all pages."""
        return await self._all_roles(member_roles_path(org_id, user_id))

    async def assign_member_roles(self, org_id: str, user_id: str, role_ids: Sequence[str]) -> None:
        """Assign roles to the user within the organization; a POST, never retried."""
        body = {"roles": list(role_ids)}
        await self.transport.request("POST", member_roles_path(org_id, user_id), json=body)

    async def remove_member_roles(self, org_id: str, user_id: str, role_ids: Sequence[str]) -> None:
        """Remove roles from the user within the organization; retried (absent: a no-op)."""
        body = {"roles": list(role_ids)}
        await self.transport.request(
            "DELETE", member_roles_path(org_id, user_id), json=body, retryable=True
        )

    # --- Authentication API --------------------------------------------------------------

    async def request_password_reset(self, email: str) -> None:
        """Ask Auth0 to email a password-reset link; a POST that sends mail, never retried."""
        body = {
            "client_id": self.settings.auth0_client_id,
            "email": email,
            "connection": self.settings.auth0_db_connection,
        }
        await self.transport.request("POST", "/dbconnections/change_password", json=body, m2m=False)
