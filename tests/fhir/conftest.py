"""The FHIR tests' fixtures: the callers' tokens, and their support module's asserts
rewritten by pytest like a test module's (registered before any test module imports it)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.helpers import bearer

pytest.register_assert_rewrite("tests.fhir.support")

from tests.fhir.support import (  # noqa: E402
    AUDITOR,
    CLERK,
    CLERK_PERMISSIONS,
    ORG,
    OTHER_ORG,
    OUTSIDER,
    Callers,
)


@pytest.fixture
def who(mint: Callable[..., str]) -> Callers:
    """The auditor reads the log and patients of org acme; the clerk only its patients; the
    outsider is an auditor of another org; `none` has no permission at all; `admin` deletes."""
    audit_and_patients = ["read:audit_events", *CLERK_PERMISSIONS]
    return {
        "auditor": bearer(mint(AUDITOR, audit_and_patients, org_id=ORG, email_verified=True)),
        "clerk": bearer(mint(CLERK, CLERK_PERMISSIONS, org_id=ORG, email_verified=True)),
        "outsider": bearer(mint(OUTSIDER, audit_and_patients, org_id=OTHER_ORG)),
        "none": bearer(mint("auth0|nobody", [], org_id=ORG)),
        "admin": bearer(mint("auth0|admin", ["delete:patients"], org_id=ORG, email_verified=True)),
    }
