"""`/openapi.json` describes each response with the model its handler declares, whatever the
order of the routes, and refuses two types that would share one component name."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from app.http.components import SchemaNameClash
from app.http.openapi import Operation, build_openapi, operation
from app.http.ops import API_TITLE, API_VERSION
from app.main import all_routes

REF = "#/components/schemas/"


def _served_routes() -> list[Route]:
    return [r for r in all_routes() if isinstance(r, Route) and r.include_in_schema]


# A component name must not depend on which route registered it first.
@pytest.fixture(params=["as listed", "reversed"])
def routes(request: pytest.FixtureRequest) -> list[BaseRoute]:
    listed: list[BaseRoute] = list(all_routes())
    return listed if request.param == "as listed" else listed[::-1]


@pytest.fixture
def spec(routes: list[BaseRoute]) -> dict[str, Any]:
    return build_openapi(routes, title=API_TITLE, version=API_VERSION)


def _model_schema(model: type[BaseModel]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model's own response schema and the schemas it refers to, as the spec names them."""
    schema = model.model_json_schema(ref_template=REF + "{model}", mode="serialization")
    return schema, schema.pop("$defs", {})


def _assert_component_is(spec: dict[str, Any], model: type[BaseModel]) -> None:
    components = spec["components"]["schemas"]
    schema, defs = _model_schema(model)
    assert components[model.__name__] == schema, model.__name__
    for name, definition in defs.items():
        assert components[name] == definition, f"{name}, referred to by {model.__name__}"


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    assert ref.startswith(REF)
    resolved: dict[str, Any] = spec["components"]["schemas"][ref.removeprefix(REF)]
    return resolved


class TestResponseSchemas:
    def test_every_json_response_is_the_declared_model(self, spec: dict[str, Any]) -> None:
        checked = 0
        for route in _served_routes():
            op: Operation = route.endpoint.__operation__  # type: ignore[attr-defined]
            for method in (route.methods or {"GET"}) - {"HEAD"}:
                documented = spec["paths"][route.path_format][method.lower()]["responses"]
                for status, declared in op.responses.items():
                    if declared.model is None:
                        continue
                    where = f"{method} {route.path_format} {status}"
                    content = documented[str(status)]["content"][declared.media_type]
                    ref = {"$ref": REF + declared.model.__name__}
                    expected = {"type": "array", "items": ref} if declared.many else ref
                    assert content["schema"] == expected, where
                    _assert_component_is(spec, declared.model)
                    checked += 1
        assert checked >= 20  # the walk did reach the operations

    def test_patient_page_items_are_patients(self, spec: dict[str, Any]) -> None:
        response = spec["paths"]["/api/patients"]["get"]["responses"]["200"]
        page = _resolve(spec, response["content"]["application/json"]["schema"])
        items = page["properties"]["items"]
        assert items["type"] == "array"
        assert items["items"] == {"$ref": REF + "PatientOut"}
        patient = _resolve(spec, items["items"])
        assert {"id", "given_name", "version"} <= patient["properties"].keys()


def _thing_with_a_count() -> type[BaseModel]:
    class Thing(BaseModel):
        count: int

    return Thing


def _thing_with_a_name() -> type[BaseModel]:
    class Thing(BaseModel):
        name: str

    return Thing


def _route(path: str, model: type[BaseModel]) -> Route:
    @operation("A test route", responses={200: model})
    async def handler(request: Request) -> Response:
        return Response()

    return Route(path, handler)


class TestNameClash:
    def test_two_models_with_one_name_are_refused(self) -> None:
        first, second = _thing_with_a_count(), _thing_with_a_name()
        routes = [_route("/one", first), _route("/two", second)]
        with pytest.raises(SchemaNameClash) as refused:
            build_openapi(routes, title="t", version="1")
        message = str(refused.value)
        assert "'Thing'" in message
        assert message.count(f"{__name__}._thing_with_a_") == 2

    def test_a_nested_model_with_a_taken_name_is_refused(self) -> None:
        inner = _thing_with_a_name()

        class Wrapper(BaseModel):
            thing: inner  # type: ignore[valid-type]

        routes = [_route("/one", _thing_with_a_count()), _route("/two", Wrapper)]
        with pytest.raises(SchemaNameClash, match="'Thing'"):
            build_openapi(routes, title="t", version="1")

    def test_one_model_on_many_routes_is_fine(self) -> None:
        thing = _thing_with_a_count()
        spec = build_openapi([_route("/one", thing), _route("/two", thing)], title="t", version="1")
        assert spec["components"]["schemas"]["Thing"]["required"] == ["count"]
