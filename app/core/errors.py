"""One error family, rendered as RFC 9457 `application/problem+json`.

Handlers raise an `AppError` subclass; `problem_response` renders it. Nothing here ever
puts a token, a secret or a patient value into a body: details are written by our code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
from pydantic import ValidationError

PROBLEM_BASE = "https://errors.auth0-bff.dev/"
PROBLEM_CONTENT_TYPE = "application/problem+json"


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


class AppError(Exception):
    status: int = 500
    title: str = "Internal Server Error"
    type_name: str = "internal"

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        errors: Sequence[Mapping[str, str]] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = dict(headers or {})
        self.errors = [dict(e) for e in errors] if errors else None
        self.extra = dict(extra or {})

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.type_name


class BadRequest(AppError):
    status, title, type_name = 400, "Bad Request", "bad-request"


class Unauthorized(AppError):
    """401 with an RFC 6750 challenge; `error=None` means no token was sent."""

    status, title, type_name = 401, "Unauthorized", "unauthorized"

    def __init__(
        self,
        detail: str = "a valid access token is required",
        *,
        error: str | None = "invalid_token",
        realm: str = "api",
    ) -> None:
        challenge = f'Bearer realm="{realm}"'
        if error:
            challenge += f', error="{error}", error_description="{_quote(detail)}"'
        super().__init__(detail, headers={"WWW-Authenticate": challenge})
        self.error = error


class Forbidden(AppError):
    status, title, type_name = 403, "Forbidden", "forbidden"


class InsufficientScope(Forbidden):
    type_name = "insufficient-scope"

    def __init__(self, scope: str, *, realm: str = "api") -> None:
        detail = f"this request needs the permission {scope}"
        super().__init__(
            detail,
            headers={
                "WWW-Authenticate": f'Bearer realm="{realm}", error="insufficient_scope", '
                f'scope="{_quote(scope)}", error_description="{_quote(detail)}"'
            },
        )


class StepUpRequired(Forbidden):
    """RFC 9470: the token is valid but the user must authenticate more strongly."""

    type_name = "insufficient-user-authentication"

    def __init__(
        self,
        detail: str = "multi-factor authentication is required",
        *,
        acr_values: str | None = None,
        realm: str = "api",
    ) -> None:
        challenge = (
            f'Bearer realm="{realm}", error="insufficient_user_authentication", '
            f'error_description="{_quote(detail)}"'
        )
        if acr_values:
            challenge += f', acr_values="{_quote(acr_values)}"'
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class EmailNotVerified(Forbidden):
    type_name = "email-not-verified"

    def __init__(self, detail: str = "verify your email address to use this feature") -> None:
        super().__init__(detail)


class NotFound(AppError):
    status, title, type_name = 404, "Not Found", "not-found"


class MethodNotAllowed(AppError):
    status, title, type_name = 405, "Method Not Allowed", "method-not-allowed"


class Conflict(AppError):
    status, title, type_name = 409, "Conflict", "conflict"


class Gone(AppError):
    status, title, type_name = 410, "Gone", "gone"


class PreconditionFailed(AppError):
    status, title, type_name = 412, "Precondition Failed", "precondition-failed"


class PayloadTooLarge(AppError):
    status, title, type_name = 413, "Content Too Large", "payload-too-large"


class UnsupportedMediaType(AppError):
    status, title, type_name = 415, "Unsupported Media Type", "unsupported-media-type"


class ValidationFailed(AppError):
    status, title, type_name = 422, "Unprocessable Content", "validation"


class PreconditionRequired(AppError):
    status, title, type_name = 428, "Precondition Required", "precondition-required"


class TooManyRequests(AppError):
    status, title, type_name = 429, "Too Many Requests", "rate-limited"

    def __init__(self, retry_after: int, detail: str = "too many requests") -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after))})


class UpstreamError(AppError):
    """Auth0 answered something we cannot use."""

    status, title, type_name = 502, "Bad Gateway", "upstream-error"


class UpstreamUnavailable(AppError):
    """Auth0 or the database is unreachable or rate-limiting us beyond the wait budget."""

    status, title, type_name = 503, "Service Unavailable", "unavailable"

    def __init__(
        self, detail: str = "a dependency is unavailable", *, retry_after: int = 5
    ) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after))})


class GatewayTimeout(AppError):
    """A remote API (app/remote) did not answer in its route's time."""

    status, title, type_name = 504, "Gateway Timeout", "upstream-timeout"


class DatabaseUnavailable(Exception):
    """The database cannot be reached; start-up and readiness report it in one line."""


# Connection-level failures only: a constraint or syntax error is a bug, and stays a 500.
DATABASE_OUTAGES: tuple[type[Exception], ...] = (
    DatabaseUnavailable,
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # A connection the server dropped while idle (restart, failover) fails this way on its
    # next use; db.connection() terminates it so the pool opens a fresh one.
    asyncpg.InternalClientError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.QueryCanceledError,
    # A write that reached a standby (SQLSTATE 25006: a server demoted under an open
    # connection, or a URL that does not ask for the writable host): nothing was written.
    asyncpg.exceptions.ReadOnlySQLTransactionError,
)


# Pydantic error types that mean "the JSON has the wrong shape" (400), not "invalid value" (422).
_TYPE_ERRORS = ("_type", "model_attributes_type", "dict_type", "list_type", "is_instance_of")


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Every offending field, named by its dotted path; never the offending value."""
    errors = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(part) for part in error["loc"]) or "body"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        errors.append({"field": loc, "message": message})
    return errors


def validation_error(exc: ValidationError, *, what: str = "body") -> BadRequest | ValidationFailed:
    """400 when a value has the wrong JSON type, 422 when it is well-formed but invalid."""
    errors = field_errors(exc)
    if any(e["type"].endswith(_TYPE_ERRORS) for e in exc.errors(include_url=False)):
        return BadRequest(f"the {what} has values of the wrong type", errors=errors)
    return ValidationFailed(f"the {what} is invalid", errors=errors)
