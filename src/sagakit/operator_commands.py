"""Operator commands (Semantics 11): abort, retry and resolve by hand, when each is valid, and
the step generation a retry runs in (Semantics 2).

An operator command is a durable request written to the store and applied by a worker through
decide(), under the rules of :func:`check_command`; clients check the same rules up front, so
an invalid command is refused with the same reason wherever it is caught.
"""

from __future__ import annotations

from dataclasses import dataclass

from sagakit.state import CompensationStatus, SagaInstance, SagaStatus, StepState, StepStatus


@dataclass(frozen=True)
class Abort:
    reason: str
    by: str = "operator"


@dataclass(frozen=True)
class Retry:
    """Give the step the instance is stuck on a fresh attempt budget (and, when the step
    definitely failed, a new generation: see :func:`retry_generation`)."""

    reason: str
    by: str = "operator"


@dataclass(frozen=True)
class Resolve:
    """Declare by hand that what the instance is stuck on is settled."""

    step: str
    reason: str
    by: str = "operator"


OperatorCommand = Abort | Retry | Resolve


def check_command(instance: SagaInstance, command: OperatorCommand) -> str | None:
    """Why ``command`` would be refused in ``instance``'s state, or None if it is valid.

    Clients use this to refuse a command up front; the worker applies the same rules.
    """
    status = instance.status
    if isinstance(command, Abort):
        if status is SagaStatus.COMPENSATING:
            return "the saga is already compensating"
        if status.terminal:
            return f"the saga is already {status.value}"
        if _stuck_compensation(instance) is not None:
            return "the saga is stuck compensating; retry or resolve the compensation instead"
        point = instance.point_of_no_return
        if point is not None:
            return (
                f"step {point!r} is past the point of no return; the saga can only go forward "
                "(retry or resolve instead)"
            )
        return None
    if status is not SagaStatus.STUCK:
        return f"the saga is {status.value}, not stuck"
    if isinstance(command, Resolve) and command.step != instance.stuck_step:
        return f"the saga is stuck on step {instance.stuck_step!r}, not {command.step!r}"
    return None


def retry_generation(step: StepState) -> int:
    """The generation in which an operator's retry (or redrive) runs ``step`` (Semantics 2).

    A step that definitely failed, or was compensated, starts a new generation: its new keys
    let a participant run it afresh, where the old key would answer with the stored failure
    or refuse the action after its compensation. A step whose outcome is unknown (and not
    compensated) keeps its generation and key, so a participant that did it answers with its
    stored reply and nothing is done twice.
    """
    if step.status is StepStatus.FAILED or step.status is StepStatus.COMPENSATED:
        return step.generation + 1
    return step.generation


def command_name(command: OperatorCommand) -> str:
    """The command's name in the history: ``abort``, ``retry`` or ``resolve``."""
    return type(command).__name__.lower()


def _stuck_compensation(instance: SagaInstance) -> str | None:
    for s in instance.steps:
        if s.compensation is not None and s.compensation.status is CompensationStatus.FAILED:
            return s.name
    return None
