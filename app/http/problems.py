"""Every error the service answers, as RFC 9457 `application/problem+json`.

`problem_response` renders an `AppError` (app/core/errors.py); `EXCEPTION_HANDLERS` maps
our errors, Starlette's own 404/405 and the database's outages to it.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from app.core.errors import (
    DATABASE_OUTAGES,
    PROBLEM_CONTENT_TYPE,
    AppError,
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    PreconditionRequired,
    Unauthorized,
    UnsupportedMediaType,
    UpstreamUnavailable,
    ValidationFailed,
)

logger = logging.getLogger(__name__)


def request_id_of(scope: Scope) -> str | None:
    state = scope.get("state")
    if isinstance(state, dict):
        value = state.get("request_id")
        return value if isinstance(value, str) else None
    return None


def problem_response(error: AppError, request_id: str | None) -> Response:
    body: dict[str, Any] = {
        "type": error.type_uri,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "request_id": request_id,
    }
    if error.errors:
        body["errors"] = error.errors
    body.update(error.extra)
    return Response(
        orjson.dumps(body),
        status_code=error.status,
        headers=error.headers,
        media_type=PROBLEM_CONTENT_TYPE,
    )


_HTTP_EXCEPTIONS: dict[int, type[AppError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    410: Gone,
    412: PreconditionFailed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: ValidationFailed,
    428: PreconditionRequired,
}


async def handle_app_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AppError)
    return problem_response(exc, request_id_of(request.scope))


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (no route, wrong method) become problem+json too."""
    assert isinstance(exc, HTTPException)
    cls = _HTTP_EXCEPTIONS.get(exc.status_code, AppError)
    error = cls.__new__(cls)
    AppError.__init__(error, None, headers=exc.headers)
    if cls is AppError:
        error.status = exc.status_code
    return problem_response(error, request_id_of(request.scope))


async def handle_database_outage(request: Request, exc: Exception) -> Response:
    """The database is down or overloaded: 503, and the transaction has rolled back."""
    logger.warning(
        "database unavailable",
        extra={"request_id": request_id_of(request.scope), "error": type(exc).__name__},
    )
    error = UpstreamUnavailable("the database is unavailable; try again shortly", retry_after=2)
    return problem_response(error, request_id_of(request.scope))


# Unexpected exceptions are caught by RequestContextMiddleware, which logs them with the
# request id and answers a bare 500 (Starlette's own handler would re-raise them).
EXCEPTION_HANDLERS: dict[Any, Any] = {
    AppError: handle_app_error,
    HTTPException: handle_http_exception,
    **{cls: handle_database_outage for cls in DATABASE_OUTAGES},
}
