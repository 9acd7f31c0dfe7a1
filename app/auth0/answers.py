"""What an answer from Auth0 means: auth0-python's errors and httpx responses read as one
`Answered`, its rate-limit headers read as a wait, and its status as one of our errors.

Status mapping (for calls about a user): 400 -> `ValidationFailed` (422: Auth0 refused values
we passed on), 404 -> `NotFound`, 409 -> `Conflict`, any other 4xx or an unreadable answer ->
`UpstreamError` (502). 429 and 5xx are the transport's to retry or to end in
`UpstreamUnavailable` (503). Details never carry a token, a secret or Auth0's body.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson
from auth0.management.core.api_error import ApiError
from auth0.management.core.parse_error import ParsingError

from app.core.errors import AppError, Conflict, NotFound, UpstreamError, ValidationFailed


class Answered(Exception):
    """Auth0 answered with a status other than 2xx, or with a 2xx we cannot read."""

    def __init__(
        self, status: int, headers: Mapping[str, str] | None, *, readable: bool = True
    ) -> None:
        super().__init__(status)
        self.status = status
        self.headers = httpx.Headers(dict(headers or {}))
        self.readable = readable


def from_sdk(error: ApiError | ParsingError) -> Answered:
    """The SDK's error as an `Answered`: `ApiError` (and its `NotFoundError`,
    `TooManyRequestsError`, ... subclasses) carries the status and Auth0's headers; a 2xx
    only becomes one when its body was not JSON. `ParsingError` is JSON of the wrong shape."""
    status = error.status_code or 0
    readable = isinstance(error, ApiError) and not 200 <= status < 300
    return Answered(status, error.headers, readable=readable)


def rate_limit_wait(answer: Answered, now: float) -> float | None:
    """Seconds Auth0 asks us to wait: `Retry-After` (seconds or a date), else
    `x-ratelimit-reset` (unix epoch seconds, against the wall clock `now`); None when it
    says neither in a form we can read."""
    retry_after = answer.headers.get("retry-after", "").strip()
    reset = answer.headers.get("x-ratelimit-reset", "").strip()
    try:
        if retry_after.isdigit():
            return float(retry_after)
        if retry_after:
            return max(0.0, parsedate_to_datetime(retry_after).timestamp() - now)
        if reset:
            return max(0.0, float(reset) - now)
    except (ValueError, TypeError, OverflowError):
        pass
    return None


def client_error(status: int, our_input: bool) -> AppError:
    """Our error for a 4xx other than 401 and 429. `our_input` False: the request was ours
    alone (a token grant), so a refusal is our misconfiguration (502), not the caller's."""
    errors: dict[int, Callable[[], AppError]] = {
        400: lambda: ValidationFailed("Auth0 refused the submitted values"),
        404: lambda: NotFound("not found in Auth0"),
        409: lambda: Conflict("Auth0 reports a conflicting change"),
    }
    if our_input and status in errors:
        return errors[status]()
    return UpstreamError(f"Auth0 answered with an unexpected status {status}")


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The body as a JSON object; `UpstreamError` (502) when it is not one."""
    try:
        value = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise UpstreamError("Auth0 sent an answer that is not JSON") from None
    if not isinstance(value, dict):
        raise UpstreamError("Auth0 sent an answer of an unexpected shape")
    return value
