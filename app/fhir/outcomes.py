"""FHIR on the wire: its media type, and every `/fhir` error as an `OperationOutcome`.

The service has one error family, rendered as problem+json wherever it is raised: by a
handler, by `requires`, by the router (404, 405), or by the request envelope and the rate
limit (413, 429, 500). `OperationOutcomes` sits outside all of them and rewrites each such
response under `/fhir` into an `OperationOutcome` with the same status and headers, so no
error path can answer a FHIR client in another format. Each issue names its parameter in
`expression` and says what is wrong in `diagnostics`; nothing else of the problem is kept.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

FHIR_JSON = "application/fhir+json"
PREFIX = "/fhir"
_PROBLEM = b"application/problem+json"

# FHIR's IssueType for each status the service answers with.
_ISSUE_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    410: "deleted",
    413: "too-long",
    415: "not-supported",
    422: "invalid",
    429: "throttled",
    500: "exception",
    502: "transient",
    503: "transient",
}


class FhirResponse(Response):
    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def operation_outcome(problem: dict[str, Any]) -> dict[str, Any]:
    """The `OperationOutcome` of a problem body: one issue per offending field, or one for
    the problem itself."""
    status = problem.get("status")
    default = _ISSUE_CODES.get(status, "processing") if isinstance(status, int) else "processing"
    errors = problem.get("errors")
    issues: list[dict[str, Any]] = []
    if isinstance(errors, list) and errors:
        for error in errors:
            field, message = str(error.get("field", "")), str(error.get("message", ""))
            issue: dict[str, Any] = {
                "severity": "error",
                "code": str(error.get("code") or default),
                "diagnostics": f"{field}: {message}" if field else message,
            }
            if field:
                issue["expression"] = [field]
            issues.append(issue)
    else:
        detail = problem.get("detail") or problem.get("title") or "error"
        issues.append({"severity": "error", "code": default, "diagnostics": str(detail)})
    return {"resourceType": "OperationOutcome", "issue": issues}


class OperationOutcomes:
    """Pure ASGI: under `/fhir`, a problem+json response becomes an `OperationOutcome`.
    Put it outermost, so it sees the errors of every middleware too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        body: list[bytes] = []

        async def rewrite(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                if _is_problem(message):
                    start = message
                    return
            elif message["type"] == "http.response.body" and start is not None:
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await _send_outcome(send, start, b"".join(body))
                return
            await send(message)

        await self.app(scope, receive, rewrite)


def _is_problem(start: Message) -> bool:
    for name, value in start.get("headers", ()):
        if name.lower() == b"content-type":
            return bool(value.split(b";")[0].strip().lower() == _PROBLEM)
    return False


async def _send_outcome(send: Send, start: Message, problem: bytes) -> None:
    try:
        parsed = orjson.loads(problem)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        body = orjson.dumps(operation_outcome(parsed))
        kept = [
            (name, value)
            for name, value in start.get("headers", ())
            if name.lower() not in (b"content-type", b"content-length")
        ]
        headers = [
            *kept,
            (b"content-type", FHIR_JSON.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        start = {**start, "headers": headers}
    else:  # not a body we wrote (a HEAD request has none): leave it as it was
        body = problem
    await send(start)
    await send({"type": "http.response.body", "body": body})
