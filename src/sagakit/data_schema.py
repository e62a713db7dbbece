"""The JSON Schema of typed saga data, written down with each definition a worker runs.

A saga typed with ``data_type`` (a pydantic model or a dataclass) gets a JSON Schema (draft
2020-12) of the data it accepts, so that commands that run no user code (``sagakit describe``,
a dashboard's start form) can show what a start needs. A pydantic model gives its own
(``model_json_schema()``); a dataclass's is derived from its type hints here, in the shape
pydantic gives, nested dataclasses under ``$defs``. A hint that JSON Schema cannot say more
about than "any value" (``Any``, a class of its own) becomes ``{}``: the schema describes, it
never refuses a definition.

>>> from dataclasses import dataclass
>>> @dataclass
... class Order:
...     order_id: str
...     quantity: int = 1
>>> schema = json_schema(Order)
>>> schema["required"], schema["properties"]["quantity"]
(['order_id'], {'title': 'Quantity', 'type': 'integer', 'default': 1})
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import decimal
import enum
import types
import typing
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Union, cast

from sagakit.encoding import JSON, to_json
from sagakit.errors import EncodingError

_SCALARS: dict[object, dict[str, JSON]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    bytes: {"type": "string"},
    datetime.datetime: {"type": "string", "format": "date-time"},
    datetime.date: {"type": "string", "format": "date"},
    datetime.time: {"type": "string", "format": "time"},
    datetime.timedelta: {"type": "string", "format": "duration"},
    uuid.UUID: {"type": "string", "format": "uuid"},
    decimal.Decimal: {"anyOf": [{"type": "number"}, {"type": "string"}]},
}


def json_schema(data_type: type[Any] | None) -> dict[str, JSON] | None:
    """The JSON Schema of ``data_type``; None for untyped data, or for a type whose schema
    cannot be made (a pydantic model that refuses to give one)."""
    if data_type is None:
        return None
    try:
        model_schema = getattr(data_type, "model_json_schema", None)
        if callable(model_schema):  # a pydantic v2 model
            return cast(dict[str, JSON], to_json(model_schema(), path="schema"))
        defs: dict[str, JSON] = {}
        schema = _Builder(defs).schema(data_type)
        if defs:
            schema = {**schema, "$defs": dict(sorted(defs.items()))}
        return schema
    except (EncodingError, TypeError, ValueError, NameError, AttributeError):
        # Unresolvable forward references, a model that cannot describe itself: the
        # definition still runs; only its schema is unknown.
        return None


class _Builder:
    def __init__(self, defs: dict[str, JSON]) -> None:
        self._defs = defs
        self._seen: set[type[Any]] = set()

    def schema(self, hint: object) -> dict[str, JSON]:
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            return self._dataclass(hint)
        return self._hint(hint)

    def _dataclass(self, cls: type[Any]) -> dict[str, JSON]:
        self._seen.add(cls)
        hints = typing.get_type_hints(cls)
        properties: dict[str, JSON] = {}
        required: list[JSON] = []
        for field in dataclasses.fields(cls):
            if not field.init:
                continue
            prop: dict[str, JSON] = {"title": field.name.replace("_", " ").title()}
            prop.update(self._hint(hints.get(field.name, Any)))
            if field.default is not dataclasses.MISSING:
                with contextlib.suppress(EncodingError):  # a default JSON cannot show
                    prop["default"] = to_json(field.default, path=field.name)
            elif field.default_factory is dataclasses.MISSING:
                required.append(field.name)
            properties[field.name] = prop
        schema: dict[str, JSON] = {
            "title": cls.__name__,
            "type": "object",
            "properties": properties,
        }
        if required:
            schema["required"] = required
        return schema

    def _ref(self, cls: type[Any]) -> dict[str, JSON]:
        if cls not in self._seen:
            self._seen.add(cls)
            self._defs[cls.__name__] = self._dataclass(cls)
        return {"$ref": f"#/$defs/{cls.__name__}"}

    def _hint(self, hint: object) -> dict[str, JSON]:
        scalar = _SCALARS.get(hint) if _hashable(hint) else None
        if scalar is not None:
            return dict(scalar)
        if hint is Any or hint is object:
            return {}
        if isinstance(hint, type):
            if dataclasses.is_dataclass(hint):
                return self._ref(hint)
            if issubclass(hint, enum.Enum):
                return {"enum": [to_json(member.value) for member in hint]}
            model_schema = getattr(hint, "model_json_schema", None)
            if callable(model_schema):  # a pydantic model inside a dataclass
                nested = cast(dict[str, JSON], to_json(model_schema(), path="schema"))
                inner = nested.pop("$defs", None)
                if isinstance(inner, dict):
                    self._defs.update(inner)
                self._defs[hint.__name__] = nested
                return {"$ref": f"#/$defs/{hint.__name__}"}
            for base, scalar in _SCALARS.items():  # a subclass of str, int...
                if isinstance(base, type) and issubclass(hint, base):
                    return dict(scalar)
            if issubclass(hint, Mapping):
                return {"type": "object"}
            if issubclass(hint, (Sequence, set, frozenset)):
                return {"type": "array"}
            return {}
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin is typing.Literal:
            return {"enum": [to_json(arg) for arg in args]}
        if origin in (Union, types.UnionType):
            options = [self._hint(arg) for arg in args]
            return options[0] if len(options) == 1 else {"anyOf": list[JSON](options)}
        if origin is typing.Annotated:
            return self._hint(args[0])
        if origin in (list, set, frozenset) or origin is Sequence:
            schema: dict[str, JSON] = {"type": "array"}
            if args:
                schema["items"] = self._hint(args[0])
            if origin in (set, frozenset):
                schema["uniqueItems"] = True
            return schema
        if origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return {"type": "array", "items": self._hint(args[0])}
            return {
                "type": "array",
                "prefixItems": [self._hint(arg) for arg in args],
                "minItems": len(args),
                "maxItems": len(args),
            }
        if origin in (dict, Mapping):
            mapping: dict[str, JSON] = {"type": "object"}
            if len(args) == 2:
                mapping["additionalProperties"] = self._hint(args[1])
            return mapping
        return {}


def _hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True
