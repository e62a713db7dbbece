"""JSON values in and out: saga data and step results (Semantics 14).

Saga data and step results are JSON values, dataclasses or pydantic models, and may hold the
well-known types of :mod:`sagakit.known_types` (``Decimal``, ``datetime``, ``UUID``, sets...),
read back by type. They are stored and sent as JSON; nothing is ever pickled. :func:`to_json`
checks every value against the rules below (docs/concepts.md, "Values sagakit accepts"), so
that what it accepts both stores can hold and every participant can parse; a value that breaks
one raises :class:`~sagakit.errors.EncodingError` naming where it sits:

- JSON values only (objects with string keys, arrays, strings, numbers, booleans, null), after
  the well-known types are written as JSON;
- strings (keys too) with no NUL character and no lone surrogate;
- finite numbers; integers from -2**63 to 2**63 - 1;
- at most :data:`MAX_DEPTH` arrays and objects nested in one another;
- at most :data:`MAX_VALUE_BYTES` bytes of JSON per value.

Ids, keys and names (:func:`check_name`) are non-empty strings of at most
:data:`MAX_NAME_LENGTH` characters under the same string rules.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import math
import types
import typing
from typing import Any, Final, TypeAlias, TypeVar, Union, cast

import orjson

from sagakit.errors import EncodingError
from sagakit.known_types import DECODED, NOT_KNOWN, decode_known, encode_known

#: A JSON value as Python holds it.
JSON: TypeAlias = bool | int | float | str | list["JSON"] | dict[str, "JSON"] | None

T = TypeVar("T")

#: Arrays and objects nested in one another in one value (the outermost counts as 1).
MAX_DEPTH: Final = 64
#: Bytes of compact JSON per value (saga data, a step's input or result, a reason). Two values
#: at the limit and an envelope fit in one message (messages.MAX_MESSAGE_BYTES, 1 MiB): a
#: compensation's command carries its step's input and result.
MAX_VALUE_BYTES: Final = 256 * 1024
#: Characters per id, key or name. PostgreSQL indexes them, and an index entry holds at most
#: 2,704 bytes: 512 characters are at most 2,048 bytes of UTF-8.
MAX_NAME_LENGTH: Final = 512
#: Integers that fit 64 bits, signed (as most participants' languages read JSON integers).
INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**63 - 1


def to_json(value: object, *, path: str = "value") -> JSON:
    """Convert ``value`` to a plain JSON value that follows the rules, or raise EncodingError
    naming the path (for example ``saga data.items[3].name: lone surrogate '\\ud800'``)."""
    plain = _plain(value, 0)
    if plain is _NOT_PLAIN:
        plain = _convert(value, path, 0)
    if type(plain) in _HOLDS_TEXT:
        # Inlined, not a call of _check_text_and_size: this is on the path of every step's
        # result, where each call counts (bench/instructions.py); see there what it checks.
        try:
            body = orjson.dumps(plain)
        except orjson.JSONEncodeError:
            # A dict key that is not a str (_plain leaves keys to orjson), or a lone surrogate.
            plain = _convert(value, path, 0, exact=True)
            _check_text_and_size(plain, path, MAX_VALUE_BYTES)
            return plain
        if len(body) > MAX_VALUE_BYTES or 92 in body:  # 92: a backslash, maybe of \u0000
            _check_text_and_size(plain, path, MAX_VALUE_BYTES)
    return cast(JSON, plain)


def check_json(value: JSON, *, path: str = "value", max_bytes: int = MAX_VALUE_BYTES) -> None:
    """Check a JSON value that came from outside (parsed, or built by hand) against the rules,
    with ``max_bytes`` for its size; raise EncodingError naming the path."""
    _check_text_and_size(_convert(value, path, 0, exact=True), path, max_bytes)


def check_name(text: object, what: str) -> str:
    """``text`` if it is a valid id, key or name, else raise EncodingError naming ``what``."""
    if not isinstance(text, str):
        raise EncodingError(f"{what}: a {type(text).__qualname__}, not a string")
    problem = name_problem(text)
    if problem is not None:
        raise EncodingError(f"{what}: {problem}")
    return text


def name_problem(text: str) -> str | None:
    """What makes ``text`` unfit as an id, key or name, or None."""
    if not text:
        return "empty"
    if len(text) > MAX_NAME_LENGTH:
        return f"longer than {MAX_NAME_LENGTH} characters ({len(text)})"
    return text_problem(text)


def text_problem(text: str) -> str | None:
    """What makes ``text`` unfit as a string in a value (a NUL, a lone surrogate), or None.

    The answer quotes the character escaped, so it is itself a valid string."""
    if "\x00" in text:
        return "NUL character '\\x00'"
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        return f"lone surrogate {text[exc.start]!r}"
    return None


def printable(text: str) -> str:
    """``text`` with each NUL and lone surrogate escaped (``\\x00``, ``\\ud800``): safe to
    record in either store, for a reason or an error message built from outside text."""
    if text.isascii() and "\x00" not in text:
        return text
    return text.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")


_NOT_PLAIN = object()
#: What to_json must encode to check: only a string, an array or an object holds strings or
#: can pass the size (_plain and _convert return no subclass of them).
_HOLDS_TEXT: Final = frozenset((str, dict, list))
_INT_RANGE = range(INT_MIN, INT_MAX + 1)


def _plain(value: object, depth: int) -> object:
    """A copy of ``value`` when it is made of plain JSON types only and within the depth, the
    integer range and finite numbers, else _NOT_PLAIN.

    The common case (dicts of strings and numbers), without building the path of every
    element that only an error message needs; anything else takes _convert's way. Dict keys,
    strings and size are checked afterwards, by encoding the copy (to_json): orjson refuses a
    key that is not a str. The scalars inside a container are checked in its loop, not by a
    call each: a call costs more than the check, and this runs on every step's result
    (bench/instructions.py).
    """
    kind = type(value)
    if kind is dict:
        if depth == MAX_DEPTH:
            return _NOT_PLAIN
        out: dict[str, object] = {}
        for key, item in cast(dict[str, object], value).items():
            kind = type(item)
            if kind is str or kind is bool or item is None:
                pass
            elif kind is int:
                if item not in _INT_RANGE:
                    return _NOT_PLAIN
            elif kind is float:
                if not _isfinite(cast(float, item)):
                    return _NOT_PLAIN
            else:
                item = _plain(item, depth + 1)
                if item is _NOT_PLAIN:
                    return _NOT_PLAIN
            out[key] = item
        return out
    if kind is list or kind is tuple:
        if depth == MAX_DEPTH:
            return _NOT_PLAIN
        items: list[object] = []
        for item in cast(list[object], value):
            kind = type(item)
            if kind is str or kind is bool or item is None:
                pass
            elif kind is int:
                if item not in _INT_RANGE:
                    return _NOT_PLAIN
            elif kind is float:
                if not _isfinite(cast(float, item)):
                    return _NOT_PLAIN
            else:
                item = _plain(item, depth + 1)
                if item is _NOT_PLAIN:
                    return _NOT_PLAIN
            items.append(item)
        return items
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        return value if value in _INT_RANGE else _NOT_PLAIN
    if kind is float:
        return value if _isfinite(cast(float, value)) else _NOT_PLAIN
    return _NOT_PLAIN


_isfinite = math.isfinite


def _convert(value: object, path: str, depth: int, *, exact: bool = False) -> JSON:
    """``value`` as plain JSON, or raise EncodingError naming the path; ``exact`` walks every
    element (no _plain for the parts that look plain), to find a dict key that is not a str
    and to make a str subclass key a str."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):  # a subclass (a StrEnum): made a str, which to_json checks
        return str.__str__(value)
    if isinstance(value, int):
        # Compared, not looked up in _INT_RANGE: for a subclass of int, `in` walks the range.
        if not INT_MIN <= value <= INT_MAX:
            raise _error(f"{path}: the integer {value} does not fit in 64 bits (signed)")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _error(f"{path}: {value!r} is not a finite number")
        return value
    if isinstance(value, enum.Enum):
        return _value(value.value, path, depth, exact)
    is_dataclass = dataclasses.is_dataclass(value) and not isinstance(value, type)
    if isinstance(value, (dict, list, tuple)) or is_dataclass:
        if depth == MAX_DEPTH:
            raise _error(f"{path}: nested deeper than {MAX_DEPTH} levels")
        depth += 1
    if isinstance(value, dict):
        out: dict[str, JSON] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _error(f"{path}: dict key {key!r} is not a string")
            out[str.__str__(key)] = _value(item, f"{path}.{key}", depth, exact)
        return out
    if isinstance(value, (list, tuple)):
        return [_value(item, f"{path}[{i}]", depth, exact) for i, item in enumerate(value)]
    if is_dataclass:
        return {
            field.name: _value(getattr(value, field.name), f"{path}.{field.name}", depth, exact)
            for field in dataclasses.fields(value)  # type: ignore[arg-type]
        }
    dump = getattr(value, "model_dump", None)
    if callable(dump):  # a pydantic v2 model
        return _value(dump(mode="json"), path, depth, exact)
    try:
        known = encode_known(value, lambda item, where: _value(item, where, depth + 1, exact), path)
    except ValueError as exc:
        raise _error(f"{path}: {exc}") from None
    if known is not NOT_KNOWN:
        return cast(JSON, known)
    raise _error(
        f"{path}: a {type(value).__qualname__} is not JSON-encodable (use JSON values, "
        "dataclasses, pydantic models or the types listed in docs/concepts.md, "
        '"Values sagakit encodes")'
    )


