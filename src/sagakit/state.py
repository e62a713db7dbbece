"""The persisted state of a saga instance, as immutable values (Semantics 12).

Saga statuses::

    started ──> pending ──> completed
                  │  └────> stuck            (forward recovery exhausted; an operator acts)
                  v
             compensating ──> failed          (every completed step compensated)
                  └─────────> stuck           (a compensation exhausted its policy)

Step statuses: pending, running, retrying (waiting for a backoff timer), done, failed (a
definite failure: nothing was done), unknown (no definite answer), compensating, compensated,
resolved (by an operator, by hand).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TypeVar, cast

from sagakit.encoding import JSON

_V = TypeVar("_V")


def evolve(value: _V, **changes: object) -> _V:
    """A copy of the frozen dataclass ``value`` with ``changes`` (a fast ``replace``).

    ``dataclasses.replace`` re-runs ``__init__`` with every field; on the hot path of
    decide() that was the largest single cost, so values are copied field-wise instead.
    """
    new = object.__new__(type(value))
    state = new.__dict__
    state.update(value.__dict__)
    update_fields(state, changes, type(value).__name__)
    return new


def update_fields(fields: dict[str, object], changes: dict[str, object], kind: str) -> None:
    """Write ``changes`` into a value's ``fields`` (its ``__dict__``), refusing a name that
    is not one of its fields."""
    if not changes.keys() <= fields.keys():  # a set operation in C, not a loop in Python
        unknown = sorted(changes.keys() - fields.keys())
        raise TypeError(f"{kind} has no field {unknown[0]!r}")
    fields.update(changes)


class SagaStatus(enum.StrEnum):
    """The status of a saga instance (Semantics 12)."""

    STARTED = "started"
    PENDING = "pending"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    FAILED = "failed"
    STUCK = "stuck"

    @property
    def terminal(self) -> bool:
        """Completed and failed are final; stuck waits for an operator."""
        return self in (SagaStatus.COMPLETED, SagaStatus.FAILED)

    @property
    def settled(self) -> bool:
        """Nothing more happens without an operator: completed, failed or stuck."""
        return self in (SagaStatus.COMPLETED, SagaStatus.FAILED, SagaStatus.STUCK)


class StepStatus(enum.StrEnum):
    """The status of one step of an instance."""

    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    DONE = "done"
    FAILED = "failed"
    UNKNOWN = "unknown"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    RESOLVED = "resolved"


class CompensationStatus(enum.StrEnum):
    """The status of a step's compensation, once it has begun."""

    RUNNING = "running"
    RETRYING = "retrying"
    DONE = "done"
    FAILED = "failed"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class CompensationState:
    status: CompensationStatus
    attempts: int = 0
    budget_from: int = 0
    error: str | None = None


@dataclass(frozen=True, init=False)
class StepState:
    """One step of one instance.

    ``attempts`` counts action attempts dispatched; ``budget_from`` is the attempt count when
    an operator last granted a fresh budget (so the policy allows ``max_attempts`` more).
    ``outcome_known`` is False once the action ended without a definite answer.
    ``generation`` counts the step's generations (Semantics 2): an operator's retry of a step
    that definitely failed (or was compensated) starts a new one, whose action and
    compensation have idempotency keys of their own.
    """

    name: str
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    budget_from: int = 0
    result: JSON = None
    error: str | None = None
    outcome_known: bool = True
    compensation: CompensationState | None = None
    generation: int = 1

    def __init__(
        self,
        name: str,
        status: StepStatus = StepStatus.PENDING,
        attempts: int = 0,
        budget_from: int = 0,
        result: JSON = None,
        error: str | None = None,
        outcome_known: bool = True,
        compensation: CompensationState | None = None,
        generation: int = 1,
    ) -> None:
        # Made for every step of every new or loaded instance: straight into the dict.
        self.__dict__.update(
            name=name,
            status=status,
            attempts=attempts,
            budget_from=budget_from,
            result=result,
            error=error,
            outcome_known=outcome_known,
            compensation=compensation,
            generation=generation,
        )


class HistoryKind(enum.StrEnum):
    CREATED = "created"
    STATUS = "status"
    DISPATCHED = "dispatched"
    REPLY = "reply"
    LATE_REPLY = "late_reply"
    DUPLICATE_REPLY = "duplicate_reply"
    TIMED_OUT = "timed_out"
    RETRY_SCHEDULED = "retry_scheduled"
    DEADLINE = "deadline"
    OPERATOR = "operator"
    REFUSED = "refused"
    #: Written by a claim: ``detail`` says from which worker (``from``, None when the instance
    #: had no owner), to which (``to``) and why (``reason``, one of :data:`TAKEOVER_REASONS`).
    TAKEOVER = "takeover"


