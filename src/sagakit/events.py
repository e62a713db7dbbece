"""What goes into decide(): the events that move a saga instance (Semantics 5, 11).

A reply answers one attempt of a step's action or compensation; a timer fires for a timeout, a
retry backoff or the saga's deadline; an operator aborts, retries or resolves by hand (those
three live in :mod:`sagakit.operator_commands`). All are frozen values, so decide() stays a
pure function of its arguments.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sagakit.definition import Phase
from sagakit.encoding import JSON
from sagakit.operator_commands import Abort, Resolve, Retry


class Outcome(enum.StrEnum):
    """What a reply says (Semantics 5)."""

    SUCCESS = "success"
    FAILURE = "failure"  # definite: the participant promises it did nothing
    ERROR = "error"  # no definite answer; retryable unless the reply says otherwise


class TimerKind(enum.StrEnum):
    TIMEOUT = "timeout"
    RETRY = "retry"
    DEADLINE = "deadline"


@dataclass(frozen=True)
class Begin:
    """Start moving a freshly created instance."""


@dataclass(frozen=True, init=False)
class Reply:
    """The answer of a step's action or compensation, remote or local.

    ``generation`` is the step generation the answered command belonged to (Semantics 2): an
    answer of an earlier generation says nothing about the current one.
    """

    step: str
    phase: Phase
    attempt: int
    outcome: Outcome
    result: JSON = None
    error: str | None = None
    retryable: bool = True
    retry_after: float | None = None
    generation: int = 1

    def __init__(
        self,
        step: str,
        phase: Phase,
        attempt: int,
        outcome: Outcome,
        result: JSON = None,
        error: str | None = None,
        retryable: bool = True,
        retry_after: float | None = None,
        generation: int = 1,
    ) -> None:
        # One per step answer: straight into the dict, not field by field via __setattr__.
        self.__dict__.update(
            step=step,
            phase=phase,
            attempt=attempt,
            outcome=outcome,
            result=result,
            error=error,
            retryable=retryable,
            retry_after=retry_after,
            generation=generation,
        )


@dataclass(frozen=True)
class TimerFired:
    kind: TimerKind
    step: str | None = None
    phase: Phase = Phase.ACTION
    attempt: int = 0


Event = Begin | Reply | TimerFired | Abort | Retry | Resolve
