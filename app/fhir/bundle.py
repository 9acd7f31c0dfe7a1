"""Search results as a FHIR `Bundle` (searchset), paged by resources over a keyset of events.

An event can become many resources (one per patient it named), so a page may end inside an
event. A position is therefore the event's key (recorded_at, seq) and how many of its
resources earlier pages showed; the next page starts at that event again and skips those.
Events are read newest first; a page of `count` resources needs at most `count + 1` events
to know where the next one starts (every event read from a position on gives at least one
resource), so nothing is skipped or shown twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import asyncpg

from app.fhir.mapping import AuditEventMapper

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a page starts: the event (recorded_at, seq), after `skip` of its resources."""

    recorded_at: datetime
    seq: int
    skip: int

    def after_key(self) -> tuple[datetime, int]:
        """The exclusive keyset bound whose next event is this one (seq is unique)."""
        return self.recorded_at, self.seq + 1

    def payload(self) -> dict[str, int]:
        return {"t": (self.recorded_at - _EPOCH) // _MICRO, "q": self.seq, "i": self.skip}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Position | None:
        t, q, i = payload.get("t"), payload.get("q"), payload.get("i")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (t, q, i)):
            return None
        assert isinstance(t, int) and isinstance(q, int) and isinstance(i, int)
        if q < 1 or i < 0:
            return None
        return cls(_EPOCH + t * _MICRO, q, i)


def page_of(
    rows: Sequence[asyncpg.Record],
    mapper: AuditEventMapper,
    *,
    count: int,
    start: Position | None,
    only_patient: uuid.UUID | None,
    more: bool,
) -> tuple[list[dict[str, Any]], Position | None]:
    """The page's resources from `rows` (read from `start` on, newest first), and where the
    next page starts: None when these rows end the results and `more` says none follow."""
    resources: list[dict[str, Any]] = []
    shown = 0  # resources of the current row, skipped or taken
    for index, row in enumerate(rows):
        skip = start.skip if index == 0 and start and row["seq"] == start.seq else 0
        shown = 0
        for resource in mapper.resources(row, only_patient):
            shown += 1
            if shown <= skip:
                continue
            if len(resources) == count:
                return resources, Position(row["recorded_at"], row["seq"], shown - 1)
            resources.append(resource)
    if more and rows:  # not reached with count + 1 rows read; kept so no event is ever lost
        return resources, Position(rows[-1]["recorded_at"], rows[-1]["seq"], shown)
    return resources, None


def searchset(
    base: str,
    resources: Sequence[dict[str, Any]],
    params: Sequence[tuple[str, str]],
    *,
    cursor: str | None,
    next_cursor: str | None,
) -> dict[str, Any]:
    """The Bundle: `self` repeats the search as given, `next` adds the next page's cursor."""
    search = f"{base}/AuditEvent"
    links = [{"relation": "self", "url": _url(search, params, cursor)}]
    if next_cursor is not None:
        links.append({"relation": "next", "url": _url(search, params, next_cursor)})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [
            {"fullUrl": f"{search}/{r['id']}", "resource": r, "search": {"mode": "match"}}
            for r in resources
        ],
    }


def _url(search: str, params: Sequence[tuple[str, str]], cursor: str | None) -> str:
    pairs = [*params, ("_cursor", cursor)] if cursor is not None else list(params)
    return f"{search}?{urlencode(pairs)}" if pairs else search
