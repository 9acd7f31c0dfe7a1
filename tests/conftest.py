"""Test harness: a real Postgres, a fresh migrated database per test, Auth0 stubbed by respx.

The fixtures live in `tests/fixtures/`, one module per concern (below, each after the ones it
imports); what tests call to check a response or a row is in `tests/helpers.py`.
"""

import pytest

# Plugins get pytest's assertion messages by themselves; the helpers module is asked for.
pytest.register_assert_rewrite(
    "tests.helpers",
    # Support modules that a test of another folder may import before that folder's conftest.
    "tests.account.support",
    "tests.audit.support",
    "tests.auth.dpop_support",
    "tests.auth.tokens_support",
    "tests.auth0.support",
    "tests.dev.tenant_login",
    "tests.patients.support",
    "tests.session.support",
)

pytest_plugins = [
    "tests.fixtures.tenant",  # the stubbed Auth0 tenant, its signing key and tokens
    "tests.fixtures.standin",  # the whole stand-in tenant app at the tenant URL (not with `tenant`)
    "tests.fixtures.leaks",  # no token, secret or patient value in any log line of the run
    "tests.fixtures.database",  # the Postgres server, a migrated database per test
    "tests.fixtures.settings",  # settings built for the test's database and tenant
    "tests.fixtures.app",  # the app with its lifespan behind an in-process client
    "tests.fixtures.interactions",  # the ordered Auth0 and SQL calls, for the diagram tests
    "tests.fixtures.redis",  # a Redis that answers, or a skip (a failure in CI)
]
