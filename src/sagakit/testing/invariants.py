"""Check one saga instance, and its history, against the saga invariants of PRODUCT.md.

:func:`check_invariants` judges what can be judged from a single instance: its current state,
its definition and its full history. It returns a list of violations, each a sentence naming
the step and the rule; an empty list means the instance is consistent. It is pure (no I/O),
so a test can call it after every transition::

    violations = check_invariants(instance, definition, history)
    assert not violations, violations

What it checks:

* the instance runs this definition (same fingerprint, same steps);
* ``completed``: every step is done or resolved and nothing was ever compensated;
* ``failed``: every compensatable step that completed or has an unknown outcome is
  compensated (or resolved by hand), nothing is in flight, nothing is past the point of no
  return;
* ``stuck``: the stuck step and the reason are set, the step is really stuck (its compensation
  failed, or it is a pivot or retriable step that failed or has an unknown outcome) and nothing
  is in flight;
* step states agree with their compensation states; steps run in order, one at a time; a
  compensation never runs while an action is in flight; attempts stay within the policy;
* from the history: compensations in strictly reverse step order (each dispatched only after
  every later step's compensation finished), a compensation only for a step whose action was
  sent and did not fail definitely, no action sent after compensation began, no compensation,
  abort or failure past the point of no return, an action result and a compensation applied at
  most once, nothing happening after the instance completed or failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sagakit.definition import Phase, SagaDefinition, StepKind
from sagakit.state import (
    CompensationStatus,
    HistoryEntry,
    HistoryKind,
    SagaInstance,
    SagaStatus,
    StepState,
    StepStatus,
)

__all__ = ["check_invariants"]

_IN_FLIGHT = (StepStatus.RUNNING, StepStatus.RETRYING)
_COMP_IN_FLIGHT = (CompensationStatus.RUNNING, CompensationStatus.RETRYING)
_COMP_OPEN = (*_COMP_IN_FLIGHT, CompensationStatus.FAILED)
_COMP_FINISHED = (CompensationStatus.DONE, CompensationStatus.RESOLVED)
_FORWARD_DONE = (
    StepStatus.DONE,
    StepStatus.RESOLVED,
    StepStatus.COMPENSATING,
    StepStatus.COMPENSATED,
)
_AFTER_TERMINAL_OK = (
    HistoryKind.REFUSED,
    HistoryKind.LATE_REPLY,
    HistoryKind.DUPLICATE_REPLY,
)


def check_invariants(
    instance: SagaInstance,
    definition: SagaDefinition,
    history: Sequence[HistoryEntry],
) -> list[str]:
    """The invariants ``instance`` (with its full ``history``) breaks; empty when none."""
    violations = _check_shape(instance, definition)
    if violations:
        return violations
    violations += _check_status(instance, definition)
    violations += _check_steps(instance, definition)
    violations += _HistoryCheck(instance, definition).run(history)
    return violations


# -- the instance ---------------------------------------------------------------------------


def _check_shape(instance: SagaInstance, definition: SagaDefinition) -> list[str]:
    out: list[str] = []
    if instance.fingerprint != definition.fingerprint:
        out.append(
            f"instance runs fingerprint {instance.fingerprint}, the definition has "
            f"{definition.fingerprint}"
        )
    names = [s.name for s in instance.steps]
    expected = [s.name for s in definition.steps]
    if names != expected:
        out.append(f"instance steps {names} differ from the definition's {expected}")
    return out


def _needs_compensation(state: StepState, kind: StepKind) -> bool:
    """A compensatable step that completed, or whose outcome is unknown, and is not undone."""
    return kind is StepKind.COMPENSATABLE and state.status in (StepStatus.DONE, StepStatus.UNKNOWN)


def _past_no_return(instance: SagaInstance, definition: SagaDefinition) -> str | None:
    for state, step in zip(instance.steps, definition.steps, strict=True):
        if step.kind is StepKind.PIVOT and state.status in (StepStatus.DONE, StepStatus.RESOLVED):
            return state.name
        if step.kind is StepKind.RETRIABLE and state.status is not StepStatus.PENDING:
            return state.name
    return None


def _check_status(instance: SagaInstance, definition: SagaDefinition) -> list[str]:
    out: list[str] = []
    status = instance.status
    pairs = list(zip(instance.steps, definition.steps, strict=True))
    in_flight = [
        s.name
        for s in instance.steps
        if s.status in _IN_FLIGHT
        or (s.compensation is not None and s.compensation.status in _COMP_IN_FLIGHT)
    ]
    compensated = [s.name for s in instance.steps if s.compensation is not None]

    if status is SagaStatus.STARTED:
        started = [s.name for s in instance.steps if s.status is not StepStatus.PENDING]
        if started:
            out.append(f"started, yet steps {started} have begun")
    elif status is SagaStatus.PENDING:
        if compensated:
            out.append(f"pending, yet steps {compensated} have compensations")
    elif status is SagaStatus.COMPENSATING:
        if not instance.reason:
            out.append("compensating without a reason")
    elif status is SagaStatus.COMPLETED:
        unfinished = [
            s.name for s in instance.steps if s.status not in (StepStatus.DONE, StepStatus.RESOLVED)
        ]
        if unfinished:
            out.append(f"completed, yet steps {unfinished} are not done or resolved")
        if compensated:
            out.append(f"completed, yet steps {compensated} were compensated")
    elif status is SagaStatus.FAILED:
        if not instance.reason:
            out.append("failed without a reason")
        for state, step in pairs:
            if _needs_compensation(state, step.kind):
                out.append(
                    f"failed, yet step {state.name!r} ({state.status.value}) was not compensated"
                )
            comp = state.compensation
            if comp is not None and comp.status not in _COMP_FINISHED:
                out.append(
                    f"failed, yet the compensation of step {state.name!r} is {comp.status.value}"
                )
        point = _past_no_return(instance, definition)
        if point is not None:
            out.append(f"failed past the point of no return (step {point!r})")
    elif status is SagaStatus.STUCK:
        out += _check_stuck(instance, definition)

    if status in (SagaStatus.COMPLETED, SagaStatus.FAILED, SagaStatus.STUCK) and in_flight:
        out.append(f"{status.value}, yet steps {in_flight} are still in flight")
    if status is not SagaStatus.STUCK and (
        instance.stuck_step is not None or instance.stuck_reason is not None
    ):
        out.append(f"{status.value}, yet stuck_step/stuck_reason are set")
    if instance.point_of_no_return is not None:
        try:
            kind = definition.step(instance.point_of_no_return).kind
        except KeyError:
            out.append(f"point of no return names unknown step {instance.point_of_no_return!r}")
        else:
            if kind is StepKind.COMPENSATABLE:
                out.append(
                    f"point of no return is compensatable step {instance.point_of_no_return!r}"
                )
        if status in (SagaStatus.COMPENSATING, SagaStatus.FAILED):
            out.append(
                f"{status.value} after the point of no return ({instance.point_of_no_return!r})"
            )
    return out


def _check_stuck(instance: SagaInstance, definition: SagaDefinition) -> list[str]:
    out: list[str] = []
    if not instance.stuck_reason:
        out.append("stuck without a reason")
    name = instance.stuck_step
    if name is None:
        out.append("stuck without a step")
        return out
    try:
        index = instance.index(name)
    except KeyError:
        out.append(f"stuck on unknown step {name!r}")
        return out
    state = instance.steps[index]
    kind = definition.steps[index].kind
    comp = state.compensation
    stuck_backward = comp is not None and comp.status is CompensationStatus.FAILED
    stuck_forward = kind is not StepKind.COMPENSATABLE and state.status in (
        StepStatus.FAILED,
        StepStatus.UNKNOWN,
    )
    if not (stuck_backward or stuck_forward):
        out.append(f"stuck on step {name!r}, which is {state.status.value} and not stuck")
    return out


def _check_steps(instance: SagaInstance, definition: SagaDefinition) -> list[str]:
    out: list[str] = []
    pairs = list(zip(instance.steps, definition.steps, strict=True))
    actions_in_flight = [s.name for s in instance.steps if s.status in _IN_FLIGHT]
    comps_open = [
        s.name
        for s in instance.steps
        if s.compensation is not None and s.compensation.status in _COMP_OPEN
    ]
    if len(actions_in_flight) > 1:
        out.append(f"several actions in flight at once: {actions_in_flight}")
    if len(comps_open) > 1:
        out.append(f"several compensations open at once: {comps_open}")
    if actions_in_flight and comps_open:
        out.append(
            f"compensations {comps_open} run while actions {actions_in_flight} are in flight"
        )

    for i, (state, step) in enumerate(pairs):
        at = f"step {state.name!r}"
        # Order: a step begins only after every earlier step went through.
        if state.status is not StepStatus.PENDING:
            behind = [s.name for s in instance.steps[:i] if s.status not in _FORWARD_DONE]
            if behind:
                out.append(f"{at} began while earlier steps {behind} had not gone through")
        # Attempts.
        if state.status is StepStatus.PENDING and state.attempts != 0:
            out.append(f"{at} is pending after {state.attempts} attempts")
        if state.status is not StepStatus.PENDING and state.attempts < 1:
            out.append(f"{at} is {state.status.value} without an attempt")
        if not 0 <= state.budget_from <= state.attempts:
            out.append(f"{at} has budget_from {state.budget_from} of {state.attempts} attempts")
        if state.attempts - state.budget_from > step.retry.max_attempts:
            out.append(
                f"{at} used {state.attempts - state.budget_from} attempts, its policy allows "
                f"{step.retry.max_attempts}"
            )
        # Outcome knowledge.
        if state.status is StepStatus.DONE and not state.outcome_known:
            out.append(f"{at} is done but its outcome is marked unknown")
        if state.status is StepStatus.UNKNOWN and state.outcome_known:
            out.append(f"{at} has an unknown outcome but is marked known")
        # Compensation state agrees with the step state.
        comp = state.compensation
        if comp is None:
            if state.status in (StepStatus.COMPENSATING, StepStatus.COMPENSATED):
                out.append(f"{at} is {state.status.value} without a compensation")
            continue
        if step.kind is not StepKind.COMPENSATABLE:
            out.append(f"{at} is {step.kind.value} and was compensated")
        if state.attempts < 1:
            out.append(f"{at} was compensated but its action was never sent")
        expected = {
            CompensationStatus.RUNNING: StepStatus.COMPENSATING,
            CompensationStatus.RETRYING: StepStatus.COMPENSATING,
            CompensationStatus.FAILED: StepStatus.COMPENSATING,
            CompensationStatus.DONE: StepStatus.COMPENSATED,
            CompensationStatus.RESOLVED: StepStatus.RESOLVED,
        }[comp.status]
        if state.status is not expected:
            out.append(
                f"{at} is {state.status.value} while its compensation is {comp.status.value}"
            )
        if comp.attempts < 1:
            out.append(f"{at} has a compensation without an attempt")
        if not 0 <= comp.budget_from <= comp.attempts:
            out.append(f"{at} compensation has budget_from {comp.budget_from} of {comp.attempts}")
        if comp.attempts - comp.budget_from > step.compensation_retry.max_attempts:
            out.append(
                f"{at} compensation used {comp.attempts - comp.budget_from} attempts, its "
                f"policy allows {step.compensation_retry.max_attempts}"
            )
        # Strict reverse order, as it shows in the state: every later step that needed
        # compensation is compensated before this one began.
        for later, later_step in pairs[i + 1 :]:
            if _needs_compensation(later, later_step.kind):
                out.append(
                    f"{at} is being compensated while later step {later.name!r} "
                    f"({later.status.value}) is not"
                )
            elif later.compensation is not None and later.compensation.status not in _COMP_FINISHED:
                out.append(
                    f"{at} is being compensated before the compensation of later step "
                    f"{later.name!r} finished"
                )
    return out


# -- the history ----------------------------------------------------------------------------


@dataclass
class _Replay:
    action_sent: bool = False
    action_failed: bool = False
    action_successes: int = 0
    comp_dispatches: list[int] = field(default_factory=list)
    comp_finished_at: int | None = None
    comp_successes: int = 0


@dataclass
class _HistoryCheck:
    instance: SagaInstance
    definition: SagaDefinition
    out: list[str] = field(default_factory=list)

    def run(self, history: Sequence[HistoryEntry]) -> list[str]:
        steps = {s.name: _Replay() for s in self.definition.steps}
        first_compensation: int | None = None
        past_no_return: str | None = None
        terminal: str | None = None
        for p, entry in enumerate(history):
            kind = entry.kind
            if terminal is not None and kind not in _AFTER_TERMINAL_OK:
                self.out.append(
                    f"history #{p}: {kind.value} after the saga was {terminal}"
                    + (f" (step {entry.step!r})" if entry.step else "")
                )
            if kind is HistoryKind.STATUS:
                to = entry.detail.get("to")
                if to in (SagaStatus.COMPLETED.value, SagaStatus.FAILED.value):
                    terminal = str(to)
                if to == SagaStatus.FAILED.value and past_no_return is not None:
                    self.out.append(
                        f"history #{p}: failed past the point of no return ({past_no_return!r})"
                    )
                continue
            if kind is HistoryKind.OPERATOR:
                command = entry.detail.get("command")
                if command == "abort" and past_no_return is not None:
                    self.out.append(
                        f"history #{p}: abort accepted past the point of no return "
                        f"({past_no_return!r})"
                    )
                if command == "resolve" and entry.step in steps:
                    replay = steps[entry.step]
                    if replay.comp_dispatches and replay.comp_finished_at is None:
                        replay.comp_finished_at = p
                    elif self._kind(entry.step) is StepKind.PIVOT:
                        past_no_return = past_no_return or entry.step
                continue
            if kind is HistoryKind.DEADLINE:
                if entry.detail.get("action") == "compensate" and past_no_return is not None:
                    self.out.append(
                        f"history #{p}: a passed deadline compensated past the point of no "
                        f"return ({past_no_return!r})"
                    )
                continue
            if entry.step is None or entry.step not in steps:
                if kind in (HistoryKind.DISPATCHED, HistoryKind.REPLY):
                    self.out.append(f"history #{p}: {kind.value} for unknown step {entry.step!r}")
                continue
            name = entry.step
            replay = steps[name]
            action = entry.phase == Phase.ACTION.value
            if kind is HistoryKind.DISPATCHED and action:
                if first_compensation is not None:
                    self.out.append(
                        f"history #{p}: step {name!r} dispatched after compensation began "
                        f"(history #{first_compensation})"
                    )
                replay.action_sent = True
                if self._kind(name) is StepKind.RETRIABLE:
                    past_no_return = past_no_return or name
            elif kind is HistoryKind.DISPATCHED:
                self._compensation_dispatched(p, name, steps, past_no_return)
                if first_compensation is None:
                    first_compensation = p
            elif kind is HistoryKind.REPLY:
                outcome = entry.detail.get("outcome")
                if action and outcome == "success":
                    replay.action_successes += 1
                    if replay.action_successes > 1:
                        self.out.append(f"history #{p}: step {name!r} succeeded twice")
                    if self._kind(name) is StepKind.PIVOT:
                        past_no_return = past_no_return or name
                elif action and outcome == "failure":
                    replay.action_failed = True
                elif not action and outcome == "success":
                    replay.comp_successes += 1
                    if replay.comp_successes > 1:
                        self.out.append(
                            f"history #{p}: the compensation of step {name!r} was applied twice"
                        )
                    if replay.comp_finished_at is None:
                        replay.comp_finished_at = p
        if self.instance.status is SagaStatus.COMPLETED and first_compensation is not None:
            self.out.append(
                f"completed, yet a compensation was dispatched (history #{first_compensation})"
            )
        return self.out

    def _kind(self, name: str) -> StepKind:
        return self.definition.step(name).kind

    def _compensation_dispatched(
        self, p: int, name: str, steps: dict[str, _Replay], past_no_return: str | None
    ) -> None:
        replay = steps[name]
        at = f"history #{p}: compensation of step {name!r}"
        if self._kind(name) is not StepKind.COMPENSATABLE:
            self.out.append(f"{at} dispatched, but the step is {self._kind(name).value}")
        if not replay.action_sent:
            self.out.append(f"{at} dispatched, but its action was never sent")
        if replay.action_failed:
            self.out.append(f"{at} dispatched, but its action failed definitely")
        if replay.comp_finished_at is not None:
            self.out.append(f"{at} dispatched again after it finished")
        if past_no_return is not None:
            self.out.append(f"{at} dispatched past the point of no return ({past_no_return!r})")
        index = self.definition.index(name)
        for j, state in enumerate(self.instance.steps):
            other = steps[state.name]
            if j < index and other.comp_dispatches and other.comp_dispatches[0] < p:
                self.out.append(
                    f"{at} dispatched after that of earlier step {state.name!r} "
                    "(not in reverse order)"
                )
            if j <= index:
                continue
            kind = self.definition.steps[j].kind
            needed = (
                bool(other.comp_dispatches)
                or state.compensation is not None
                or _needs_compensation(state, kind)
                # sent and not failed definitely: it completed or its outcome is unknown
                or (
                    kind is StepKind.COMPENSATABLE and other.action_sent and not other.action_failed
                )
            )
            if needed and (other.comp_finished_at is None or other.comp_finished_at > p):
                self.out.append(
                    f"{at} dispatched before the compensation of later step {state.name!r} finished"
                )
        replay.comp_dispatches.append(p)
