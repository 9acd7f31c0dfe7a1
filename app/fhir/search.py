"""The search parameters of `GET /fhir/AuditEvent`, parsed strictly into audit filters.

FHIR lets a server ignore what it does not understand; we refuse it instead (an unknown
parameter, a modifier, a repeated one, a bad value), with every offending parameter named,
so a client never reads a wider result than it asked for. `date` takes the prefixes `eq`
(the default), `ge`, `gt`, `le` and `lt`, and together its values must bound a window of at
most 31 days, as `GET /api/audit-events` requires. A value's precision sets its range (FHIR
search, "date"): `2026-03` is the whole month, so `le2026-03` ends with it. A value with a
time needs its time zone; a bare date is a UTC day.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Literal

from app.audit.events import Crud
from app.audit.query import MAX_WINDOW, AuditFilters
from app.core.errors import BadRequest
from app.core.text import control_problem

DEFAULT_COUNT = 50
MAX_COUNT = 200
CURSOR = "_cursor"
PARAMETERS = ("date", "patient", "agent", "action", "outcome", "_count", CURSOR)

OUTCOMES: dict[str, Literal["success", "denied", "failed"] | None] = {
    "0": "success",
    "4": "denied",
    "8": "failed",
    "12": None,  # a major failure: the service records none
}
ACTIONS: dict[str, Crud] = {"C": "C", "R": "R", "U": "U", "D": "D", "E": "E"}

# ASCII digits only: `\d` would also take other scripts' digits, which int() reads.
_DATE = re.compile(
    r"(?P<prefix>eq|ne|gt|lt|ge|le|sa|eb|ap)?"
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d{1,6}))?)?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2}))?)?)?",
    re.ASCII,
)
_COUNT = re.compile(r"[0-9]{1,5}")
_PATIENT = re.compile(r"(?:Patient/)?([0-9A-Fa-f-]{32,36})")


@dataclass(frozen=True, slots=True)
class AuditEventSearch:
    """A checked search: its filters, page size and cursor, and its parameters as given
    (without the cursor), from which the `self` and `next` links are written."""

    filters: AuditFilters
    count: int
    cursor: str | None
    params: tuple[tuple[str, str], ...]
    # `outcome=12`: a valid code that no event of this service carries.
    matches_nothing: bool = False


class _Errors:
    """Every offending parameter, each named once; raised together as one 400."""

    def __init__(self) -> None:
        self.found: list[dict[str, str]] = []

    def add(self, name: str, message: str, code: str = "invalid") -> None:
        if all(error["field"] != name for error in self.found):
            self.found.append({"field": name, "message": message, "code": code})

    def raise_any(self) -> None:
        if self.found:
            raise BadRequest("the search parameters are invalid", errors=self.found)


def _range(match: re.Match[str]) -> tuple[datetime, datetime]:
    """The instants [start, end) a date value covers at its precision; ValueError if none."""
    g = match.groupdict()
    year = int(g["year"])
    if g["month"] is None:
        return datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC)
    month = int(g["month"])
    if g["day"] is None:
        start = datetime(year, month, 1, tzinfo=UTC)
        return start, datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    if g["hour"] is None:
        start = datetime(year, month, int(g["day"]), tzinfo=UTC)
        return start, start + timedelta(days=1)
    zone = UTC if g["zone"] == "Z" else _zone(g["zone"])
    fraction = g["fraction"] or ""
    start = datetime(
        year,
        month,
        int(g["day"]),
        int(g["hour"]),
        int(g["minute"]),
        int(g["second"] or 0),
        int(fraction.ljust(6, "0")) if fraction else 0,
        tzinfo=zone,
    ).astimezone(UTC)
    if g["second"] is None:
        step = timedelta(minutes=1)
    else:
        step = timedelta(microseconds=10 ** (6 - len(fraction)))
    return start, start + step


def _zone(text: str) -> timezone:
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 14 or minutes > 59:
        raise ValueError("time zone out of range")
    offset = timedelta(hours=hours, minutes=minutes)
    return timezone(-offset if text[0] == "-" else offset)


def _window(values: Sequence[str], errors: _Errors) -> tuple[datetime, datetime] | None:
    """The [since, until) window the `date` values bound, or None (an error is noted)."""
    since: datetime | None = None
    until: datetime | None = None
    for value in values:
        match = _DATE.fullmatch(value)
        if match is None:
            errors.add("date", "expected [prefix]YYYY[-MM[-DD[Thh:mm[:ss[.f]]zone]]]")
            return None
        prefix = match["prefix"] or "eq"
        if prefix not in {"eq", "ge", "gt", "le", "lt"}:
            errors.add("date", f"the prefix {prefix} is not supported (eq, ge, gt, le, lt)")
            return None
        try:
            start, end = _range(match)
        except (ValueError, OverflowError):  # no such day, or past year 1 or 9999 in UTC
            errors.add("date", "not a valid date or time")
            return None
        lower = {"eq": start, "ge": start, "gt": end}.get(prefix)
        upper = {"eq": end, "le": end, "lt": start}.get(prefix)
        if (lower and since) or (upper and until):
            errors.add("date", "give one lower bound (ge, gt) and one upper bound (le, lt)")
            return None
        since, until = lower or since, upper or until
    if since is None or until is None:
        errors.add("date", "required: a window with a lower (ge, gt) and an upper (le, lt) bound")
        return None
    if until <= since:
        errors.add("date", "the window is empty")
        return None
    if until - since > MAX_WINDOW:
        errors.add("date", "the window may be at most 31 days")
        return None
    return since, until


def parse_search(pairs: Sequence[tuple[str, str]], scope: str) -> AuditEventSearch:
    """The search that `pairs` (the query string, in order) asks for within `scope`;
    `BadRequest` naming every offending parameter."""
    errors = _Errors()
    given: dict[str, list[str]] = {}
    for name, value in pairs:
        if name not in PARAMETERS:
            errors.add(name, "unknown parameter", "not-supported")
        elif not value:
            errors.add(name, "empty value")
        elif (problem := control_problem(value)) is not None:
            errors.add(name, problem)
        else:
            given.setdefault(name, []).append(value)
    for name, values in given.items():
        if len(values) > 1 and name != "date":
            errors.add(name, "given more than once")
    if len(given.get("date", ())) > 2:
        errors.add("date", "at most two values: a lower and an upper bound")
    window = _window(given.get("date", ()), errors)

    def one(name: str) -> str | None:
        values = given.get(name)
        return values[0] if values else None

    patient_id: uuid.UUID | None = None
    if (patient := one("patient")) is not None:
        match = _PATIENT.fullmatch(patient)
        try:
            patient_id = uuid.UUID(match[1]) if match else None
        except ValueError:
            patient_id = None
        if patient_id is None:
            errors.add("patient", "expected Patient/{id} or the id")
    agent = one("agent")
    if agent is not None and len(agent) > 255:
        errors.add("agent", "at most 255 characters")
    action = one("action")
    if action is not None and action not in ACTIONS:
        errors.add("action", "one of C, R, U, D, E")
    outcome = one("outcome")
    if outcome is not None and outcome not in OUTCOMES:
        errors.add("outcome", "one of 0, 4, 8, 12")
    count = DEFAULT_COUNT
    if (text := one("_count")) is not None:
        count = int(text) if _COUNT.fullmatch(text) else 0
        if not 1 <= count <= MAX_COUNT:
            errors.add("_count", f"an integer from 1 to {MAX_COUNT}")
    cursor = one(CURSOR)
    if cursor is not None and len(cursor) > 1024:
        errors.add(CURSOR, "not a cursor from this server")
    errors.raise_any()
    assert window is not None
    filters = AuditFilters(
        scope,
        *window,
        actor=agent,
        patient_id=patient_id,
        outcome=OUTCOMES[outcome] if outcome is not None else None,
        crud=ACTIONS[action] if action is not None else None,
    )
    return AuditEventSearch(
        filters,
        count,
        cursor,
        tuple((name, value) for name, value in pairs if name != CURSOR),
        matches_nothing=outcome == "12",
    )
