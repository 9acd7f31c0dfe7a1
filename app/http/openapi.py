"""OpenAPI 3.1 generated from the code: the route table, `@operation` metadata on each
handler, the pydantic models it names, and the `requires(...)` permissions on it. How those
routes take a caller (bearer, DPoP, the session cookie) depends on the settings: the app
hands it in as an `Access`.

Nothing here is kept by hand beside the handlers; a test checks every served route is listed.
Two types with one name would share one component schema, so building refuses them
(`SchemaNameClash`, app/http/components.py) rather than describe one model with the
other's fields.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.routing import BaseRoute, Route

from app.http.components import ComponentSchemas

F = TypeVar("F", bound=Callable[..., Any])

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_STANDARD_ERRORS = {
    400: "Malformed request (bad JSON, wrong types, bad cursor)",
    401: "Missing or invalid access token (see WWW-Authenticate)",
    403: "The token lacks a permission, a verified email or MFA",
    404: "Not found (or not in the caller's scope)",
    413: "Body over the size limit",
    415: "Body is not JSON",
    422: "Well-formed but invalid input; `errors` names every field",
    429: "Too many requests (see Retry-After)",
    500: "Unexpected error (details are in the server log under the request id)",
    503: "A dependency is unavailable (see Retry-After)",
}
BEARER_SCHEME: Mapping[str, Any] = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "JWT",
    "description": "An Auth0 access token for this API's audience.",
}


class Problem(BaseModel):
    """RFC 9457 problem details, as every error is rendered."""

    type: str
    title: str
    status: int
    detail: str
    request_id: str | None
    errors: list[dict[str, str]] | None = None


@dataclass(frozen=True)
class Resp:
    """One documented response."""

    model: type[BaseModel] | None = None
    description: str = ""
    media_type: str = "application/json"
    headers: tuple[str, ...] = ()
    many: bool = False
    # Other media types the same status may carry (documented as text), e.g. a CSV export.
    also: tuple[str, ...] = ()


@dataclass(frozen=True)
class Operation:
    summary: str
    tags: tuple[str, ...] = ()
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    responses: Mapping[int, Resp] = field(default_factory=dict)
    request_headers: tuple[tuple[str, bool, str], ...] = ()
    security: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class Access:
    """How the routes under `requires` take a caller on this instance (app/auth/schemes.py
    builds it from the settings): the security schemes, the alternatives (each the schemes
    sent together), and the header objects of their 401 answers."""

    schemes: Mapping[str, Mapping[str, Any]]
    alternatives: tuple[tuple[str, ...], ...]
    challenge_headers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


BEARER_ONLY = Access({"bearerAuth": BEARER_SCHEME}, (("bearerAuth",),))


def operation(
    summary: str,
    *,
    tags: Sequence[str] = (),
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    responses: Mapping[int, Resp | type[BaseModel] | None] | None = None,
    request_headers: Sequence[tuple[str, bool, str]] = (),
    security: str | None = None,
    description: str | None = None,
) -> Callable[[F], F]:
    """Declare what a handler accepts and returns; `/openapi.json` is built from this."""
    normalised: dict[int, Resp] = {}
    for status, spec in (responses or {200: None}).items():
        normalised[status] = spec if isinstance(spec, Resp) else Resp(model=spec)
    op = Operation(
        summary, tuple(tags), body, query, normalised, tuple(request_headers), security, description
    )

    def decorate(func: F) -> F:
        func.__operation__ = op  # type: ignore[attr-defined]
        return func

    return decorate


def _routes(routes: Sequence[BaseRoute]) -> list[Route]:
    return [r for r in routes if isinstance(r, Route) and r.include_in_schema]


def build_openapi(
    routes: Sequence[BaseRoute], *, title: str, version: str, access: Access = BEARER_ONLY
) -> dict[str, Any]:
    schemas = ComponentSchemas()
    schemas.ref(Problem, "serialization")
    paths: dict[str, dict[str, Any]] = {}
    for route in _routes(routes):
        op: Operation | None = getattr(route.endpoint, "__operation__", None)
        auth = getattr(route.endpoint, "__auth__", None)
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            paths.setdefault(route.path_format, {})[method.lower()] = _operation(
                route, op, auth, schemas, access
            )
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "securitySchemes": {
                **access.schemes,
                "logStreamToken": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "The Auth0 Log Stream webhook secret.",
                },
            },
        },
    }


def _operation(
    route: Route, op: Operation | None, auth: Any, schemas: ComponentSchemas, access: Access
) -> dict[str, Any]:
    op = op or Operation(summary=route.name or route.path)
    out: dict[str, Any] = {"summary": op.summary, "operationId": route.name}
    if op.tags:
        out["tags"] = list(op.tags)
    if op.description:
        out["description"] = op.description
    parameters: list[dict[str, Any]] = []
    for name, convertor in route.param_convertors.items():
        schema: dict[str, Any] = {"type": "string"}
        if type(convertor).__name__ == "UUIDConvertor":
            schema["format"] = "uuid"
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
    if op.query is not None:
        query_schema = op.query.model_json_schema()
        required_names = set(query_schema.get("required", []))
        for name, prop in query_schema.get("properties", {}).items():
            param = {
                "name": name,
                "in": "query",
                "required": name in required_names,
                "schema": prop,
            }
            if "description" in prop:
                param["description"] = prop["description"]
            parameters.append(param)
    for name, required, description in op.request_headers:
        parameters.append(
            {
                "name": name,
                "in": "header",
                "required": required,
                "description": description,
                "schema": {"type": "string"},
            }
        )
    if parameters:
        out["parameters"] = parameters
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schemas.ref(op.body)}},
        }

    responses: dict[str, Any] = {}
    for status, resp in sorted(op.responses.items()):
        entry: dict[str, Any] = {"description": resp.description or _default_description(status)}
        if resp.model is not None:
            schema = schemas.ref(resp.model, "serialization")
            entry["content"] = {
                resp.media_type: {
                    "schema": {"type": "array", "items": schema} if resp.many else schema
                }
            }
        elif resp.media_type != "application/json" and status != 204:
            entry["content"] = {resp.media_type: {"schema": {"type": "string"}}}
        for media_type in resp.also:
            entry.setdefault("content", {})[media_type] = {"schema": {"type": "string"}}
        if resp.headers:
            entry["headers"] = {h: {"schema": {"type": "string"}} for h in resp.headers}
        responses[str(status)] = entry

    errors = {429, 500, 503}
    if auth is not None or op.security:
        errors |= {401, 403}
        out["security"] = (
            [{op.security: []}]
            if op.security
            else [{name: [] for name in together} for together in access.alternatives]
        )
    permissions: tuple[str, ...] = tuple(getattr(auth, "permissions", ()) or ())
    if permissions:
        out["x-permissions"] = list(permissions)
        out["description"] = (
            out.get("description", "") + "\n\nRequires: " + ", ".join(permissions)
        ).strip()
    if op.body is not None:
        errors |= {400, 413, 415, 422}
    if op.query is not None:
        errors |= {400, 422}
    if route.param_convertors:
        errors |= {404}
    for status in sorted(errors):
        responses.setdefault(
            str(status),
            {
                "description": _STANDARD_ERRORS[status],
                "content": {"application/problem+json": {"schema": PROBLEM_REF}},
            },
        )
    if auth is not None and not op.security and access.challenge_headers:
        headers = {**responses["401"].get("headers", {}), **access.challenge_headers}
        responses["401"] = {**responses["401"], "headers": headers}
    out["responses"] = responses
    return out


def _default_description(status: int) -> str:
    return {
        200: "OK",
        201: "Created",
        202: "Accepted",
        204: "No Content",
        304: "Not Modified",
        409: "Conflict",
        410: "Gone",
        412: "Precondition Failed",
        428: "Precondition Required",
        502: "Unexpected answer from Auth0",
    }.get(status, _STANDARD_ERRORS.get(status, "Response"))
