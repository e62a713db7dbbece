"""Step timeouts: positive numbers, infinity included; zero, negatives and NaN are refused
when the definition is built."""

from __future__ import annotations

import math
from typing import Any

import pytest

from sagakit import Saga, StepContext
from sagakit.errors import DefinitionError


async def act(ctx: StepContext[Any]) -> None:
    return None


@pytest.mark.parametrize("timeout", [0.0, -1.0, math.nan])
@pytest.mark.parametrize("which", ["timeout", "compensation_timeout"])
def test_a_timeout_that_is_not_positive_is_refused(timeout: float, which: str) -> None:
    saga: Saga[Any] = Saga("bad")
    options: dict[str, Any] = {which: timeout}
    saga.local("step", act, compensation=act, **options)
    with pytest.raises(DefinitionError, match="timeouts must be positive"):
        saga.build()


def test_an_infinite_timeout_is_allowed() -> None:
    saga: Saga[Any] = Saga("patient")
    saga.local("step", act, compensation=act, timeout=math.inf, compensation_timeout=math.inf)
    assert saga.build().steps[0].timeout == math.inf
