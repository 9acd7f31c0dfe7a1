"""`parse_search`: FHIR date prefixes and precisions as windows, and strict parameters."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from app.core.errors import BadRequest
from app.fhir.search import parse_search

SCOPE = "org:acme"


def _window(*dates: str) -> tuple[datetime, datetime]:
    filters = parse_search([("date", value) for value in dates], SCOPE).filters
    return filters.since, filters.until


@pytest.mark.parametrize(
    ("dates", "since", "until"),
    [
        (("2026-03-01",), datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)),
        (("eq2026-02",), datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)),
        (("2026-12",), datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
        (
            ("ge2026-03-01", "le2026-03"),
            datetime(2026, 3, 1, tzinfo=UTC),
            datetime(2026, 4, 1, tzinfo=UTC),
        ),
        (
            ("gt2026-03-01T10:00Z", "lt2026-03-01T12:00:00Z"),
            datetime(2026, 3, 1, 10, 1, tzinfo=UTC),
            datetime(2026, 3, 1, 12, tzinfo=UTC),
        ),
        (
            ("ge2026-03-01T10:00:00.5+01:00", "le2026-03-01T10:00:01-02:30"),
            datetime(2026, 3, 1, 9, 0, 0, 500_000, tzinfo=UTC),
            datetime(2026, 3, 1, 12, 30, 2, tzinfo=UTC),
        ),
        (
            ("gt2026-03-01T10:00:00.25Z", "lt2026-03-02"),
            datetime(2026, 3, 1, 10, 0, 0, 260_000, tzinfo=UTC),
            datetime(2026, 3, 2, tzinfo=UTC),
        ),
    ],
)
def test_a_value_covers_its_precision(
    dates: tuple[str, ...], since: datetime, until: datetime
) -> None:
    assert _window(*dates) == (since, until)


def test_the_other_parameters() -> None:
    patient = uuid.uuid4()
    pairs = [
        ("date", "2026-03-01"),
        ("patient", f"Patient/{str(patient).upper()}"),
        ("agent", "auth0|alice"),
        ("action", "E"),
        ("outcome", "4"),
        ("_count", "200"),
    ]
    search = parse_search(pairs, SCOPE)
    filters = search.filters
    assert (filters.scope, filters.patient_id, filters.actor) == (SCOPE, patient, "auth0|alice")
    assert (filters.crud, filters.outcome, search.count) == ("E", "denied", 200)
    assert search.params == tuple(pairs)
    assert not search.matches_nothing
    assert parse_search([("date", "2026-03-01"), ("outcome", "12")], SCOPE).matches_nothing


def test_every_offending_parameter_is_named_once() -> None:
    pairs = [("date", "ge2026-03-01"), ("_sort", "date"), ("_count", "0"), ("_count", "9")]
    with pytest.raises(BadRequest) as refused:
        parse_search(pairs, SCOPE)
    errors = refused.value.errors or []
    assert [e["field"] for e in errors] == ["_sort", "_count", "date"]
    assert errors[0]["code"] == "not-supported"
