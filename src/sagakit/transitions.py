"""decide(): the pure state machine of an orchestrated saga.

``decide(instance, event, definition, now)`` returns the next instance, the effects to carry
out (dispatch a step, set or cancel a timer) and the history entries to record. It does no
I/O, reads no clock and draws no random number: everything it needs is in its arguments, so
tests drive it exhaustively. The worker commits the new instance, its history, the messages
its dispatches produce and its timers in one transaction, and only then carries the effects
out.

The rules are those of the Semantics in PRODUCT.md. Every reply is classified by the answer
table of :mod:`sagakit.answers` (rejected, late, duplicate or apply), and one handler applies
it to a step's action and to its compensation alike. The events, effects and operator commands
live in modules of their own and are re-exported here.
"""

from __future__ import annotations

import math

from sagakit.answers import RECORDED_AS, RETRYING, RUNNING, Handling, PhaseState, classify
from sagakit.definition import Handler, Phase, Remote, SagaDefinition, StepKind
from sagakit.draft import InstanceDraft
from sagakit.effects import (
    CancelTimers,
    Decision,
    Dispatch,
    Effect,
    SetTimer,
    idempotency_key,
    timer_name,
)
from sagakit.encoding import JSON
from sagakit.events import Begin, Event, Outcome, Reply, TimerFired, TimerKind
from sagakit.operator_commands import (
    Abort,
    OperatorCommand,
    Resolve,
    Retry,
    check_command,
    command_name,
    retry_generation,
)
from sagakit.starts import new_instance
from sagakit.state import (
    CompensationState,
    CompensationStatus,
    HistoryKind,
    SagaInstance,
    SagaStatus,
    StepStatus,
    evolve,
)


def decide(
    instance: SagaInstance, event: Event, definition: SagaDefinition, now: float
) -> Decision:
    """Apply ``event`` to ``instance`` under ``definition`` at time ``now``."""
    if instance.fingerprint != definition.fingerprint:
        return Decision(
            instance,
            rejected=(
                f"instance {instance.saga_id} runs definition {instance.saga_type} "
                f"v{instance.version} ({instance.fingerprint}); this worker has "
                f"v{definition.version} ({definition.fingerprint})"
            ),
        )
    return _Decider(instance, definition, now).apply(event)


# -- the machine --------------------------------------------------------------------------


