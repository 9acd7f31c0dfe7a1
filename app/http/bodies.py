"""Small HTTP helpers shared by the handlers: JSON in and out, and signed cursors."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from app.core.errors import (
    BadRequest,
    UnsupportedMediaType,
    ValidationFailed,
    field_errors,
    validation_error,
)

ModelT = TypeVar("ModelT", bound=BaseModel)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot serialise {type(value).__name__}")


async def read_json(request: Request) -> Any:
    """The request body as JSON: 415 unless JSON, 400 when malformed."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise UnsupportedMediaType("send the body as application/json")
    body = await request.body()
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("the body is not valid JSON") from None


async def parse_body(request: Request, model: type[ModelT]) -> ModelT:
    data = await read_json(request)
    if not isinstance(data, dict):
        raise BadRequest(
            "the body must be a JSON object",
            errors=[{"field": "body", "message": "expected an object"}],
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def parse_query(request: Request, model: type[ModelT]) -> ModelT:
    """Query parameters into a model; a repeated parameter is refused, unknown ones too."""
    params = request.query_params
    repeated = sorted({k for k in params if len(params.getlist(k)) > 1})
    if repeated:
        raise BadRequest(
            "a query parameter was given more than once",
            errors=[{"field": k, "message": "repeated"} for k in repeated],
        )
    try:
        return model.model_validate(dict(params))
    except ValidationError as exc:
        errors = field_errors(exc)
        raise ValidationFailed("the query string is invalid", errors=errors) from None
