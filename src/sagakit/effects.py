"""What comes out of decide(): the effects the worker carries out after its commit, and the
decision that holds them with the next instance and its history entries."""

from __future__ import annotations

from dataclasses import dataclass

from sagakit.definition import Phase
from sagakit.events import TimerKind
from sagakit.state import HistoryEntry, SagaInstance


@dataclass(frozen=True, init=False)
class Dispatch:
    """Send a step's action or compensation: a command message, or a local run."""

    step: str
    phase: Phase
    attempt: int
    idempotency_key: str
    deadline: float
    #: The step's generation (Semantics 2): its answer must carry the same one.
    generation: int = 1

    def __init__(
        self,
        step: str,
        phase: Phase,
        attempt: int,
        idempotency_key: str,
        deadline: float,
        generation: int = 1,
    ) -> None:
        # One per step dispatched: straight into the dict, not field by field.
        self.__dict__.update(
            step=step,
            phase=phase,
            attempt=attempt,
            idempotency_key=idempotency_key,
            deadline=deadline,
            generation=generation,
        )


@dataclass(frozen=True)
class SetTimer:
    name: str
    kind: TimerKind
    due_at: float
    step: str | None = None
    phase: Phase = Phase.ACTION
    attempt: int = 0


@dataclass(frozen=True)
class CancelTimers:
    """Cancel the named timers; ``names=None`` cancels every timer of the instance."""

    names: tuple[str, ...] | None


Effect = Dispatch | SetTimer | CancelTimers


@dataclass(frozen=True, init=False)
class Decision:
    """The outcome of one event.

    ``rejected`` is set when the event cannot apply to this instance at all (a reply for a
    step that does not exist or was never dispatched): the message goes to the dead-letter
    place and nothing is written. ``refused`` is set when an operator command is invalid in
    the instance's state: it is recorded in the history and the instance is unchanged.
    """

    instance: SagaInstance
    effects: tuple[Effect, ...] = ()
    history: tuple[HistoryEntry, ...] = ()
    refused: str | None = None
    rejected: str | None = None

    def __init__(
        self,
        instance: SagaInstance,
        effects: tuple[Effect, ...] = (),
        history: tuple[HistoryEntry, ...] = (),
        refused: str | None = None,
        rejected: str | None = None,
    ) -> None:
        # One per event: straight into the dict, not field by field through __setattr__.
        self.__dict__.update(
            instance=instance, effects=effects, history=history, refused=refused, rejected=rejected
        )

    @property
    def changed(self) -> bool:
        return bool(self.history) or bool(self.effects)


def idempotency_key(saga_id: str, step: str, phase: Phase, generation: int = 1) -> str:
    """The key of a step's action or compensation: the same across every retry (Semantics 2).

    An operator's retry of a step that definitely failed (or, with a redrive, was
    compensated) starts a new *generation* of the step, with keys of its own; generation 1
    keeps the key without a suffix, as protocol 1.0 wrote it.

    >>> idempotency_key("s1", "pay", Phase.ACTION), idempotency_key("s1", "pay", Phase.ACTION, 2)
    ('s1:pay:action', 's1:pay:action:g2')
    """
    if generation == 1:
        return f"{saga_id}:{step}:{phase.value}"
    return f"{saga_id}:{step}:{phase.value}:g{generation}"


def generation_of(key: str) -> int:
    """The generation an idempotency key names: its ``:g{N}`` suffix, or 1 without one.

    A 1.0 participant does not copy a reply's ``generation`` field, but it does copy the
    command's key, so the key tells which generation its reply answers.

    >>> generation_of("s1:pay:action"), generation_of("s1:pay:compensation:g3")
    (1, 3)
    """
    tail = key[key.rfind(":") + 1 :]
    if len(tail) > 1 and tail[0] == "g" and tail[1:].isascii() and tail[1:].isdigit():
        return int(tail[1:])
    return 1


def timer_name(kind: TimerKind, step: str | None = None, phase: Phase = Phase.ACTION) -> str:
    if kind is TimerKind.DEADLINE:
        return "deadline"
    return f"{kind.value}:{step}:{phase.value}"
