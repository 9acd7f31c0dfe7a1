"""The Auth0 calls the service makes: users, tenant roles, organization members and their
roles, the verification email job (Management API, through auth0-python's `AsyncAuth0`) and
the password-change request (Authentication API, plain httpx: the SDK's is not async).

The SDK builds the URLs and reads the answers into its models; this module turns them into
plain dicts and walks the pages. Each call runs inside `Auth0Transport.call`, which owns the
policy (the SDK's own retrying is off), and says here whether it may be retried: reads, PATCH
and DELETE of roles repeat safely; a POST that sends an email or assigns roles never does.
Every call takes a slot of the Management API budget first (app/auth0/budget.py); the profile
page's copies of users' records are the account part's (app/account/cached_profiles.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any

import httpx
from auth0.management import AsyncAuth0
from auth0.management.core.pagination import AsyncPager
from auth0.management.core.pydantic_utilities import UniversalBaseModel

from app.auth0.budget import ManagementBudget, Priority
from app.auth0.client import Auth0Transport, Clock, Sleep
from app.core.errors import NotFound, UpstreamError
from app.core.settings import Settings
from app.core.state import HasState, part_of

PAGE_SIZE = 100
MAX_PAGES = 1000  # bounds a walk over pages a broken tenant would never end

# An SDK `list` of roles with everything but `page` bound.
RolePages = Callable[..., Awaitable[AsyncPager[Any, Any]]]


def plain(model: UniversalBaseModel) -> dict[str, Any]:
    """An SDK model as the JSON Auth0 sent: its fields (unknown ones included), and the
    dates it parsed written back as Auth0 writes them (`2026-11-01T09:30:00.000Z`)."""
    data = _auth0_dates(model.dict())
    if not isinstance(data, dict):
        raise UpstreamError("Auth0 sent an answer of an unexpected shape")
    return data


def _auth0_dates(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, dict):
        return {key: _auth0_dates(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_auth0_dates(item) for item in value]
    return value


class Auth0Client:
    """One per process; its SDK shares the app's `httpx.AsyncClient`. `stats` counts what
    it did."""

    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient,
        *,
        budget: ManagementBudget | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.transport = Auth0Transport(
            settings,
            http,
            budget=budget,
            sleep=sleep,
            clock=clock,
            wall_clock=wall_clock,
            rand=rand,
        )
        # `token` is required but never sent: `async_token` replaces it on every request.
        self.sdk = AsyncAuth0(
            base_url=f"{settings.auth0.management_url}/api/v2",
            token="",
            async_token=self.transport.sdk_token,
            httpx_client=http,
            timeout=settings.auth0.timeout_seconds,
            max_retries=0,
        )
        self.stats = self.transport.stats

    async def aclose(self) -> None:
        """Forget the token; the shared HTTP client and the budget are the lifespan's."""
        await self.transport.aclose()

    # --- Users ---------------------------------------------------------------------------

    async def get_user(
        self, user_id: str, *, priority: Priority = "normal", wait: bool = True
    ) -> dict[str, Any]:
        """The user's full Auth0 record (callers filter it). `priority` and `wait` are the
        budget's (`Auth0Transport.call`)."""
        user = await self.transport.call(
            "users.get",
            partial(self.sdk.users.get, user_id),
            retryable=True,
            priority=priority,
            wait=wait,
        )
        return plain(user)

    async def update_user(self, user_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """PATCH the user and return Auth0's updated record. `fields` are named as the SDK's
        `users.update` names them (`given_name`, `user_metadata`, ...).

        Retried like a GET: Auth0 sets the given fields (and merges `user_metadata` at the top
        level), so sending the same body twice leaves the same result.
        """
        user = await self.transport.call(
            "users.update", partial(self.sdk.users.update, user_id, **fields), retryable=True
        )
        return plain(user)

    async def send_verification_email(self, user_id: str) -> dict[str, Any]:
        """Start Auth0's verification-email job; never retried (it would send two emails)."""
        job = await self.transport.call(
            "jobs.verification_email.create",
            partial(self.sdk.jobs.verification_email.create, user_id=user_id),
        )
        return plain(job)

    async def get_user_roles(self, user_id: str) -> list[dict[str, Any]]:
        """Every tenant role assigned directly to the user, across all pages."""
        pages = partial(self.sdk.users.roles.list, user_id, per_page=PAGE_SIZE, include_totals=True)
        return await self._all_roles("users.roles.list", pages)

    async def _all_roles(self, operation: str, pages: RolePages) -> list[dict[str, Any]]:
        """Walk offset pages (each its own call, retried on its own) until `total` is reached.

        The SDK's own pager is not used: its next page would be fetched outside our policy,
        and it stops only at an empty page, one request later than `total` allows."""
        roles: list[dict[str, Any]] = []
        for number in range(MAX_PAGES):
            pager = await self.transport.call(
                operation, partial(pages, page=number), retryable=True
            )
            items, total = pager.items or [], pager.response.total
            roles += [plain(role) for role in items]
            if not items or total is None or len(roles) >= total:
                break
        return roles

    async def assign_roles(self, user_id: str, role_ids: Sequence[str]) -> None:
        """Assign roles by id; a POST, so never retried (our caller sees 503 and decides)."""
        await self.transport.call(
            "users.roles.assign",
            partial(self.sdk.users.roles.assign, user_id, roles=list(role_ids)),
        )

    async def remove_roles(self, user_id: str, role_ids: Sequence[str]) -> None:
        """Remove roles by id; retried, since removing an absent role is a no-op in Auth0."""
        await self.transport.call(
            "users.roles.delete",
            partial(self.sdk.users.roles.delete, user_id, roles=list(role_ids)),
            retryable=True,
        )

    # --- Organizations ---------------------------------------------------------------------

    async def is_org_member(self, org_id: str, user_id: str) -> bool:
        """Whether the user belongs to the organization (an unknown organization: False).

        Walks the member list by checkpoint pagination (`take`/`from`, the only paging that
        reaches past 1000 members), asking for user ids only, and stops at the first match.
        """
        members = self.sdk.organizations.members
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            list_page = partial(
                members.list,
                org_id,
                from_=cursor,
                take=PAGE_SIZE,
                fields="user_id",
                include_fields=True,
                include_totals=None,  # checkpoint paging: no totals; None leaves it unsent
            )
            try:
                pager = await self.transport.call(
                    "organizations.members.list", list_page, retryable=True
                )
            except NotFound:
                return False
            if any(member.user_id == user_id for member in pager.items or []):
                return True
            cursor = pager.response.next
            if not cursor:
                return False
            if cursor in seen:
                break
            seen.add(cursor)
        raise UpstreamError("Auth0 sent a member list that does not end")

    async def list_org_members(self, org_id: str, *, limit: int) -> list[dict[str, Any]]:
        """The organization's members (`user_id`, `name`, `email`), at most `limit`, by
        checkpoint pagination; an unknown organization: NotFound."""
        members = self.sdk.organizations.members
        cursor: str | None = None
        found: list[dict[str, Any]] = []
        for _ in range(MAX_PAGES):
            list_page = partial(
                members.list,
                org_id,
                from_=cursor,
                take=PAGE_SIZE,
                fields="user_id,name,email",
                include_fields=True,
                include_totals=None,
            )
            pager = await self.transport.call(
                "organizations.members.list", list_page, retryable=True
            )
            for member in pager.items or []:
                found.append(
                    {
                        "user_id": member.user_id,
                        "name": getattr(member, "name", None),
                        "email": getattr(member, "email", None),
                    }
                )
            cursor = pager.response.next
            if not cursor or len(found) >= limit:
                return found[:limit]
        raise UpstreamError("Auth0 sent a member list that does not end")

    async def get_member_roles(self, org_id: str, user_id: str) -> list[dict[str, Any]]:
        """The roles the user holds in the organization only, across all pages."""
        pages = partial(
            self.sdk.organizations.members.roles.list,
            org_id,
            user_id,
            per_page=PAGE_SIZE,
            include_totals=True,
        )
        return await self._all_roles("organizations.members.roles.list", pages)

    async def assign_member_roles(self, org_id: str, user_id: str, role_ids: Sequence[str]) -> None:
        """Assign roles to the user within the organization; a POST, never retried."""
        await self.transport.call(
            "organizations.members.roles.assign",
            partial(
                self.sdk.organizations.members.roles.assign, org_id, user_id, roles=list(role_ids)
            ),
        )

    async def remove_member_roles(self, org_id: str, user_id: str, role_ids: Sequence[str]) -> None:
        """Remove roles from the user within the organization; retried (absent: a no-op)."""
        await self.transport.call(
            "organizations.members.roles.delete",
            partial(
                self.sdk.organizations.members.roles.delete, org_id, user_id, roles=list(role_ids)
            ),
            retryable=True,
        )

    # --- Authentication API --------------------------------------------------------------

    async def request_password_reset(self, email: str) -> None:
        """Ask Auth0 to email a password-reset link; a POST that sends mail, never retried.

        An Authentication API call on AUTH0_DOMAIN, the domain users see, in the name of the
        M2M application: that application needs AUTH0_DB_CONNECTION enabled.
        """
        body = {
            "client_id": self.settings.auth0.client_id,
            "email": email,
            "connection": self.settings.auth0.db_connection,
        }
        await self.transport.request(
            "dbconnections.change_password",
            "POST",
            f"{self.settings.auth0.tenant_url}/dbconnections/change_password",
            json=body,
            m2m=False,
        )


def auth0_of(conn: HasState) -> Auth0Client:
    """The process's Management API client (built by the lifespan)."""
    return part_of(conn, "auth0", Auth0Client)