class _Decider(InstanceDraft):
    __slots__ = ("definition",)

    def __init__(self, inst: SagaInstance, definition: SagaDefinition, now: float) -> None:
        super().__init__(inst, now)
        self.definition = definition

    # -- entry point ----------------------------------------------------------------------

    def apply(self, event: Event) -> Decision:
        original = self.inst
        if isinstance(event, Reply):
            rejected = self._reply(event)
            if rejected:
                return Decision(original, rejected=rejected)
        elif isinstance(event, Begin):
            self._begin()
        elif isinstance(event, TimerFired):
            rejected = self._timer(event)
            if rejected:
                return Decision(original, rejected=rejected)
        else:
            refused = self._operator(event)
            if refused:  # recorded, and nothing else changes
                detail: dict[str, JSON] = {
                    "command": command_name(event),
                    "reason": event.reason,
                    "by": event.by,
                    "error": refused,
                }
                self._record(HistoryKind.REFUSED, detail=detail)
                return Decision(
                    evolve(original, updated_at=self.now),
                    history=tuple(self.history),
                    refused=refused,
                )
        if self.history or self.effects:
            self._set(updated_at=self.now)
            if self.inst.point_of_no_return is None and self.definition.has_point_of_no_return:
                self._set(point_of_no_return=self._past_no_return())
        return Decision(self._freeze(), tuple(self.effects), tuple(self.history))

    def _kind(self, index: int) -> StepKind:
        return self.definition.steps[index].kind

    def _progress(self, index: int, phase: Phase) -> tuple[PhaseState, int, int]:
        """The state of a step's action or compensation: its status (None for a compensation
        not started), the attempts sent and the attempt count its budget starts from."""
        state = self.inst.steps[index]
        if phase is Phase.ACTION:
            return state.status, state.attempts, state.budget_from
        comp = state.compensation
        if comp is None:
            return None, 0, 0
        return comp.status, comp.attempts, comp.budget_from

    def _set_progress(self, index: int, phase: Phase, **changes: object) -> None:
        if phase is Phase.ACTION:
            self._set_step(index, **changes)
            return
        comp = self.inst.steps[index].compensation
        assert comp is not None
        self._set_step(index, compensation=evolve(comp, **changes))

    def _may_proceed(self, phase: Phase) -> bool:
        # An action is sent again only while the saga goes forward; a compensation whenever
        # it is due.
        return phase is Phase.COMPENSATION or self.inst.status is SagaStatus.PENDING

    def _cancel(self, index: int, phase: Phase) -> None:
        """Cancel the timers the step's phase can have in its current state (none for a local
        step that is running: the worker bounds it, no timer row was written)."""
        status = self._progress(index, phase)[0]
        step = self.definition.steps[index]
        names: list[str] = []
        if status is RUNNING[phase] and step.remote_for(phase):
            names.append(timer_name(TimerKind.TIMEOUT, step.name, phase))
        if status is RETRYING[phase]:
            names.append(timer_name(TimerKind.RETRY, step.name, phase))
        if names:
            self.effects.append(CancelTimers(tuple(names)))

    def _past_no_return(self) -> str | None:
        for i, s in enumerate(self.inst.steps):
            kind = self._kind(i)
            if kind is StepKind.PIVOT and s.status in (StepStatus.DONE, StepStatus.RESOLVED):
                return s.name
            if kind is StepKind.RETRIABLE and s.status is not StepStatus.PENDING:
                return s.name
        return None

    # -- forward --------------------------------------------------------------------------

    def _begin(self) -> None:
        if self.inst.status is not SagaStatus.STARTED:
            return  # a duplicate Begin changes nothing
        self._status(SagaStatus.PENDING)
        if self.inst.deadline_at is not None:
            self.effects.append(
                SetTimer(timer_name(TimerKind.DEADLINE), TimerKind.DEADLINE, self.inst.deadline_at)
            )
        self._advance()

    def _advance(self) -> None:
        if self.inst.status is not SagaStatus.PENDING:
            return
        for i, s in enumerate(self.inst.steps):
            if s.status in (StepStatus.RUNNING, StepStatus.RETRYING):
                return
            if s.status is StepStatus.PENDING:
                self._dispatch(i, Phase.ACTION, s.attempts + 1)
                return
        self._status(SagaStatus.COMPLETED)

    def _dispatch(self, index: int, phase: Phase, attempt: int) -> None:
        step = self.definition.steps[index]
        state = self.inst.steps[index]
        timeout = step.timeout_for(phase)
        if phase is Phase.ACTION:
            self._set_step(index, status=StepStatus.RUNNING, attempts=attempt, error=None)
            handler: Handler | None = step.action
        else:
            handler = step.compensation
            previous = state.compensation
            self._set_step(
                index,
                status=StepStatus.COMPENSATING,
                compensation=CompensationState(
                    CompensationStatus.RUNNING,
                    attempts=attempt,
                    budget_from=previous.budget_from if previous else 0,
                    error=previous.error if previous else None,
                ),
            )
        generation = state.generation
        key = idempotency_key(self.inst.saga_id, step.name, phase, generation)
        deadline = self.now + timeout
        self.effects.append(Dispatch(step.name, phase, attempt, key, deadline, generation))
        if isinstance(handler, Remote):
            # A local run is bounded by the worker itself; a remote one needs a durable timer
            # (a local action's remote compensation too).
            self.effects.append(
                SetTimer(
                    timer_name(TimerKind.TIMEOUT, step.name, phase),
                    TimerKind.TIMEOUT,
                    deadline,
                    step.name,
                    phase,
                    attempt,
                )
            )
        if generation == 1:
            self._record(HistoryKind.DISPATCHED, step.name, phase, attempt)
        else:
            self._record(
                HistoryKind.DISPATCHED, step.name, phase, attempt, {"generation": generation}
            )

    # -- replies (both phases) -------------------------------------------------------------

    def _reply(self, reply: Reply) -> str | None:
        try:
            index = self.definition.index(reply.step)
        except KeyError:
            return f"reply for unknown step {reply.step!r} of saga {self.inst.saga_type!r}"
        phase = reply.phase
        status, sent, _ = self._progress(index, phase)
        handling = classify(
            phase,
            status,
            reply.outcome,
            reply.attempt,
            sent,
            reply.generation,
            self.inst.steps[index].generation,
        )
        if handling is Handling.APPLY:
            self._note_reply(HistoryKind.REPLY, reply)
            self._answer(index, phase, reply)
        elif handling is Handling.REJECTED:
            what = "attempt" if phase is Phase.ACTION else "compensation attempt"
            if reply.generation != 1:
                what = f"generation {reply.generation} {what}"
            return f"reply for {what} {reply.attempt} of step {reply.step!r}, never sent"
        else:
            self._note_reply(RECORDED_AS[handling], reply)
        return None

    def _note_reply(self, kind: HistoryKind, reply: Reply) -> None:
        detail: dict[str, JSON] = {"outcome": reply.outcome.value}
        if reply.error is not None:
            detail["error"] = reply.error
        if reply.outcome is Outcome.SUCCESS and reply.result is not None:
            detail["result"] = reply.result
        if reply.generation != 1:
            detail["generation"] = reply.generation
        self._record(kind, reply.step, reply.phase, reply.attempt, detail)

    def _answer(self, index: int, phase: Phase, reply: Reply) -> None:
        """Act on a reply that the answer table applies."""
        outcome = reply.outcome
        if outcome is Outcome.ERROR:
            self._error(index, phase, reply.error or "error", reply.retryable, reply.retry_after)
            return
        self._cancel(index, phase)
        if phase is Phase.ACTION:
            if outcome is Outcome.SUCCESS:
                self._action_done(index, reply.result)
            else:
                self._action_ended(index, StepStatus.FAILED, reply.error or "failed")
        elif outcome is Outcome.SUCCESS:
            self._compensated(index)
        else:
            self._compensation_stuck(index, reply.error or "failed", "failed definitely")

    def _error(
        self, index: int, phase: Phase, error: str, retryable: bool, retry_after: float | None
    ) -> None:
        """An attempt ended with no definite answer (an error, or its timeout): it is retried
        while the policy allows; then an action's outcome is unknown, and a compensation
        leaves the saga stuck on it."""
        step = self.definition.steps[index]
        _, attempts, budget_from = self._progress(index, phase)
        used = attempts - budget_from
        self._cancel(index, phase)
        if retryable and used < step.policy_for(phase).max_attempts and self._may_proceed(phase):
            self._set_progress(index, phase, status=RETRYING[phase], error=error)
            self._schedule_retry(index, phase, attempts, used, retry_after)
        else:
            # Say which: a non-retryable error (a result that cannot be encoded) ends the step
            # at its first attempt, with retries left.
            how = "exhausted its retry policy" if retryable else "ended with a non-retryable error"
            if phase is Phase.ACTION:
                self._action_ended(index, StepStatus.UNKNOWN, error, how)
            else:
                self._compensation_stuck(index, error, how)

    def _action_done(self, index: int, result: JSON) -> None:
        name = self.inst.steps[index].name
        self._set_step(index, status=StepStatus.DONE, result=result, error=None, outcome_known=True)
        if self._kind(index) is StepKind.PIVOT and self.inst.status is SagaStatus.COMPENSATING:
            self._pivot_succeeded_while_stopping(name)
        self._after_step_settled()

    def _action_ended(
        self, index: int, status: StepStatus, error: str, how: str = "exhausted its retry policy"
    ) -> None:
        """The action failed definitely (``failed``) or has no definite answer (``unknown``,
        ``how`` saying why)."""
        name = self.inst.steps[index].name
        kind = self._kind(index)
        failed = status is StepStatus.FAILED
        self._set_step(index, status=status, error=error, outcome_known=failed)
        if kind is StepKind.RETRIABLE:
            how = "failed past the point of no return" if failed else how
            self._status(SagaStatus.STUCK, reason=f"step {name!r} {how}: {error}", stuck_step=name)
        elif kind is StepKind.PIVOT and not failed:
            self._status(
                SagaStatus.STUCK,
                reason=f"the outcome of pivot {name!r} is unknown: {error}",
                stuck_step=name,
            )
        elif self.inst.status is SagaStatus.PENDING:
            self._start_compensation(f"step {name!r} failed: {error}")
        else:
            self._compensate_next()

    def _schedule_retry(
        self, index: int, phase: Phase, attempt: int, used: int, retry_after: float | None
    ) -> None:
        step = self.definition.steps[index]
        policy = step.policy_for(phase)
        if retry_after is not None and 0.0 <= retry_after < math.inf:
            # The participant's hint, but never past the policy's own longest wait.
            delay = min(retry_after, policy.max_delay)
        else:  # none, or not a finite number of seconds >= 0 (NaN fails both tests)
            seed = f"{self.inst.saga_id}:{step.name}:{phase.value}"
            delay = policy.delay(used, seed=seed)
        due = self.now + delay
        self.effects.append(
            SetTimer(
                timer_name(TimerKind.RETRY, step.name, phase),
                TimerKind.RETRY,
                due,
                step.name,
                phase,
                attempt + 1,
            )
        )
        self._record(
            HistoryKind.RETRY_SCHEDULED, step.name, phase, attempt + 1, {"delay": round(delay, 6)}
        )

    def _pivot_succeeded_while_stopping(self, name: str) -> None:
        """The pivot, in flight when the saga was aborted or its deadline passed, succeeded.

        Nothing has been compensated yet (compensation waits for an in-flight step), and past
        the point of no return the saga only goes forward (Semantics 8): it resumes, and a
        deadline that has not passed yet is armed again (it will only flag the instance).
        """
        self._status(
            SagaStatus.PENDING,
            reason=f"pivot {name!r} succeeded while the saga was stopping; past the point of "
            "no return it only goes forward",
        )
        if self.inst.deadline_at is not None and not self.inst.deadline_passed:
            self.effects.append(
                SetTimer(timer_name(TimerKind.DEADLINE), TimerKind.DEADLINE, self.inst.deadline_at)
            )

    def _after_step_settled(self) -> None:
        if self.inst.status is SagaStatus.PENDING:
            self._advance()
        elif self.inst.status is SagaStatus.COMPENSATING:
            self._compensate_next()

    # -- backward -------------------------------------------------------------------------

    def _start_compensation(self, reason: str) -> None:
        self.effects.append(CancelTimers((timer_name(TimerKind.DEADLINE),)))
        self._status(SagaStatus.COMPENSATING, reason=reason)
        self._compensate_next()

    def _compensate_next(self) -> None:
        target = None
        for i in range(len(self.inst.steps) - 1, -1, -1):
            s = self.inst.steps[i]
            if s.status is StepStatus.RUNNING:
                return  # an in-flight step is answered (or times out) before anything is undone
            if s.status is StepStatus.COMPENSATING:
                return
            if (
                target is None
                and s.status in (StepStatus.DONE, StepStatus.UNKNOWN)
                and self._kind(i) is StepKind.COMPENSATABLE
            ):
                target = i
        if target is None:
            self._status(SagaStatus.FAILED)
            return
        comp = self.inst.steps[target].compensation
        self._dispatch(target, Phase.COMPENSATION, (comp.attempts if comp else 0) + 1)

    def _compensated(self, index: int) -> None:
        comp = self.inst.steps[index].compensation
        assert comp is not None
        self._set_step(
            index,
            status=StepStatus.COMPENSATED,
            compensation=evolve(comp, status=CompensationStatus.DONE, error=None),
        )
        self._compensate_next()

    def _compensation_stuck(self, index: int, error: str, how: str) -> None:
        name = self.inst.steps[index].name
        self._set_progress(index, Phase.COMPENSATION, status=CompensationStatus.FAILED, error=error)
        self._status(
            SagaStatus.STUCK,
            reason=f"compensation of step {name!r} {how}: {error}",
            stuck_step=name,
        )

    # -- timers ---------------------------------------------------------------------------

    def _timer(self, fired: TimerFired) -> str | None:
        if fired.kind is TimerKind.DEADLINE:
            self._deadline()
            return None
        try:
            index = self.definition.index(fired.step or "")
        except KeyError:
            return f"timer for unknown step {fired.step!r}"
        phase = fired.phase
        status, sent, _ = self._progress(index, phase)
        if fired.kind is TimerKind.TIMEOUT:
            if status is RUNNING[phase] and sent == fired.attempt:
                self._record(HistoryKind.TIMED_OUT, fired.step, phase, fired.attempt)
                self._error(index, phase, "timed out", True, None)
        elif status is RETRYING[phase] and fired.attempt == sent + 1 and self._may_proceed(phase):
            self._dispatch(index, phase, fired.attempt)
        return None

    def _deadline(self) -> None:
        status = self.inst.status
        if status not in (SagaStatus.STARTED, SagaStatus.PENDING, SagaStatus.STUCK):
            return
        if self.inst.deadline_passed:
            return
        self._set(deadline_passed=True)
        if self._past_no_return() is not None or status is SagaStatus.STUCK:
            # Past the pivot the saga only goes forward; a stuck instance waits for its
            # operator. Either way the deadline is flagged, nothing is compensated.
            self._record(HistoryKind.DEADLINE, detail={"action": "flagged"})
            return
        self._record(HistoryKind.DEADLINE, detail={"action": "compensate"})
        self._stop("deadline passed")

    # -- operator commands ----------------------------------------------------------------

    def _operator(self, command: OperatorCommand) -> str | None:
        refused = check_command(self.inst, command)
        if refused:
            return refused
        detail: dict[str, JSON] = {
            "command": command_name(command),
            "reason": command.reason,
            "by": command.by,
        }
        if isinstance(command, Abort):
            self._record(HistoryKind.OPERATOR, detail=detail)
            self._stop(f"aborted: {command.reason}")
            return None
        step_name = self.inst.stuck_step
        assert step_name is not None
        index = self.definition.index(step_name)
        state = self.inst.steps[index]
        comp = state.compensation
        compensating = comp is not None and comp.status is CompensationStatus.FAILED
        if isinstance(command, Retry):
            # A fresh budget for what the saga is stuck on: its compensation, or its action.
            phase = Phase.COMPENSATION if compensating else Phase.ACTION
            sent = self._progress(index, phase)[1]
            self._set_progress(index, phase, budget_from=sent)
            generation = state.generation if compensating else retry_generation(state)
            if generation != state.generation:
                # A definite failure is stored under the old key: a new generation, with keys
                # of its own, runs the step afresh (Semantics 2), recorded with the command.
                self._set_step(index, generation=generation, compensation=None)
                detail["generation"] = generation
            self._record(HistoryKind.OPERATOR, step_name, detail=detail)
            self._status(SagaStatus.COMPENSATING if compensating else SagaStatus.PENDING)
            self._dispatch(index, phase, sent + 1)
            return None
        self._record(HistoryKind.OPERATOR, step_name, detail=detail)
        # Resolve by hand.
        if compensating and comp is not None:
            self._set_step(
                index,
                status=StepStatus.RESOLVED,
                compensation=evolve(comp, status=CompensationStatus.RESOLVED),
            )
            self._status(SagaStatus.COMPENSATING)
            self._compensate_next()
        else:
            self._set_step(index, status=StepStatus.RESOLVED, result=None)
            self._status(SagaStatus.PENDING)
            self._advance()
        return None

    def _stop(self, reason: str) -> None:
        """Abort or deadline before the point of no return (Semantics 9)."""
        for i, s in enumerate(self.inst.steps):
            if s.status is StepStatus.RETRYING:
                # Its retry timer is cancelled; its last attempt had no definite answer.
                self._cancel(i, Phase.ACTION)
                self._set_step(i, status=StepStatus.UNKNOWN, outcome_known=False)
                if self._kind(i) is StepKind.PIVOT:
                    # As when an in-flight pivot times out: it may have taken effect, so the
                    # steps before it are not undone behind its back; an operator decides.
                    self._set(failure_reason=reason)
                    self._status(
                        SagaStatus.STUCK,
                        reason=f"the outcome of pivot {s.name!r} is unknown ({reason}): "
                        f"{s.error or 'no answer'}",
                        stuck_step=s.name,
                    )
                    return
        self._start_compensation(reason)


# Every name that other modules take from here stays importable from here.
__all__ = [
    "Abort",
    "Begin",
    "CancelTimers",
    "Decision",
    "Dispatch",
    "Effect",
    "Event",
    "OperatorCommand",
    "Outcome",
    "Reply",
    "Resolve",
    "Retry",
    "SetTimer",
    "TimerFired",
    "TimerKind",
    "check_command",
    "decide",
    "idempotency_key",
    "new_instance",
    "timer_name",
]
