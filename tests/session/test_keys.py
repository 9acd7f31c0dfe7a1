"""SESSION_ENCRYPTION_KEY rotation: a new key first keeps every session readable, refreshes
re-encrypt under it, and a session no configured key opens is refused."""

from __future__ import annotations

import asyncpg
import pytest
from cryptography.fernet import Fernet

from app.session.crypto import TokenBox, Undecryptable, cookie_hash, new_secret
from devkit.db import ProvisionedDatabase
from tests.fixtures.app import running_app
from tests.fixtures.standin import StandIn
from tests.helpers import assert_problem
from tests.session.support import (
    ENCRYPTION_KEY,
    cleared,
    login,
    make_due,
    session_rows,
    session_settings,
    with_cookie,
)

NEW_KEY = Fernet.generate_key().decode()


def test_the_first_key_encrypts_and_every_key_decrypts() -> None:
    old = TokenBox(ENCRYPTION_KEY).seal("a token")
    both = TokenBox(f"{NEW_KEY},{ENCRYPTION_KEY}")
    assert both.open(old) == "a token"
    assert TokenBox(NEW_KEY).open(both.seal("another")) == "another"
    with pytest.raises(Undecryptable):
        TokenBox(NEW_KEY).open(old)


def test_cookie_values_are_random_and_hashed() -> None:
    first, second = new_secret(), new_secret()
    assert first != second and len(first) == 43
    assert cookie_hash(first) is not None and len(cookie_hash(first) or b"") == 32
    assert cookie_hash("not a cookie") is None


async def test_rotation_keeps_sessions_and_re_encrypts_at_refresh(
    database: ProvisionedDatabase, owner: asyncpg.Connection, standin: StandIn
) -> None:
    async with running_app(session_settings(database)) as before:
        cookie = await login(before)
    rotated = session_settings(database, session_encryption_key=f"{NEW_KEY},{ENCRYPTION_KEY}")
    await make_due(owner, 10)
    async with running_app(rotated) as after:
        # Read with the old key, refreshed, and stored under the new one.
        assert (await after.get("/api/patients", headers=with_cookie(cookie))).status_code == 200
    assert standin.state.counts["refresh_grant"] == 1
    [row] = await session_rows(owner)
    new_only = TokenBox(NEW_KEY)
    for column in ("access_token", "refresh_token", "id_token"):
        new_only.open(row[column])  # readable without the old key now


async def test_a_session_no_key_opens_is_401(
    database: ProvisionedDatabase, standin: StandIn
) -> None:
    async with running_app(session_settings(database)) as before:
        cookie = await login(before)
    async with running_app(session_settings(database, session_encryption_key=NEW_KEY)) as after:
        response = await after.get("/api/patients", headers=with_cookie(cookie))
    assert_problem(response, 401, detail="the session cannot be read")
    assert cleared(response)
