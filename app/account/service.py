"""The account flows of seed 000 as operations: sign-up (diagram 1), sign-in (2), update
profile (3), and profile with patients (5). Each takes the verified caller and its audit
actor, talks to Auth0 and the database in the diagram's order, and records its event; the
handlers in app/account/endpoints/flows.py only parse and reply."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from databases import Database

from app.account.cached_profiles import CachedProfiles
from app.account.profiles import (
    COUNT_PATIENTS,
    SELECT_REGISTRATION,
    Me,
    Profile,
    ProfileUpdate,
    note_sign_in,
    register,
    safe_profile,
)
from app.audit.batcher import AuditWriter
from app.audit.events import Actor, Event, scope_of
from app.audit.record import record_event, record_independently
from app.auth.tokens import Principal
from app.auth0.management import Auth0Client
from app.core.db import connection, transaction
from app.core.errors import AppError, ValidationFailed
from app.patients.search import Page, read_page, show_page_audited

logger = logging.getLogger(__name__)

PROFILE_PAGE_SIZE = 20


async def sign_up(database: Database, actor: Actor, caller: Principal) -> tuple[datetime, bool]:
    """Register the caller (idempotent): when it was registered, and whether just now."""
    email = caller.claims.get("email")
    async with transaction(database) as conn:
        registered_at, created = await register(
            conn, caller.sub, email if isinstance(email, str) else None
        )
        if created:
            event = Event("user.registered", "C", entity_type="user", entity_id=caller.sub)
            await record_event(conn, actor, event)
    return registered_at, created


async def sign_in(database: Database, actor: Actor, caller: Principal) -> Me:
    """The caller's stored data; the first request of a session records `user.signed_in`."""
    async with transaction(database) as conn:
        if await note_sign_in(conn, caller) is not None:
            event = Event(
                "user.signed_in",
                "E",
                entity_type="user",
                entity_id=caller.sub,
                detail={"amr": list(caller.amr)},
            )
            await record_event(conn, actor, event)
        row = await conn.fetchrow(SELECT_REGISTRATION, caller.sub)
        count = await conn.fetchval(COUNT_PATIENTS, scope_of(caller))
    return Me(
        user_id=caller.sub,
        registered=row is not None,
        registered_at=row["registered_at"] if row else None,
        last_seen_at=row["last_seen_at"] if row else None,
        patient_count=count,
        permissions=sorted(caller.permissions),
        org_id=caller.org_id,
    )


async def update_profile(
    database: Database,
    auth0: Auth0Client,
    profiles: CachedProfiles | None,
    actor: Actor,
    caller: Principal,
    update: ProfileUpdate,
) -> Profile:
    """Change the caller's Auth0 profile, then record it; the profile as Auth0 now has it,
    which the profile page serves from then on (every copy reads the same cache).

    A refusal or an outage at Auth0 is recorded as failed and re-raised. Once Auth0 has the
    change the answer is a success even if its record cannot be written: that is logged as
    critical with all a reconciler needs.
    """
    fields = update.changed_fields()
    if not fields:
        raise ValidationFailed(
            "send at least one field to change",
            errors=[{"field": "body", "message": "no fields to update"}],
        )
    event = Event(
        "profile.updated", "U", entity_type="user", entity_id=caller.sub, detail={"fields": fields}
    )
    try:
        user = await auth0.update_user(caller.sub, update.to_auth0())
    except AppError as error:
        failed = Event(
            "profile.updated",
            "U",
            outcome="failed",
            reason=f"auth0: {error.status}",
            entity_type="user",
            entity_id=caller.sub,
            detail={"fields": fields},
        )
        await record_independently(database, actor, failed)
        raise
    if profiles is not None:
        await _keep_profile(profiles, user)
    try:
        async with transaction(database) as conn:
            await record_event(conn, actor, event)
    except Exception:
        logger.critical(
            "profile updated in Auth0 but its audit event could not be written",
            extra={
                "request_id": actor.request_id,
                "user_id": caller.sub,
                "fields": fields,
                "action": "profile.updated",
            },
            exc_info=True,
        )
    return safe_profile(user)


async def _keep_profile(profiles: CachedProfiles, user: dict[str, Any]) -> None:
    """The updated record as the cached profile; when that fails the old copy stays until it
    goes stale, which is logged."""
    try:
        await profiles.store(user)
    except Exception:
        logger.warning("the updated profile could not be cached", exc_info=True)


async def profile_and_patients(
    database: Database,
    audit: AuditWriter,
    profiles: CachedProfiles,
    actor: Actor,
    caller: Principal,
    *,
    cursor_key: bytes,
) -> tuple[dict[str, Any], int]:
    """The caller's profile (from the shared cache) and first page of patients (the page
    recorded first), and the profile's age in whole seconds."""
    scope = scope_of(caller)
    # Usually the stored profile can be served: it and the page are read on one connection.
    # Otherwise the profile is fetched from Auth0 first, with no connection held meanwhile.
    page: Page | None = None
    async with connection(database) as conn:
        profile = await profiles.stored(conn, caller.sub)
        if profile is not None:
            page = await read_page(conn, scope, cursor_key=cursor_key, limit=PROFILE_PAGE_SIZE)
    if profile is None or page is None:
        profile = await profiles.fetched(caller.sub)
        async with connection(database) as conn:
            page = await read_page(conn, scope, cursor_key=cursor_key, limit=PROFILE_PAGE_SIZE)
    shown = await show_page_audited(audit, actor, scope, page, cursor_key=cursor_key)
    age = int(profile.age_seconds)
    body = {"profile": profile.fragment, "patients": shown, "meta": {"profile_age_seconds": age}}
    return body, age