def _value(value: object, path: str, depth: int, exact: bool) -> JSON:
    if not exact:
        plain = _plain(value, depth)
        if plain is not _NOT_PLAIN:
            return cast(JSON, plain)
    return _convert(value, path, depth, exact=exact)


def _check_text_and_size(value: object, path: str, max_bytes: int) -> None:
    # One pass of orjson over the value checks what the walk left: it refuses lone surrogates
    # (in keys too), gives the size, and writes a NUL as the escape \u0000, which a scan of the
    # bytes finds (or a literal backslash before "u0000": _text_error tells them apart).
    try:
        body = orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise _text_error(value, path) or _error(f"{path}: {exc}") from None
    if len(body) > max_bytes:
        raise _error(f"{path}: {len(body):,} bytes of JSON exceeds the limit of {max_bytes:,}")
    if b"\\u0000" in body:
        error = _text_error(value, path)
        if error is not None:
            raise error


def _text_error(value: object, path: str) -> EncodingError | None:
    """The first string or key in ``value`` (plain JSON) that breaks the string rules."""
    if isinstance(value, str):
        problem = text_problem(value)
        return None if problem is None else _error(f"{path}: {problem}")
    if isinstance(value, dict):
        for key, item in value.items():
            problem = text_problem(key)
            if problem is not None:
                return _error(f"{path}: dict key {_clip(key)!r}: {problem}")
            error = _text_error(item, f"{path}.{key}")
            if error is not None:
                return error
    elif isinstance(value, list):
        for i, item in enumerate(value):
            error = _text_error(item, f"{path}[{i}]")
            if error is not None:
                return error
    return None


def _clip(text: str, length: int = 40) -> str:
    return text if len(text) <= length else text[:length] + "…"


def _error(message: str) -> EncodingError:
    # The message quotes paths made of the value's own keys, and it is recorded (a step's
    # failure reason): it must obey the string rules itself.
    return EncodingError(printable(message))


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
