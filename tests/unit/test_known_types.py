"""The well-known types (Semantics 14): each is written as documented, read back by type into
typed saga data and step results, and anything else fails at once, not retryably."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

from sagakit import App, Saga, SagaStatus, SqliteStore, StepContext, Worker
from sagakit.encoding import from_json, to_json
from sagakit.errors import EncodingError

UTC = dt.UTC
ID = uuid.UUID("5f0e1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b")


class Colour(enum.Enum):
    RED = "red"


@dataclass
class Booking:
    paid_at: dt.datetime
    amount: decimal.Decimal
    id: uuid.UUID
    tags: frozenset[str]
    day: dt.date | None = None
    starts: dt.time = dt.time(9, 30)
    hold: dt.timedelta = dt.timedelta(minutes=15)
    colour: Colour = Colour.RED
    token: bytes = b"\x00\xffhi"
    prices: dict[str, decimal.Decimal] = field(default_factory=dict)
    pair: tuple[int, str] = (1, "a")


BOOKING = Booking(
    dt.datetime(2025, 1, 31, 12, 0, 0, 123000, tzinfo=UTC),
    decimal.Decimal("19.90"),
    ID,
    frozenset({"b", "a"}),
    dt.date(2025, 2, 1),
    prices={"room": decimal.Decimal("120.00")},
)


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (decimal.Decimal("19.90"), "19.90"),
        (decimal.Decimal("1E+2"), "1E+2"),
        (dt.datetime(2025, 1, 31, 12, 0, tzinfo=UTC), "2025-01-31T12:00:00+00:00"),
        (dt.datetime(2025, 1, 31, 12, 0), "2025-01-31T12:00:00"),
        (dt.date(2025, 1, 31), "2025-01-31"),
        (dt.time(12, 0, 1), "12:00:01"),
        (dt.timedelta(seconds=90.5), 90.5),
        (ID, "5f0e1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b"),
        ({3, 1, 2}, [1, 2, 3]),
        (frozenset({"b", "a"}), ["a", "b"]),
        ({1, "a"}, ["a", 1]),  # elements that do not compare: by their JSON text ("a" < 1)
        (b"hi", "aGk="),
        (Colour.RED, "red"),
        ({"at": [dt.date(2025, 1, 1)]}, {"at": ["2025-01-01"]}),
    ],
)
def test_each_known_type_is_written_as_documented(value: object, written: object) -> None:
    assert to_json(value) == written


def test_typed_data_round_trips() -> None:
    written = to_json(BOOKING)
    assert written["tags"] == ["a", "b"]  # type: ignore[index, call-overload]
    assert from_json(written, Booking) == BOOKING


@pytest.mark.parametrize(
    ("value", "into"),
    [
        ("yesterday", dt.datetime),
        ("2025-13-01", dt.date),
        ("x", decimal.Decimal),
        (True, decimal.Decimal),
        ("not-a-uuid", uuid.UUID),
        ("***", bytes),
        ("90", dt.timedelta),
    ],
)
def test_a_value_that_is_not_of_its_type_is_an_encoding_error(value: Any, into: type) -> None:
    with pytest.raises(EncodingError, match="is not a"):
        from_json(value, into)


@pytest.mark.parametrize(
    "value", [decimal.Decimal("NaN"), decimal.Decimal("Infinity"), [decimal.Decimal("-Infinity")]]
)
def test_a_decimal_that_is_not_finite_is_refused(value: object) -> None:
    with pytest.raises(EncodingError, match="not a finite number"):
        to_json(value, path="result")


def test_anything_else_names_the_type_and_where_to_look() -> None:
    with pytest.raises(EncodingError, match=r"^result\.x: a complex is not JSON-encodable"):
        to_json({"x": 1j}, path="result")


async def test_a_step_returning_known_types_completes_and_anything_else_fails_at_once() -> None:
    saga: Saga[Any] = Saga("known", data_type=Booking)
    seen: list[Booking] = []

    async def price(ctx: StepContext[Booking]) -> dict[str, object]:
        seen.append(ctx.data)
        return {"total": ctx.data.amount * 2, "at": ctx.data.paid_at, "ids": {ID}}

    async def odd(ctx: StepContext[Booking]) -> object:
        return object()

    saga.local("price", price, kind="retriable")
    saga.local("odd", odd, kind="retriable")
    store = SqliteStore(":memory:", owner=True)
    async with Worker(App(sagas=[saga]), store) as worker:
        done = await worker.client.run(saga, BOOKING, timeout=10)
    await store.close()
    assert seen == [BOOKING]  # typed saga data comes back typed, datetime included
    assert done.steps[0].result == {
        "total": "39.80",
        "at": "2025-01-31T12:00:00.123000+00:00",
        "ids": [str(ID)],
    }
    # An object that cannot be encoded: no retry, a reason that says so and names it.
    assert done.status is SagaStatus.STUCK and done.steps[1].attempts == 1
    assert done.reason is not None
    assert "non-retryable" in done.reason and "a object is not JSON-encodable" in done.reason
