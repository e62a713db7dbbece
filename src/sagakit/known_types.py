"""The well-known Python types that saga data and step results may hold besides JSON values,
dataclasses and pydantic models (Semantics 14), and how each is written as JSON.

=====================  ===================================  =================================
type                   written as                           example
=====================  ===================================  =================================
``Decimal``            a string, every digit kept           ``"19.90"``
``datetime``           an ISO 8601 string (its offset too)  ``"2025-01-31T12:00:00+00:00"``
``date``, ``time``     an ISO 8601 string                   ``"2025-01-31"``, ``"12:00:00"``
``timedelta``          a number of seconds                  ``90.5``
``UUID``               its canonical string                 ``"5f0e…-…"``
``set``, ``frozenset`` an array, in a stable order          ``[1, 2, 3]``
``bytes``              a base64 string                      ``"aGk="``
``Enum``               its value                            ``"red"``
=====================  ===================================  =================================

JSON has no type tags, so reading a value back into one of these types needs the type: a
typed saga data class (a dataclass field ``paid_at: datetime``) or a pydantic model gives it.
Untyped, the value stays what JSON holds (the string, the array). A set's elements are ordered
by their JSON text, so equal sets give equal JSON (and an idempotent start's digest does not
depend on the order a set happened to iterate in).

>>> from decimal import Decimal
>>> encode_known(Decimal("19.90"))
'19.90'
>>> decode_known("19.90", Decimal)
Decimal('19.90')
>>> encode_known({3, 1, 2}, lambda item, _: item)
[1, 2, 3]
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import decimal
import uuid
from collections.abc import Callable
from typing import Any, Final

import orjson

#: What :func:`encode_known` returns for a value of none of the types above.
NOT_KNOWN: Final = object()

#: The types :func:`decode_known` reads back (sets come through their container's origin).
DECODED: Final = (decimal.Decimal, dt.datetime, dt.date, dt.time, dt.timedelta, uuid.UUID, bytes)


def encode_known(
    value: object, convert: Callable[[object, str], object] | None = None, path: str = "value"
) -> object:
    """``value`` written as JSON if it is of a well-known type, else :data:`NOT_KNOWN`.

    ``convert(item, path)`` converts a set's elements (they may need converting too); a
    ValueError says why a value of a known type cannot be written (a NaN Decimal).
    """
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise ValueError(f"{value!r} is not a finite number")
        return str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):  # a datetime is a date too
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (set, frozenset)):
        step = convert if convert is not None else (lambda item, _: item)
        items = [step(item, f"{path}[]") for item in value]
        # Ordered by JSON text, which every JSON value has (its elements may not compare).
        return sorted(items, key=lambda item: orjson.dumps(item, option=orjson.OPT_SORT_KEYS))
    return NOT_KNOWN


def decode_known(value: Any, into: type[Any]) -> Any:
    """``value`` (as JSON holds it) read into ``into``, one of :data:`DECODED`; a ValueError
    says why it cannot be."""
    try:
        if into is decimal.Decimal:
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ValueError("expected a string or a number")
            return decimal.Decimal(str(value))
        if into is dt.timedelta:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError("expected a number of seconds")
            return dt.timedelta(seconds=value)
        if not isinstance(value, str):
            raise ValueError("expected a string")
        if into is dt.datetime:
            return dt.datetime.fromisoformat(value)
        if into is dt.date:
            return dt.date.fromisoformat(value)
        if into is dt.time:
            return dt.time.fromisoformat(value)
        if into is uuid.UUID:
            return uuid.UUID(value)
        return base64.b64decode(value, validate=True)
    except (ValueError, decimal.InvalidOperation, binascii.Error, OverflowError) as exc:
        raise ValueError(f"{value!r} is not a {into.__qualname__}: {exc}") from None
