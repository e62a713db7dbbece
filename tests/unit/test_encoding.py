"""to_json: plain values take the fast way, everything else the converting way, and both
give the same answers and the same errors."""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass

import pytest

from sagakit.encoding import to_json
from sagakit.errors import EncodingError


class Colour(enum.Enum):
    RED = "red"


@dataclass
class Point:
    x: int
    y: tuple[int, ...]


def test_plain_values_are_copied_not_shared() -> None:
    value = {"a": [1, 2.5, "x", None, True], "b": {"c": False}}
    out = to_json(value)
    assert out == value
    assert out is not value
    value["a"].append(3)  # type: ignore[attr-defined]
    assert out == {"a": [1, 2.5, "x", None, True], "b": {"c": False}}


def test_tuples_become_lists_and_bools_stay_bools() -> None:
    assert to_json((1, (2, 3))) == [1, [2, 3]]
    out = to_json({"t": True, "n": 1})
    assert out == {"t": True, "n": 1}
    assert isinstance(out, dict) and out["t"] is True


def test_values_that_need_converting_inside_plain_ones() -> None:
    assert to_json({"p": Point(1, (2,)), "c": [Colour.RED]}) == {
        "p": {"x": 1, "y": [2]},
        "c": ["red"],
    }


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"a": [1, math.nan]}, "value.a[1]"),
        ({"a": {"b": 2**64}}, "value.a.b"),
        ({"a": {1: "x"}}, "value.a"),
        ({"a": [object()]}, "value.a[0]"),
    ],
)
def test_errors_name_where_the_bad_value_sits(value: object, where: str) -> None:
    with pytest.raises(EncodingError, match="^" + re.escape(where)):
        to_json(value)


def test_integer_bounds_are_those_of_64_bits_signed() -> None:
    assert to_json(-(2**63)) == -(2**63)
    assert to_json(2**63 - 1) == 2**63 - 1
    for outside in (-(2**63) - 1, 2**63, 2**64 - 1):
        with pytest.raises(EncodingError, match="does not fit in 64 bits"):
            to_json(outside)