#: Why a worker took an instance over: its owner's lease ran out (it died or hung), its owner
#: stopped cleanly and released it, or it had no owner at all.
TAKEOVER_REASONS = ("lease expired", "worker stopped", "no owner")


@dataclass(frozen=True, init=False)
class HistoryEntry:
    at: float
    kind: HistoryKind
    step: str | None = None
    phase: str | None = None
    attempt: int | None = None
    detail: dict[str, JSON] = field(default_factory=dict)

    def __init__(
        self,
        at: float,
        kind: HistoryKind,
        step: str | None = None,
        phase: str | None = None,
        attempt: int | None = None,
        detail: dict[str, JSON] | None = None,
    ) -> None:
        # Written straight into the instance's dict: a frozen dataclass's own __init__ sets
        # each field through object.__setattr__, and two entries are made per transition.
        self.__dict__.update(
            at=at,
            kind=kind,
            step=step,
            phase=phase,
            attempt=attempt,
            detail={} if detail is None else detail,
        )

    def to_json(self) -> dict[str, JSON]:
        return {
            "at": self.at,
            "kind": self.kind.value,
            "step": self.step,
            "phase": self.phase,
            "attempt": self.attempt,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class SagaInstance:
    """One saga instance. ``revision`` increases with every committed transition."""

    saga_id: str
    saga_type: str
    version: int
    fingerprint: str
    status: SagaStatus
    data: JSON
    steps: tuple[StepState, ...]
    correlation_id: str
    created_at: float
    updated_at: float
    idempotency_key: str | None = None
    input_digest: str = ""
    deadline_at: float | None = None
    deadline_passed: bool = False
    #: Why the saga turned back (``step 'x' failed: …``, ``aborted: …``, ``deadline passed``),
    #: kept while it compensates, is stuck on a compensation, and once it has failed; or the
    #: note that its pivot succeeded while it was stopping. :attr:`reason` is what to show.
    failure_reason: str | None = None
    stuck_reason: str | None = None
    stuck_step: str | None = None
    point_of_no_return: str | None = None
    revision: int = 0
    #: The worker that advances this instance (runtime metadata; decide() ignores it).
    owner: str | None = None

    @property
    def reason(self) -> str | None:
        """Why the instance has its status: why it is stuck (:attr:`stuck_reason`), or why it
        failed or is compensating (:attr:`failure_reason`); None for a saga going forward."""
        return self.stuck_reason if self.status is SagaStatus.STUCK else self.failure_reason

    @property
    def status_reason(self) -> str | None:
        """The same as :attr:`reason` (its earlier name)."""
        return self.reason

    def step(self, name: str) -> StepState:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def index(self, name: str) -> int:
        for i, step in enumerate(self.steps):
            if step.name == name:
                return i
        raise KeyError(name)

    def results(self) -> dict[str, JSON]:
        """Results of the steps that are done (or resolved by hand), by step name."""
        return {
            s.name: s.result
            for s in self.steps
            if s.status in (StepStatus.DONE, StepStatus.RESOLVED)
        }

    # -- encoding: the row in the store ---------------------------------------------------

    def steps_to_json(self) -> list[JSON]:
        # Statuses go in as the enum members: they are str subclasses, which JSON encoders
        # write as their value without a call to the (Python-level) .value property.
        # A step's generation is written only from generation 2 on: a step of generation 1
        # is the row it always was, so an older sagakit still reads it.
        out: list[JSON] = []
        for s in self.steps:
            c = s.compensation
            out.append(
                [
                    s.name,
                    s.status,
                    s.attempts,
                    s.budget_from,
                    s.result,
                    s.error,
                    s.outcome_known,
                    None if c is None else [c.status, c.attempts, c.budget_from, c.error],
                ]
            )
            if s.generation != 1:
                cast(list[JSON], out[-1]).append(s.generation)
        return out

    @staticmethod
    def steps_from_json(value: JSON) -> tuple[StepState, ...]:
        steps = []
        for raw in cast(list[list[JSON]], value):
            name, status, attempts, budget, result, error, known, comp = raw[:8]
            generation = cast(int, raw[8]) if len(raw) > 8 else 1
            compensation = None
            if comp is not None:
                cs, ca, cb, ce = cast(list[JSON], comp)
                compensation = CompensationState(
                    CompensationStatus(cast(str, cs)),
                    cast(int, ca),
                    cast(int, cb),
                    cast("str | None", ce),
                )
            steps.append(
                StepState(
                    name=cast(str, name),
                    status=StepStatus(cast(str, status)),
                    attempts=cast(int, attempts),
                    budget_from=cast(int, budget),
                    result=result,
                    error=cast("str | None", error),
                    outcome_known=bool(known),
                    compensation=compensation,
                    generation=generation,
                )
            )
        return tuple(steps)
