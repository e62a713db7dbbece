"""What a worker records of a definition it runs (sagakit.catalog), and the JSON Schema of typed
saga data (sagakit.data_schema): everything a command that runs no user code needs to show."""

from __future__ import annotations

import datetime
import enum
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import jsonschema
import pydantic
import pytest

from sagakit import RetryPolicy, Saga, StepContext, StepKind
from sagakit.catalog import DefinitionRecord, HandlerRecord
from sagakit.data_schema import json_schema
from sagakit.encoding import to_json
from sagakit.ports import WorkerRecord


class Carrier(enum.Enum):
    POST = "post"
    COURIER = "courier"


@dataclass
class Line:
    sku: str
    quantity: int = 1


@dataclass
class Order:
    order_id: str
    lines: list[Line]
    carrier: Carrier
    placed_at: datetime.datetime
    note: str | None = None
    tags: dict[str, float] = field(default_factory=dict)
    priority: Literal["low", "high"] = "low"
    ref: uuid.UUID | None = None
    anything: Any = None


class PydanticOrder(pydantic.BaseModel):
    order_id: str
    amount_cents: int


async def act(ctx: StepContext[Any]) -> None:
    return None


def definition(data_type: type[Any] | None = Order) -> Any:
    return (
        Saga("shop", version=2, data_type=data_type, deadline=600.0)
        .local("reserve", act, compensation=act, timeout=5.0, retry=RetryPolicy(max_attempts=4))
        .remote(
            "charge",
            participant="payments",
            command="card.charge",
            kind="pivot",
            input=lambda ctx: {"amount": 1},
        )
        .remote("mail", participant="mailer", command="mail.send", kind="retriable")
        .build()
    )


def test_a_record_holds_everything_a_definition_declares() -> None:
    built = definition()
    record = DefinitionRecord.of(built)
    assert (record.name, record.version, record.fingerprint) == ("shop", 2, built.fingerprint)
    assert record.deadline == 600.0 and record.pivot == "charge"
    assert record.data_type == f"{__name__}.Order"
    reserve, charge, mail = record.steps
    assert (reserve.kind, charge.kind, mail.kind) == (
        StepKind.COMPENSATABLE,
        StepKind.PIVOT,
        StepKind.RETRIABLE,
    )
    assert reserve.action == HandlerRecord("local", function=f"{__name__}.act")
    assert reserve.compensation is not None and reserve.compensation.ref == f"local:{__name__}.act"
    assert reserve.timeout == 5.0 and reserve.retry == RetryPolicy(max_attempts=4)
    assert charge.action.ref == "remote:payments/card.charge" and charge.compensation is None
    assert charge.custom_input and not mail.custom_input
    assert [s.action.ref for s in record.steps] == [s.action.ref for s in built.steps]
    assert record.to_mermaid() == built.to_mermaid()


def test_a_record_round_trips_through_json() -> None:
    record = DefinitionRecord.of(definition())
    text = to_json(record.to_json())
    assert DefinitionRecord.from_json(text, recorded_at=5.0) == replace(record, recorded_at=5.0)


def test_a_worker_record_says_its_state() -> None:
    def worker(alive: bool, stopped_at: float | None) -> WorkerRecord:
        return WorkerRecord("w", "h", 1, 0.0, 0.0, 10.0, stopped_at, (), 0, alive)

    assert worker(True, None).state == "alive"
    assert worker(False, None).state == "expired"
    assert worker(False, 5.0).state == "stopped"


def test_the_schema_of_a_dataclass_validates_its_encoded_values() -> None:
    schema = json_schema(Order)
    assert schema is not None
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["title"] == "Order"
    assert schema["required"] == ["order_id", "lines", "carrier", "placed_at"]
    properties = schema["properties"]
    assert isinstance(properties, dict)
    assert properties["lines"] == {
        "title": "Lines",
        "type": "array",
        "items": {"$ref": "#/$defs/Line"},
    }
    assert properties["carrier"] == {"title": "Carrier", "enum": ["post", "courier"]}
    assert properties["placed_at"] == {
        "title": "Placed At",
        "type": "string",
        "format": "date-time",
    }
    assert properties["priority"] == {
        "title": "Priority",
        "enum": ["low", "high"],
        "default": "low",
    }
    assert properties["anything"] == {"title": "Anything", "default": None}
    valid = {
        "order_id": "o-1",
        "lines": [{"sku": "A", "quantity": 2}, {"sku": "B"}],
        "carrier": "post",
        "placed_at": "2025-01-31T12:00:00Z",
        "note": None,
        "tags": {"gift": 1.5},
        "ref": str(uuid.uuid4()),
    }
    jsonschema.validate(valid, schema)
    for wrong in (
        {**valid, "lines": [{"quantity": 2}]},  # a line without its sku
        {**valid, "carrier": "pigeon"},
        {**valid, "tags": {"gift": "yes"}},
        {k: v for k, v in valid.items() if k != "order_id"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema)


def test_a_pydantic_model_gives_its_own_schema() -> None:
    assert json_schema(PydanticOrder) == PydanticOrder.model_json_schema()


def test_untyped_data_has_no_schema_and_an_unresolvable_type_is_not_an_error() -> None:
    @dataclass
    class Broken:
        ghost: Missing  # type: ignore[name-defined]  # noqa: F821

    assert json_schema(None) is None
    assert json_schema(Broken) is None
    record = DefinitionRecord.of(definition(Broken))
    assert record.data_schema is None and record.data_type is not None
    assert DefinitionRecord.of(definition(None)).data_type is None
