"""The OpenAPI document's `components.schemas`, filled from pydantic models: each name
belongs to one type, and two types with one name are refused (`SchemaNameClash`) rather
than one described with the other's fields. app/http/openapi.py builds the document."""

from __future__ import annotations

from enum import Enum
from typing import Any, get_args

from pydantic import BaseModel


class SchemaNameClash(Exception):
    """Two different types would share one name in `components.schemas`, so one of them
    would silently describe the other's responses."""


class ComponentSchemas:
    """`components.schemas`: each name belongs to one type, the first that claims it."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}
        self._owners: dict[str, type | None] = {}

    def ref(self, model: type[BaseModel], mode: str = "validation") -> dict[str, Any]:
        schema = model.model_json_schema(
            ref_template="#/components/schemas/{model}",
            mode="serialization" if mode == "serialization" else "validation",
        )
        named = _named_types(model)
        for name, definition in schema.pop("$defs", {}).items():
            self._claim(name, named.get(name), definition)
        self._claim(model.__name__, model, schema)
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    def _claim(self, name: str, owner: type | None, schema: dict[str, Any]) -> None:
        if name not in self.components:
            self.components[name], self._owners[name] = schema, owner
            return
        known = self._owners[name]
        if owner is not None and known is not None:
            clash = owner is not known
        else:  # a type the walk could not name: only an identical schema may share the name
            clash = self.components[name] != schema
        if clash:
            raise SchemaNameClash(
                f"two types are named {name!r} in the OpenAPI components: "
                f"{_qualified(known)} and {_qualified(owner)}; rename one"
            )


def _named_types(model: type[BaseModel]) -> dict[str, type | None]:
    """The models and enums reachable from `model`'s fields, by name (None: ambiguous)."""
    found: dict[str, type | None] = {}
    seen: set[type] = set()

    def walk(annotation: Any) -> None:
        if isinstance(annotation, type) and annotation not in seen:
            seen.add(annotation)
            if issubclass(annotation, BaseModel | Enum):
                name = annotation.__name__
                found[name] = annotation if found.get(name, annotation) is annotation else None
            if issubclass(annotation, BaseModel):
                for info in annotation.model_fields.values():
                    walk(info.annotation)
                for computed in annotation.model_computed_fields.values():
                    walk(computed.return_type)
        for arg in get_args(annotation):
            walk(arg)

    walk(model)
    return found


def _qualified(owner: type | None) -> str:
    return f"{owner.__module__}.{owner.__qualname__}" if owner else "a type not named here"
