"""outcome_of(): the one mapping from an exception raised by step code to its answer.

(The answer table of the same module is checked against decide() and the docs in
test_transitions.py, where the scenarios that reach each state live.)
"""

from __future__ import annotations

import pytest

from sagakit.answers import Answer, outcome_of
from sagakit.errors import EncodingError, StepError, StepFailed
from sagakit.transitions import Outcome


@pytest.mark.parametrize(
    ("exc", "timeout", "answer"),
    [
        (StepFailed("out of stock"), None, Answer(Outcome.FAILURE, "out of stock")),
        (StepFailed(), None, Answer(Outcome.FAILURE, "failed")),
        (StepError("busy"), None, Answer(Outcome.ERROR, "busy")),
        (StepError(""), None, Answer(Outcome.ERROR, "error")),
        (
            StepError("sku discontinued", retryable=False, retry_after=3.0),
            None,
            Answer(Outcome.ERROR, "sku discontinued", retryable=False, retry_after=3.0),
        ),
        (TimeoutError(), 2.5, Answer(Outcome.ERROR, "timed out after 2.5s")),
        (
            TimeoutError("read timed out"),
            None,
            Answer(Outcome.ERROR, "TimeoutError: read timed out", unexpected=True),
        ),
        (
            EncodingError("result of a: not JSON-encodable"),
            None,
            Answer(Outcome.ERROR, "result of a: not JSON-encodable", retryable=False),
        ),
        (
            RuntimeError("disk on fire"),
            None,
            Answer(Outcome.ERROR, "RuntimeError: disk on fire", unexpected=True),
        ),
        (KeyError("sku"), 1.0, Answer(Outcome.ERROR, "KeyError: 'sku'", unexpected=True)),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_outcome_of(exc: Exception, timeout: float | None, answer: Answer) -> None:
    assert outcome_of(exc, timeout=timeout) == answer


def test_a_step_error_is_recorded_by_its_message_wherever_it_runs() -> None:
    """The user's reason, as they wrote it: no type name in front (local steps and
    participants both go through outcome_of)."""
    assert outcome_of(StepError("x")).error == "x"
    assert outcome_of(StepFailed("x")).error == "x"
    assert outcome_of(ValueError("x")).error == "ValueError: x"


def test_a_subclass_of_a_step_outcome_keeps_its_meaning() -> None:
    class Declined(StepFailed):
        pass

    class Throttled(StepError):
        pass

    assert outcome_of(Declined("card declined")) == Answer(Outcome.FAILURE, "card declined")
    throttled = outcome_of(Throttled("slow down", retry_after=5.0))
    assert (throttled.error, throttled.retry_after) == ("slow down", 5.0)
