"""The patient endpoint tests' fixture (the callers' tokens), and their support module's asserts
rewritten by pytest like a test module's (registered before any test module imports it)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.helpers import bearer

pytest.register_assert_rewrite("tests.patients.support")

from tests.patients.support import ALICE, BOB, CAROL, DAVE, ERIN, ORG_A, ORG_B, Tokens  # noqa: E402


@pytest.fixture
def who(mint: Callable[..., str]) -> Tokens:
    """Callers: alice and bob share org A, carol is in org B, dave and erin have no org."""
    return {
        "alice": bearer(mint(ALICE, org_id=ORG_A, email_verified=True)),
        "bob": bearer(mint(BOB, org_id=ORG_A, email_verified=True)),
        "carol": bearer(mint(CAROL, org_id=ORG_B, email_verified=True)),
        "dave": bearer(mint(DAVE, email_verified=True)),
        "erin": bearer(mint(ERIN, email_verified=True)),
    }
