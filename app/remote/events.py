"""The audit event of a forwarded call: which route, method, what the upstream answered,
how many bytes went each way, the token rule used and the token's audience. Never a
header's value, a token, a path below the route (it may name a patient) or a body."""

from __future__ import annotations

from app.audit.events import CRUD_OF_METHOD, Event, Outcome

# What was attached: the user's token, the service's client token, or none.
Attached = str


def forwarded_event(
    *,
    route: str,
    method: str,
    status: int,
    upstream_status: int | None,
    sent_bytes: int,
    received_bytes: int,
    rule: str,
    attached: Attached,
    audience: str | None,
    reason: str | None = None,
) -> Event:
    outcome: Outcome = "success" if upstream_status is not None and status < 500 else "failed"
    if upstream_status is None and status in (401, 403):
        outcome = "denied"  # the route's token rule refused this caller; nothing was sent
    return Event(
        action="remote.forwarded",
        crud=CRUD_OF_METHOD.get(method, "E"),
        outcome=outcome,
        reason=reason,
        entity_type="remote_api",
        entity_id=route,
        detail={
            "method": method,
            "status": status,
            "upstream_status": upstream_status,
            "request_bytes": sent_bytes,
            "response_bytes": received_bytes,
            "token_rule": rule,
            "token": attached,
            "audience": audience,
        },
    )
