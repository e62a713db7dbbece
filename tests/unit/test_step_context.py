"""The worker builds step contexts without StepContext's __init__ (a hot path): they must
still carry every field, equal to one built the ordinary way."""

from __future__ import annotations

import dataclasses
from typing import Any

from sagakit import Saga, StepContext
from sagakit.definition import Phase
from sagakit.transitions import new_instance
from sagakit.worker.context import step_context as _context


async def act(ctx: StepContext[Any]) -> None:
    return None


def test_a_context_built_by_the_worker_has_every_field() -> None:
    definition: Saga[Any] = (
        Saga("ctx").local("a", act, compensation=act).local("b", act, compensation=act)
    )
    saga = definition.build()
    instance = new_instance(
        saga,
        saga_id="s-1",
        data={"n": 1},
        correlation_id="c-1",
        idempotency_key=None,
        input_digest="",
        now=10.0,
    )
    ctx = _context(instance, saga, "b", Phase.ACTION, 2, "s-1:b:action", 10.0, 5.0)
    names = {f.name for f in dataclasses.fields(StepContext)}
    assert set(vars(ctx)) == names
    expected = StepContext(
        saga_id="s-1",
        saga_type="ctx",
        step="b",
        phase=Phase.ACTION,
        attempt=2,
        idempotency_key="s-1:b:action",
        correlation_id="c-1",
        deadline=15.0,
        data={"n": 1},
        results={},
        input={"n": 1},
        result=None,
        outcome_known=True,
    )
    assert ctx == expected
