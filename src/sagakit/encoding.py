"""JSON values in and out: saga data and step results (Semantics 14).

Saga data and step results are JSON values, dataclasses or pydantic models, and may hold the
well-known types of :mod:`sagakit.known_types` (``Decimal``, ``datetime``, ``UUID``, sets...),
read back by type. They are stored and sent as JSON; nothing is ever pickled. A value that
cannot be encoded raises :class:`~sagakit.errors.EncodingError` naming the offending type and
where it sits.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import math
import types
import typing
from typing import Any, TypeAlias, TypeVar, Union, cast

import orjson

from sagakit.errors import EncodingError
from sagakit.known_types import DECODED, NOT_KNOWN, decode_known, encode_known

#: A JSON value as Python holds it.
JSON: TypeAlias = bool | int | float | str | list["JSON"] | dict[str, "JSON"] | None

T = TypeVar("T")


def to_json(value: object, *, path: str = "value") -> JSON:
    """Convert ``value`` to a plain JSON value, or raise EncodingError naming the path."""
    plain = _plain(value)
    if plain is not _NOT_PLAIN:
        return cast(JSON, plain)
    return _convert(value, path)


_NOT_PLAIN = object()
_INT_RANGE = range(-(2**63), 2**64)


def _plain(value: object) -> object:
    """A copy of ``value`` when it is made of plain JSON types only, else _NOT_PLAIN.

    The common case (dicts of strings and numbers), without building the path of every
    element that only an error message needs; anything else takes _convert's way.
    """
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        return value if value in _INT_RANGE else _NOT_PLAIN
    if kind is float:
        return value if math.isfinite(cast(float, value)) else _NOT_PLAIN
    if kind is dict:
        out: dict[str, object] = {}
        for key, item in cast(dict[object, object], value).items():
            if type(key) is not str:
                return _NOT_PLAIN
            item = _plain(item)
            if item is _NOT_PLAIN:
                return _NOT_PLAIN
            out[key] = item
        return out
    if kind is list or kind is tuple:
        items: list[object] = []
        for item in cast(list[object], value):
            item = _plain(item)
            if item is _NOT_PLAIN:
                return _NOT_PLAIN
            items.append(item)
        return items
    return _NOT_PLAIN


def _convert(value: object, path: str) -> JSON:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise EncodingError(f"{path}: the integer {value} does not fit in 64 bits")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EncodingError(f"{path}: {value!r} is not a finite number")
        return value
    if isinstance(value, enum.Enum):
        return to_json(value.value, path=path)
    if isinstance(value, dict):
        out: dict[str, JSON] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise EncodingError(f"{path}: dict key {key!r} is not a string")
            out[key] = to_json(item, path=f"{path}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [to_json(item, path=f"{path}[{i}]") for i, item in enumerate(value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: to_json(getattr(value, field.name), path=f"{path}.{field.name}")
            for field in dataclasses.fields(value)
        }
    dump = getattr(value, "model_dump", None)
    if callable(dump):  # a pydantic v2 model
        return to_json(dump(mode="json"), path=path)
    try:
        known = encode_known(value, lambda item, where: to_json(item, path=where), path)
    except ValueError as exc:
        raise EncodingError(f"{path}: {exc}") from None
    if known is not NOT_KNOWN:
        return cast(JSON, known)
    raise EncodingError(
        f"{path}: a {type(value).__qualname__} is not JSON-encodable (use JSON values, "
        "dataclasses, pydantic models or the types listed in docs/concepts.md, "
        '"Values sagakit encodes")'
    )


def from_json(value: JSON, into: type[T] | None) -> T:
    """Build an ``into`` (a dataclass, pydantic model, or plain type) from a JSON value.

    ``None`` for ``into`` returns the JSON value unchanged.
    """
    if into is None:
        return cast(T, value)
    return cast(T, _build(value, into))


def _build(value: JSON, into: Any) -> Any:
    validate = getattr(into, "model_validate", None)
    if callable(validate):
        return validate(value)
    if dataclasses.is_dataclass(into) and isinstance(into, type) and isinstance(value, dict):
        hints = typing.get_type_hints(into)
        kwargs = {
            field.name: _build(value[field.name], hints.get(field.name, Any))
            for field in dataclasses.fields(into)
            if field.init and field.name in value
        }
        return into(**kwargs)
    origin = typing.get_origin(into)
    args = typing.get_args(into)
    if origin is tuple and isinstance(value, list) and args and args[-1] is not Ellipsis:
        return tuple(_build(item, arg) for item, arg in zip(value, args, strict=False))
    if origin in (list, tuple, set, frozenset) and isinstance(value, list) and args:
        return origin(_build(item, args[0]) for item in value)
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return {key: _build(item, args[1]) for key, item in value.items()}
    if origin in (Union, types.UnionType) and value is not None:
        for arg in args:
            if arg is not type(None):
                return _build(value, arg)
    if isinstance(into, type) and issubclass(into, enum.Enum):
        return into(value)
    if into in DECODED:
        try:
            return decode_known(value, into)
        except ValueError as exc:
            raise EncodingError(str(exc)) from None
    if into in (set, frozenset) and isinstance(value, list):
        return into(value)
    return value


def dumps(value: JSON) -> str:
    """Compact, key-sorted JSON text for a JSON value (deterministic for fingerprints)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def dump_text(value: JSON) -> str:
    """Compact JSON text, keys in insertion order: for the store's state and history columns,
    which are written on every transition and compared with nothing."""
    return orjson.dumps(value).decode()


def digest_of(value: JSON) -> str:
    """A stable digest of a JSON value (the input digest behind idempotent starts)."""
    return hashlib.sha256(dumps(value).encode()).hexdigest()


def dump_bytes(value: JSON) -> bytes:
    """Compact JSON as UTF-8 bytes, keys in insertion order (the wire format)."""
    # orjson's result keeps its over-allocated buffer (about 8 KB for a 1 KB body, orjson
    # issue 483); a message can wait in the outbox for long, so it is copied to its size.
    return memoryview(orjson.dumps(value)).tobytes()


def loads(text: str | bytes) -> JSON:
    """Parse JSON text; raises ValueError on malformed input (orjson.JSONDecodeError is one)."""
    return cast(JSON, orjson.loads(text))
