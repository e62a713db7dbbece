"""decide(), the pure state machine, pinned row by row (no I/O, no clock, no event loop).

The answer table (step state x incoming answer -> action) in docs/concepts.md is the
``ACTION_TABLE``/``COMPENSATION_TABLE`` below; the two must stay the same. Every instance a
test reaches goes through ``check_invariants`` after every event.
"""

from __future__ import annotations

# mypy: disable-error-code="comparison-overlap"
# (a test reads a state again after an event changed it: the narrowing from its first read
# would call the second comparison impossible)
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sagakit import Phase, RetryPolicy, Saga, SagaDefinition, StepContext
from sagakit.answers import ANSWER_ROWS, ANSWER_TABLE, Handling, PhaseState, ReplyKind
from sagakit.state import (
    CompensationStatus,
    HistoryEntry,
    HistoryKind,
    SagaInstance,
    SagaStatus,
    StepStatus,
)
from sagakit.testing import check_invariants
from sagakit.transitions import (
    Abort,
    Begin,
    CancelTimers,
    Decision,
    Dispatch,
    Event,
    Outcome,
    Reply,
    Resolve,
    Retry,
    SetTimer,
    TimerFired,
    TimerKind,
    check_command,
    decide,
    idempotency_key,
    new_instance,
    timer_name,
)

A = Phase.ACTION
C = Phase.COMPENSATION

# Three attempts, fixed delays 1, 2, 4... (no jitter) so tests can name exact due times.
POLICY = RetryPolicy(max_attempts=3, initial_delay=1.0, backoff=2.0, max_delay=10.0, jitter=0.0)
TWO = RetryPolicy(max_attempts=2, initial_delay=1.0, backoff=2.0, max_delay=10.0, jitter=0.0)


async def _noop(ctx: StepContext[object]) -> None:
    return None


async def _undo(ctx: StepContext[object]) -> None:
    return None


def plain() -> SagaDefinition:
    """Three remote compensatable steps: a, b, c."""
    saga: Saga[object] = Saga("plain")
    for name in "abc":
        saga.remote(
            name,
            participant="svc",
            command=f"{name}.do",
            compensation=f"{name}.undo",
            timeout=10.0,
            retry=POLICY,
            compensation_retry=POLICY,
            compensation_timeout=5.0,
        )
    return saga.build()


def pivoted(deadline: float | None = 100.0) -> SagaDefinition:
    """a (remote), l (local), p (remote pivot), r (remote retriable), s (local retriable)."""
    return (
        Saga("pivoted", deadline=deadline)
        .remote(
            "a",
            participant="svc",
            command="a.do",
            compensation="a.undo",
            retry=POLICY,
            compensation_retry=TWO,
        )
        .local("l", _noop, compensation=_undo, retry=POLICY, compensation_retry=TWO)
        .remote("p", participant="bank", command="p.charge", kind="pivot", retry=TWO)
        .remote("r", participant="ship", command="r.ship", kind="retriable", retry=TWO)
        .local("s", _noop, kind="retriable", retry=TWO)
        .build()
    )


def no_pivot() -> SagaDefinition:
    """a (remote compensatable), then r (remote retriable): the first retriable step is the
    point of no return."""
    return (
        Saga("nopivot", deadline=50.0)
        .remote("a", participant="svc", command="a.do", compensation="a.undo", retry=POLICY)
        .remote("r", participant="svc", command="r.do", kind="retriable", retry=TWO)
        .build()
    )


PLAIN = plain()
PIVOTED = pivoted()
NO_PIVOT = no_pivot()


class Run:
    """One instance driven through decide(), checking the invariants after every event."""

    def __init__(self, definition: SagaDefinition, *, saga_id: str = "s1", now: float = 1000.0):
        self.definition = definition
        self.now = now
        self.instance = new_instance(
            definition,
            saga_id=saga_id,
            data={"order": 7},
            correlation_id=None,
            idempotency_key=None,
            input_digest="",
            now=now,
        )
        self.history: list[HistoryEntry] = []
        self.last: Decision | None = None

    def __call__(self, *events: Event, at: float | None = None) -> Decision:
        decision: Decision | None = None
        for event in events:
            self.now = at if at is not None else self.now + 1.0
            decision = decide(self.instance, event, self.definition, self.now)
            if decision.rejected is None:
                self.instance = decision.instance
                self.history.extend(decision.history)
            violations = check_invariants(self.instance, self.definition, self.history)
            assert not violations, violations
        assert decision is not None
        self.last = decision
        return decision

    def peek(self, event: Event) -> Decision:
        """What ``event`` would do now, without applying it."""
        return decide(self.instance, event, self.definition, self.now + 1.0)

    @property
    def status(self) -> SagaStatus:
        return self.instance.status

    def step(self, name: str) -> StepStatus:
        return self.instance.step(name).status


def ok(step: str, attempt: int = 1, phase: Phase = A, result: object = None) -> Reply:
    return Reply(step, phase, attempt, Outcome.SUCCESS, result=result)  # type: ignore[arg-type]


def fail(step: str, attempt: int = 1, phase: Phase = A) -> Reply:
    return Reply(step, phase, attempt, Outcome.FAILURE, error="declined")


def err(step: str, attempt: int = 1, phase: Phase = A, retryable: bool = True) -> Reply:
    return Reply(step, phase, attempt, Outcome.ERROR, error="boom", retryable=retryable)


def timeout(step: str, attempt: int, phase: Phase = A) -> TimerFired:
    return TimerFired(TimerKind.TIMEOUT, step, phase, attempt)


def retry_timer(step: str, attempt: int, phase: Phase = A) -> TimerFired:
    return TimerFired(TimerKind.RETRY, step, phase, attempt)


DEADLINE = TimerFired(TimerKind.DEADLINE)


def dispatches(decision: Decision) -> list[tuple[str, Phase, int]]:
    return [(e.step, e.phase, e.attempt) for e in decision.effects if isinstance(e, Dispatch)]


def timers(decision: Decision) -> list[SetTimer]:
    return [e for e in decision.effects if isinstance(e, SetTimer)]


def kinds(decision: Decision) -> list[HistoryKind]:
    return [h.kind for h in decision.history]


def cancelled(decision: Decision) -> set[str | None]:
    names: set[str | None] = set()
    for e in decision.effects:
        if isinstance(e, CancelTimers):
            names.update(e.names if e.names is not None else (None,))
    return names


# -- scenarios: each puts one step in one state, at action attempt 2 -----------------------
# (``current`` = 2, ``older`` = 1, ``never sent`` = 3 for every scenario below.)


def action_pending() -> tuple[Run, str]:
    run = Run(PLAIN)
    run(Begin())
    return run, "b"


def action_running() -> tuple[Run, str]:
    run = Run(PLAIN)
    run(Begin(), ok("a"), err("b", 1), retry_timer("b", 2))
    assert run.step("b") is StepStatus.RUNNING and run.instance.step("b").attempts == 2
    return run, "b"


def action_retrying() -> tuple[Run, str]:
    run, _ = action_running()
    run(err("b", 2))
    assert run.step("b") is StepStatus.RETRYING
    return run, "b"


def action_done() -> tuple[Run, str]:
    run, _ = action_running()
    run(ok("b", 2, result={"n": 2}))
    assert run.step("b") is StepStatus.DONE
    return run, "b"


def action_failed() -> tuple[Run, str]:
    run, _ = action_running()
    run(fail("b", 2))
    assert run.step("b") is StepStatus.FAILED and run.status is SagaStatus.COMPENSATING
    return run, "b"


def action_unknown() -> tuple[Run, str]:
    """The pivot, its two attempts spent without an answer: stuck (a compensatable step in
    this state is compensated at once, so only a pivot or retriable step rests here)."""
    run = Run(PIVOTED)
    run(Begin(), ok("a"), ok("l"), timeout("p", 1), retry_timer("p", 2), timeout("p", 2))
    assert run.step("p") is StepStatus.UNKNOWN and run.status is SagaStatus.STUCK
    return run, "p"


def action_compensating() -> tuple[Run, str]:
    run, _ = action_done()
    run(fail("c"))
    assert run.step("b") is StepStatus.COMPENSATING
    return run, "b"


def action_compensated() -> tuple[Run, str]:
    run, _ = action_compensating()
    run(ok("b", 1, C))
    assert run.step("b") is StepStatus.COMPENSATED
    return run, "b"


def action_resolved() -> tuple[Run, str]:
    run, _ = action_unknown()
    run(Resolve("p", "the bank confirms the charge"))
    assert run.step("p") is StepStatus.RESOLVED
    return run, "p"


def action_running_stopping() -> tuple[Run, str]:
    """b in flight (attempt 2) when the saga is aborted: compensation waits for it."""
    run, _ = action_running()
    run(Abort("customer cancelled"))
    assert run.status is SagaStatus.COMPENSATING and run.step("b") is StepStatus.RUNNING
    return run, "b"


ACTION_SCENARIOS: dict[str, Callable[[], tuple[Run, str]]] = {
    "pending": action_pending,
    "running": action_running,
    "running, saga stopping": action_running_stopping,
    "retrying": action_retrying,
    "done": action_done,
    "failed": action_failed,
    "unknown": action_unknown,
    "compensating": action_compensating,
    "compensated": action_compensated,
    "resolved": action_resolved,
}

# What happens to each answer: the rows of the answer table in docs/concepts.md.
REJECTED = "rejected"  # dead-lettered, nothing written
LATE = "late"  # recorded as a late reply, nothing else changes
DUPLICATE = "duplicate"  # recorded as a duplicate, nothing else changes
DONE = "done, next step"  # step done with the reply's result; the next step is sent
DONE_UNDO = "done, then compensated"  # done, and (the saga is stopping) compensated at once
FAIL = "failed, compensate earlier steps"  # failed, not compensated; earlier steps are
RETRY = "retry"  # a retry timer is set (budget left)
UNKNOWN_UNDO = "unknown, compensate it"  # outcome unknown; the step itself is compensated
COMP_DONE = "compensated, next"  # compensation done; the next earlier one is sent
COMP_RETRY = "retry compensation"
STUCK = "stuck"

OUTCOMES = ("success", "failure", "error", "error (not retryable)")
ALL_LATE = {o: (LATE, LATE, REJECTED) for o in OUTCOMES}

#: state -> outcome -> (current attempt, older attempt, never-sent attempt)
ACTION_TABLE: dict[str, dict[str, tuple[str, str, str]]] = {
    "pending": {o: (REJECTED, REJECTED, REJECTED) for o in OUTCOMES},
    "running": {
        "success": (DONE, DONE, REJECTED),
        "failure": (FAIL, FAIL, REJECTED),
        "error": (RETRY, LATE, REJECTED),
        "error (not retryable)": (UNKNOWN_UNDO, LATE, REJECTED),
    },
    "running, saga stopping": {
        "success": (DONE_UNDO, DONE_UNDO, REJECTED),
        "failure": (FAIL, FAIL, REJECTED),
        "error": (UNKNOWN_UNDO, LATE, REJECTED),
        "error (not retryable)": (UNKNOWN_UNDO, LATE, REJECTED),
    },
    "retrying": {
        "success": (DONE, DONE, REJECTED),
        "failure": (FAIL, FAIL, REJECTED),
        "error": (LATE, LATE, REJECTED),
        "error (not retryable)": (LATE, LATE, REJECTED),
    },
    "done": {
        "success": (DUPLICATE, DUPLICATE, REJECTED),
        "failure": (LATE, LATE, REJECTED),
        "error": (LATE, LATE, REJECTED),
        "error (not retryable)": (LATE, LATE, REJECTED),
    },
    "failed": ALL_LATE,
    "unknown": ALL_LATE,
    "compensating": ALL_LATE,
    "compensated": ALL_LATE,
    "resolved": ALL_LATE,
}


def make_reply(step: str, phase: Phase, attempt: int, outcome: str) -> Reply:
    if outcome == "success":
        return ok(step, attempt, phase, result={"attempt": attempt})
    if outcome == "failure":
        return fail(step, attempt, phase)
    return err(step, attempt, phase, retryable=outcome == "error")


def assert_unchanged(before: SagaInstance, decision: Decision) -> None:
    assert decision.effects == ()
    assert decision.instance.steps == before.steps
    assert decision.instance.status is before.status


def live_timers(instance: SagaInstance, name: str) -> set[str]:
    """The timers a remote step's action has in its state: these must be cancelled."""
    status = instance.step(name).status
    if status is StepStatus.RUNNING:
        return {timer_name(TimerKind.TIMEOUT, name)}
    if status is StepStatus.RETRYING:
        return {timer_name(TimerKind.RETRY, name)}
    return set()


def check_action(run: Run, name: str, expected: str, reply: Reply) -> None:
    before = run.instance
    if expected == REJECTED:
        decision = run.peek(reply)
        assert decision.rejected is not None and "never sent" in decision.rejected
        assert decision.history == () and decision.effects == ()
        assert decision.instance == before
        return
    decision = run(reply)
    state = run.instance.step(name)
    if expected in (LATE, DUPLICATE):
        kind = HistoryKind.LATE_REPLY if expected == LATE else HistoryKind.DUPLICATE_REPLY
        assert kinds(decision) == [kind]
        assert_unchanged(before, decision)
        return
    assert kinds(decision)[0] is HistoryKind.REPLY
    if expected == DONE:
        assert state.status is StepStatus.DONE and state.result == reply.result
        assert dispatches(decision) == [("c", A, 1)]
        assert live_timers(before, name) <= cancelled(decision)
    elif expected == DONE_UNDO:
        assert state.status is StepStatus.COMPENSATING and state.result == reply.result
        assert state.outcome_known
        assert dispatches(decision) == [(name, C, 1)]
    elif expected == FAIL:
        assert state.status is StepStatus.FAILED and state.compensation is None
        assert run.status is SagaStatus.COMPENSATING
        assert dispatches(decision) == [("a", C, 1)]
    elif expected == RETRY:
        assert state.status is StepStatus.RETRYING
        assert dispatches(decision) == []
        (timer,) = timers(decision)
        assert (timer.kind, timer.step, timer.attempt) == (TimerKind.RETRY, name, 3)
        assert HistoryKind.RETRY_SCHEDULED in kinds(decision)
    elif expected == UNKNOWN_UNDO:
        assert state.status is StepStatus.COMPENSATING and not state.outcome_known
        assert run.status is SagaStatus.COMPENSATING
        assert dispatches(decision) == [(name, C, 1)]
    else:  # pragma: no cover
        raise AssertionError(expected)


@pytest.mark.parametrize("attempt_kind", ["current", "older", "never sent"])
@pytest.mark.parametrize("outcome", OUTCOMES)
@pytest.mark.parametrize("state", list(ACTION_TABLE))
def test_action_answer_table(state: str, outcome: str, attempt_kind: str) -> None:
    run, name = ACTION_SCENARIOS[state]()
    attempt = {"current": 2, "older": 1, "never sent": 3}[attempt_kind]
    column = ("current", "older", "never sent").index(attempt_kind)
    expected = ACTION_TABLE[state][outcome][column]
    check_action(run, name, expected, make_reply(name, A, attempt, outcome))


def test_action_reply_for_attempt_zero_is_never_sent() -> None:
    run, name = action_running()
    decision = run.peek(ok(name, 0))
    assert decision.rejected is not None


def test_reply_for_unknown_step_is_rejected() -> None:
    run, _ = action_running()
    for phase in (A, C):
        decision = run.peek(Reply("nope", phase, 1, Outcome.SUCCESS))
        assert decision.rejected is not None and "unknown step" in decision.rejected
        assert decision.instance == run.instance and not decision.changed


def test_duplicate_success_never_changes_the_result() -> None:
    run, _ = action_done()
    run(ok("b", 2, result={"n": "other"}), ok("b", 1, result={"n": "older"}))
    assert run.instance.step("b").result == {"n": 2}


# -- the compensation phase ------------------------------------------------------------------
# (step b's compensation at attempt 2: ``current`` = 2, ``older`` = 1, ``never sent`` = 3.)


def comp_running() -> tuple[Run, str]:
    run, _ = action_compensating()
    run(err("b", 1, C), retry_timer("b", 2, C))
    comp = run.instance.step("b").compensation
    assert comp is not None and comp.status is CompensationStatus.RUNNING and comp.attempts == 2
    return run, "b"


def comp_retrying() -> tuple[Run, str]:
    run, _ = comp_running()
    run(err("b", 2, C))
    comp = run.instance.step("b").compensation
    assert comp is not None and comp.status is CompensationStatus.RETRYING
    return run, "b"


def comp_done() -> tuple[Run, str]:
    run, _ = comp_running()
    run(ok("b", 2, C))
    comp = run.instance.step("b").compensation
    assert comp is not None and comp.status is CompensationStatus.DONE
    return run, "b"


def comp_failed() -> tuple[Run, str]:
    run, _ = comp_running()
    run(fail("b", 2, C))
    comp = run.instance.step("b").compensation
    assert comp is not None and comp.status is CompensationStatus.FAILED
    assert run.status is SagaStatus.STUCK and run.instance.stuck_step == "b"
    return run, "b"


def comp_resolved() -> tuple[Run, str]:
    run, _ = comp_failed()
    run(Resolve("b", "refunded by hand"))
    comp = run.instance.step("b").compensation
    assert comp is not None and comp.status is CompensationStatus.RESOLVED
    return run, "b"


def comp_not_started() -> tuple[Run, str]:
    run, _ = action_done()
    return run, "b"


COMPENSATION_SCENARIOS: dict[str, Callable[[], tuple[Run, str]]] = {
    "not started": comp_not_started,
    "running": comp_running,
    "retrying": comp_retrying,
    "done": comp_done,
    "failed": comp_failed,
    "resolved": comp_resolved,
}

COMPENSATION_TABLE: dict[str, dict[str, tuple[str, str, str]]] = {
    "not started": {o: (REJECTED, REJECTED, REJECTED) for o in OUTCOMES},
    "running": {
        "success": (COMP_DONE, COMP_DONE, REJECTED),
        "failure": (STUCK, STUCK, REJECTED),
        "error": (COMP_RETRY, LATE, REJECTED),
        "error (not retryable)": (STUCK, LATE, REJECTED),
    },
    "retrying": {
        "success": (COMP_DONE, COMP_DONE, REJECTED),
        "failure": (STUCK, STUCK, REJECTED),
        "error": (LATE, LATE, REJECTED),
        "error (not retryable)": (LATE, LATE, REJECTED),
    },
    "done": {
        "success": (DUPLICATE, DUPLICATE, REJECTED),
        "failure": (LATE, LATE, REJECTED),
        "error": (LATE, LATE, REJECTED),
        "error (not retryable)": (LATE, LATE, REJECTED),
    },
    "failed": ALL_LATE,
    "resolved": ALL_LATE,
}


def check_compensation(run: Run, name: str, expected: str, reply: Reply) -> None:
    before = run.instance
    if expected == REJECTED:
        decision = run.peek(reply)
        assert decision.rejected is not None and "never sent" in decision.rejected
        assert decision.history == () and decision.effects == ()
        return
    decision = run(reply)
    state = run.instance.step(name)
    comp = state.compensation
    assert comp is not None
    if expected in (LATE, DUPLICATE):
        kind = HistoryKind.LATE_REPLY if expected == LATE else HistoryKind.DUPLICATE_REPLY
        assert kinds(decision) == [kind]
        assert_unchanged(before, decision)
        return
    assert kinds(decision)[0] is HistoryKind.REPLY
    if expected == COMP_DONE:
        assert state.status is StepStatus.COMPENSATED and comp.status is CompensationStatus.DONE
        assert dispatches(decision) == [("a", C, 1)]
        prior = before.step(name).compensation
        assert prior is not None
        live = (
            timer_name(TimerKind.RETRY, name, C)
            if prior.status is CompensationStatus.RETRYING
            else timer_name(TimerKind.TIMEOUT, name, C)
        )
        assert live in cancelled(decision)
    elif expected == STUCK:
        assert comp.status is CompensationStatus.FAILED
        assert run.status is SagaStatus.STUCK and run.instance.stuck_step == name
        assert run.instance.stuck_reason and name in run.instance.stuck_reason
        assert dispatches(decision) == []  # the earlier compensation (a) waits
    elif expected == COMP_RETRY:
        assert comp.status is CompensationStatus.RETRYING
        (timer,) = timers(decision)
        assert (timer.kind, timer.phase, timer.attempt) == (TimerKind.RETRY, C, 3)
    else:  # pragma: no cover
        raise AssertionError(expected)


@pytest.mark.parametrize("attempt_kind", ["current", "older", "never sent"])
@pytest.mark.parametrize("outcome", OUTCOMES)
@pytest.mark.parametrize("state", list(COMPENSATION_TABLE))
def test_compensation_answer_table(state: str, outcome: str, attempt_kind: str) -> None:
    run, name = COMPENSATION_SCENARIOS[state]()
    attempt = {"current": 2, "older": 1, "never sent": 3}[attempt_kind]
    column = ("current", "older", "never sent").index(attempt_kind)
    expected = COMPENSATION_TABLE[state][outcome][column]
    check_compensation(run, name, expected, make_reply(name, C, attempt, outcome))


def test_compensation_reply_for_a_step_never_compensated_is_rejected() -> None:
    run, _ = action_running()
    assert run.peek(ok("a", 1, C)).rejected is not None  # a is done, not compensated


# -- the docs table matches the tests ---------------------------------------------------------


def docs_rows() -> list[str]:
    """The answer table's rows, as docs/concepts.md writes them."""
    rows = []
    for prefix, table in (("", ACTION_TABLE), ("compensation ", COMPENSATION_TABLE)):
        for state, row in table.items():
            cells = []
            for outcome in OUTCOMES:
                current, older, never = row[outcome]
                assert never == REJECTED  # an attempt never sent is always dead-lettered
                cells.append(current if current == older else f"{current} (older attempt: {older})")
            rows.append(f"| {prefix}{state} | " + " | ".join(cells) + f" | {REJECTED} |")
    return rows


def test_docs_answer_table_matches_the_tests() -> None:
    docs = Path(__file__).parents[2] / "docs" / "concepts.md"
    lines = {line.strip() for line in docs.read_text(encoding="utf-8").splitlines()}
    missing = [row for row in docs_rows() if row not in lines]
    assert not missing, "docs/concepts.md lacks the rows:\n" + "\n".join(missing)


# -- the answer table in the core (sagakit.answers) is what decide() follows -----------------

#: One reply per way of being each kind (step or compensation at attempt 2, as above), with
#: the reply's generation: the step is in generation 1, or in generation 2 for the answers of
#: an older generation.
KIND_REPLIES: dict[ReplyKind, list[tuple[str, int, bool, int]]] = {
    ReplyKind.SUCCESS: [("success", 2, True, 1), ("success", 1, True, 1)],
    ReplyKind.FAILURE: [("failure", 2, True, 1), ("failure", 1, True, 1)],
    ReplyKind.ERROR: [("error", 2, True, 1), ("error", 2, False, 1)],
    ReplyKind.OLDER_ERROR: [("error", 1, True, 1), ("error", 1, False, 1)],
    ReplyKind.OLDER_GENERATION: [
        ("success", 1, True, 1),
        ("failure", 2, True, 1),
        ("error", 2, True, 1),
    ],
    ReplyKind.NEVER_SENT: [
        ("success", 3, True, 1),
        ("failure", 0, True, 1),
        ("error", 3, True, 1),
        ("success", 1, True, 2),  # a generation not begun
    ],
}


def in_generation(run: Run, name: str, generation: int) -> None:
    """Put step ``name`` of ``run``'s instance in ``generation`` (as an operator's retry of an
    earlier one would have), nothing else changed."""
    steps = tuple(
        replace(s, generation=generation) if s.name == name else s for s in run.instance.steps
    )
    run.instance = replace(run.instance, steps=steps)


OBSERVED = {
    HistoryKind.REPLY: Handling.APPLY,
    HistoryKind.LATE_REPLY: Handling.LATE,
    HistoryKind.DUPLICATE_REPLY: Handling.DUPLICATE,
}


def scenario_for(phase: Phase, state: PhaseState) -> tuple[Run, str]:
    if phase is A:
        return ACTION_SCENARIOS[str(state)]()
    return COMPENSATION_SCENARIOS["not started" if state is None else str(state)]()


def phase_state(instance: SagaInstance, name: str, phase: Phase) -> PhaseState:
    step = instance.step(name)
    if phase is A:
        return step.status
    return step.compensation.status if step.compensation is not None else None


@pytest.mark.parametrize(
    ("phase", "state", "kind"), list(ANSWER_TABLE), ids=lambda v: str(v) if v else "none"
)
def test_decide_follows_every_row_of_the_answer_table(
    phase: Phase, state: PhaseState, kind: ReplyKind
) -> None:
    run, name = scenario_for(phase, state)
    assert phase_state(run.instance, name, phase) == state
    if kind is ReplyKind.OLDER_GENERATION:
        in_generation(run, name, 2)
    expected = ANSWER_TABLE[phase, state, kind]
    for outcome, attempt, retryable, generation in KIND_REPLIES[kind]:
        reply = Reply(
            name,
            phase,
            attempt,
            Outcome(outcome),
            result={"attempt": attempt} if outcome == "success" else None,
            error=None if outcome == "success" else "x",
            retryable=retryable,
            generation=generation,
        )
        decision = run.peek(reply)
        if decision.rejected is not None:
            observed = Handling.REJECTED
            assert decision.instance == run.instance and not decision.changed
        else:
            observed = OBSERVED[decision.history[0].kind]
            if observed is not Handling.APPLY:
                assert len(decision.history) == 1 and decision.effects == ()
                assert decision.instance.steps == run.instance.steps
        assert observed is expected, (outcome, attempt, retryable)


def test_the_answer_table_has_a_row_for_every_state_and_a_column_for_every_kind() -> None:
    states: list[tuple[Phase, PhaseState]] = [(A, s) for s in StepStatus]
    states += [(C, None)] + [(C, s) for s in CompensationStatus]
    assert list(ANSWER_ROWS) == states
    assert set(ANSWER_TABLE) == {(p, s, k) for p, s in states for k in ReplyKind}


def core_table_markdown() -> list[str]:
    """The core's answer table as docs/concepts.md shows it."""
    lines = [
        "| phase | state | " + " | ".join(kind.value for kind in ReplyKind) + " |",
        "|---" * (2 + len(ReplyKind)) + "|",
    ]
    for (phase, state), row in ANSWER_ROWS.items():
        label = "not started" if state is None else state.value
        cells = " | ".join(handling.value for handling in row)
        lines.append(f"| {phase.value} | {label} | {cells} |")
    return lines


def test_docs_show_the_core_answer_table() -> None:
    docs = Path(__file__).parents[2] / "docs" / "concepts.md"
    expected = "\n".join(core_table_markdown())
    assert expected in docs.read_text(encoding="utf-8"), (
        "docs/concepts.md should hold the answer table of sagakit.answers:\n" + expected
    )


def docs_section_rows(heading: str) -> dict[str, list[str]]:
    """The rows of the first table under ``heading`` in docs/concepts.md: label -> cells."""
    text = (Path(__file__).parents[2] / "docs" / "concepts.md").read_text(encoding="utf-8")
    section = text.split(f"\n{heading}\n", 1)[1]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        if rows and not line.startswith("|"):
            break
        if line.startswith("|") and not line.startswith("|---"):
            label, *cells = (cell.strip() for cell in line.strip("|").split("|"))
            rows[label] = cells
    return rows


def handling_of(cell: str) -> tuple[Handling, Handling]:
    """A docs cell as (current attempt, older attempt) handlings: a cell that names what is
    done is an applied answer."""
    current, _, older = cell.removesuffix(")").partition(" (older attempt: ")
    names = {h.value: h for h in Handling if h is not Handling.APPLY}
    return names.get(current, Handling.APPLY), names.get(older or current, Handling.APPLY)


@pytest.mark.parametrize("phase", [A, C])
def test_the_docs_answer_tables_agree_with_the_core(phase: Phase) -> None:
    """Each detailed table in docs/concepts.md, cell by cell, classifies as the core does."""
    if phase is A:
        rows = docs_section_rows("### Answers to a step's action")
        states: dict[str, PhaseState] = {s.value: s for s in StepStatus}
        states["running, saga stopping"] = StepStatus.RUNNING
    else:
        rows = docs_section_rows("### Answers to a step's compensation")
        states = {f"compensation {s.value}": s for s in CompensationStatus}
        states["compensation not started"] = None
    header = rows.pop("step state")
    assert header == [
        "success",
        "failure",
        "retryable error",
        "non-retryable error",
        "attempt never sent",
    ]
    assert set(rows) == set(states)
    for label, cells in rows.items():
        success, failure, retryable, final, never = map(handling_of, cells)
        row = dict(zip(ReplyKind, ANSWER_ROWS[phase, states[label]], strict=True))
        assert success == (row[ReplyKind.SUCCESS],) * 2, label
        assert failure == (row[ReplyKind.FAILURE],) * 2, label
        for error in (retryable, final):
            assert error == (row[ReplyKind.ERROR], row[ReplyKind.OLDER_ERROR]), label
        assert never == (row[ReplyKind.NEVER_SENT],) * 2, label


# -- forward ---------------------------------------------------------------------------------


def test_begin_dispatches_the_first_step_with_a_durable_timeout() -> None:
    run = Run(PLAIN)
    decision = run(Begin())
    assert run.status is SagaStatus.PENDING
    (dispatch,) = [e for e in decision.effects if isinstance(e, Dispatch)]
    assert dispatch == Dispatch("a", A, 1, "s1:a:action", run.now + 10.0)
    (timer,) = timers(decision)
    assert timer == SetTimer("timeout:a:action", TimerKind.TIMEOUT, run.now + 10.0, "a", A, 1)
    assert kinds(decision) == [HistoryKind.STATUS, HistoryKind.DISPATCHED]


def test_a_second_begin_changes_nothing() -> None:
    run = Run(PLAIN)
    run(Begin())
    decision = run(Begin())
    assert not decision.changed and decision.instance == run.instance


def test_begin_with_a_deadline_sets_the_deadline_timer() -> None:
    run = Run(PIVOTED)
    decision = run(Begin())
    assert SetTimer("deadline", TimerKind.DEADLINE, 1000.0 + 100.0) in timers(decision)


def test_local_steps_get_no_durable_timeout() -> None:
    run = Run(PIVOTED)
    run(Begin())
    decision = run(ok("a"))
    assert dispatches(decision) == [("l", A, 1)]
    assert timers(decision) == []


def test_happy_path_completes_and_cancels_every_timer() -> None:
    run = Run(PIVOTED)
    run(Begin(), ok("a", result=1), ok("l", result=2), ok("p", result=3), ok("r", result=4))
    decision = run(ok("s", result=5))
    assert run.status is SagaStatus.COMPLETED
    assert run.instance.results() == {"a": 1, "l": 2, "p": 3, "r": 4, "s": 5}
    assert CancelTimers(None) in decision.effects
    assert run.instance.point_of_no_return == "p"


def test_idempotency_keys_are_stable_across_attempts() -> None:
    assert idempotency_key("s1", "pay", A) == "s1:pay:action"
    assert idempotency_key("s1", "pay", C) == "s1:pay:compensation"
    run = Run(PLAIN)
    keys = set()
    for decision in (run(Begin()), run(err("a")), run(retry_timer("a", 2))):
        keys |= {e.idempotency_key for e in decision.effects if isinstance(e, Dispatch)}
    assert keys == {"s1:a:action"}


def test_fingerprint_mismatch_is_rejected() -> None:
    run = Run(PLAIN)
    run(Begin())
    other = pivoted()
    decision = decide(run.instance, ok("a"), other, run.now + 1)
    assert decision.rejected is not None
    assert run.instance.fingerprint in decision.rejected
    assert decision.instance == run.instance and not decision.changed
    # Same name and version but different steps: still rejected.
    changed: Saga[Any] = Saga("plain").remote(
        "a", participant="svc", command="a.do", compensation="x"
    )
    decision = decide(run.instance, ok("a"), changed.build(), run.now + 1)
    assert decision.rejected is not None


# -- retries, backoff and jitter (Semantics 13) ------------------------------------------------


def test_retry_waits_with_exponential_backoff_then_exhausts() -> None:
    run = Run(PLAIN)
    run(Begin())
    d1 = run(err("a", 1), at=2000.0)
    assert [t.due_at for t in timers(d1)] == [2001.0]  # 1 * 2**0
    run(retry_timer("a", 2), at=2001.0)
    d2 = run(err("a", 2), at=2002.0)
    assert [t.due_at for t in timers(d2)] == [2004.0]  # 1 * 2**1
    run(retry_timer("a", 3), at=2004.0)
    d3 = run(err("a", 3))
    assert [t.kind for t in timers(d3)] == [TimerKind.TIMEOUT]  # the compensation's only
    state = run.instance.step("a")
    assert state.status is StepStatus.COMPENSATING and not state.outcome_known
    assert dispatches(d3) == [("a", C, 1)]


def test_retry_after_in_a_reply_overrides_the_backoff() -> None:
    run = Run(PLAIN)
    run(Begin())
    reply = Reply("a", A, 1, Outcome.ERROR, error="busy", retry_after=7.5)
    decision = run(reply, at=3000.0)
    assert [t.due_at for t in timers(decision)] == [3007.5]


def _first_retry_delay(saga_id: str, policy: RetryPolicy) -> float:
    definition = (
        Saga("jitter").remote("a", participant="svc", command="a", compensation="u", retry=policy)
    ).build()
    run = Run(definition, saga_id=saga_id)
    run(Begin())
    decision = run(err("a"), at=500.0)
    (timer,) = timers(decision)
    return timer.due_at - 500.0


def test_jitter_is_derived_from_instance_step_and_attempt() -> None:
    policy = RetryPolicy(max_attempts=3, initial_delay=10.0, backoff=2.0, jitter=0.5)
    first = _first_retry_delay("saga-1", policy)
    assert first == _first_retry_delay("saga-1", policy)  # reproducible
    assert first == pytest.approx(policy.delay(1, seed="saga-1:a:action"))
    assert 5.0 <= first <= 15.0
    others = {_first_retry_delay(f"saga-{i}", policy) for i in range(2, 12)}
    assert len(others) > 1  # spread across instances


def test_a_retry_timer_for_the_current_attempt_sends_it() -> None:
    run = Run(PLAIN)
    run(Begin(), err("a"))
    decision = run(retry_timer("a", 2))
    assert dispatches(decision) == [("a", A, 2)]
    assert run.step("a") is StepStatus.RUNNING


@pytest.mark.parametrize(
    "fired",
    [
        retry_timer("a", 2),  # already fired once: the step is running attempt 2
        retry_timer("a", 3),  # an attempt not due
        retry_timer("b", 1),  # a step not retrying
        timeout("a", 1),  # a timeout for an attempt that already answered
        timeout("b", 1),  # a timeout for a step never sent
        TimerFired(TimerKind.TIMEOUT, "a", C, 1),  # a compensation never started
        TimerFired(TimerKind.RETRY, "a", C, 2),
    ],
)
def test_stale_timers_change_nothing(fired: TimerFired) -> None:
    run = Run(PLAIN)
    run(Begin(), err("a"), retry_timer("a", 2))
    before = run.instance
    decision = run(fired)
    assert decision.history == () and decision.effects == () and decision.rejected is None
    assert decision.instance.steps == before.steps


def test_timer_for_unknown_step_is_rejected() -> None:
    run = Run(PLAIN)
    run(Begin())
    assert run.peek(timeout("zzz", 1)).rejected is not None


def test_timeout_of_the_current_attempt_counts_as_a_retryable_error() -> None:
    run = Run(PLAIN)
    run(Begin())
    decision = run(timeout("a", 1))
    assert kinds(decision)[0] is HistoryKind.TIMED_OUT
    assert run.step("a") is StepStatus.RETRYING
    # The answer of the timed-out attempt, arriving later, still counts if definite.
    run(ok("a", 1, result="late but fine"))
    assert run.step("a") is StepStatus.DONE and run.step("b") is StepStatus.RUNNING


def test_compensation_timers_current_and_stale() -> None:
    run, _ = action_compensating()
    # stale: a retry timer while the compensation is running
    assert run(retry_timer("b", 2, C)).history == ()
    d = run(timeout("b", 1, C))
    assert kinds(d)[0] is HistoryKind.TIMED_OUT
    comp = run.instance.step("b").compensation
    assert comp is not None and comp.status is CompensationStatus.RETRYING
    assert run(timeout("b", 1, C)).history == ()  # fired twice: stale
    d = run(retry_timer("b", 2, C))
    assert dispatches(d) == [("b", C, 2)]
    assert run(retry_timer("b", 2, C)).history == ()  # fired twice: stale


# -- backward: order, exhaustion, unknown outcomes ---------------------------------------------


def test_compensation_runs_in_strict_reverse_order() -> None:
    run = Run(PLAIN)
    run(Begin(), ok("a", result="A"), ok("b", result="B"))
    d = run(fail("c"))
    assert run.step("c") is StepStatus.FAILED
    assert dispatches(d) == [("b", C, 1)]  # c failed definitely: never compensated
    # b's compensation errors and is retried; a is not touched meanwhile.
    d = run(err("b", 1, C))
    assert dispatches(d) == []
    assert run.step("a") is StepStatus.DONE
    d = run(retry_timer("b", 2, C))
    assert dispatches(d) == [("b", C, 2)]
    d = run(ok("b", 2, C))
    assert dispatches(d) == [("a", C, 1)]
    d = run(ok("a", 1, C))
    assert run.status is SagaStatus.FAILED and CancelTimers(None) in d.effects
    assert run.instance.reason == "step 'c' failed: declined"
    order = [h.step for h in run.history if h.kind is HistoryKind.DISPATCHED and h.phase == C]
    assert order == ["b", "b", "a"]


def test_failure_of_the_first_step_fails_with_nothing_to_compensate() -> None:
    run = Run(PLAIN)
    run(Begin())
    decision = run(fail("a"))
    assert run.status is SagaStatus.FAILED and dispatches(decision) == []


def test_compensation_exhaustion_is_stuck_and_earlier_compensations_wait() -> None:
    run, _ = comp_running()
    run(err("b", 2, C), retry_timer("b", 3, C))
    d = run(timeout("b", 3, C))
    assert run.status is SagaStatus.STUCK and run.instance.stuck_step == "b"
    assert "exhausted" in (run.instance.stuck_reason or "")
    assert dispatches(d) == [] and run.step("a") is StepStatus.DONE
    # An operator retry grants a fresh budget of three attempts.
    d = run(Retry("participant fixed"))
    assert run.status is SagaStatus.COMPENSATING and dispatches(d) == [("b", C, 4)]
    d = run(err("b", 4, C))
    assert timers(d) and run.status is SagaStatus.COMPENSATING
    run(retry_timer("b", 5, C))
    d = run(ok("b", 5, C))
    assert dispatches(d) == [("a", C, 1)]
    run(ok("a", 1, C))
    assert run.status is SagaStatus.FAILED


def test_unknown_outcome_is_compensated_with_no_result() -> None:
    run = Run(PLAIN)
    run(Begin(), ok("a"), timeout("b", 1), retry_timer("b", 2), timeout("b", 2))
    run(retry_timer("b", 3))
    d = run(timeout("b", 3))
    state = run.instance.step("b")
    assert state.status is StepStatus.COMPENSATING and not state.outcome_known
    assert state.result is None
    assert dispatches(d) == [("b", C, 1)]
    assert run.instance.step("c").status is StepStatus.PENDING


def test_non_retryable_error_is_an_unknown_outcome_not_a_failure() -> None:
    run = Run(PLAIN)
    run(Begin(), ok("a"))
    d = run(err("b", retryable=False))
    assert not run.instance.step("b").outcome_known
    assert dispatches(d) == [("b", C, 1)]


# -- pivot and forward recovery (Semantics 8) -------------------------------------------------


def test_pivot_failure_compensates_the_steps_before_it() -> None:
    run = Run(PIVOTED)
    run(Begin(), ok("a"), ok("l"))
    d = run(fail("p"))
    assert run.status is SagaStatus.COMPENSATING
    assert run.step("p") is StepStatus.FAILED
    assert dispatches(d) == [("l", C, 1)]
    d = run(ok("l", 1, C))
    assert dispatches(d) == [("a", C, 1)]
    run(ok("a", 1, C))
    assert run.status is SagaStatus.FAILED


def test_pivot_unknown_outcome_is_stuck_not_compensated() -> None:
    run, _ = action_unknown()
    assert run.instance.stuck_step == "p"
    assert "unknown" in (run.instance.stuck_reason or "")
    assert run.step("a") is StepStatus.DONE and run.step("l") is StepStatus.DONE
    assert not any(h.phase == "compensation" for h in run.history)


def test_retry_of_a_stuck_pivot_sends_a_fresh_attempt_with_the_same_key() -> None:
    run, _ = action_unknown()
    d = run(Retry("bank is back"))
    (dispatch,) = [e for e in d.effects if isinstance(e, Dispatch)]
    assert (dispatch.step, dispatch.attempt, dispatch.idempotency_key) == ("p", 3, "s1:p:action")
    assert run.status is SagaStatus.PENDING and run.instance.step("p").budget_from == 2
    run(ok("p", 3))
    assert run.step("p") is StepStatus.DONE and run.instance.step("p").outcome_known
    assert run.instance.point_of_no_return == "p"


def test_retriable_step_exhaustion_is_stuck_with_an_unknown_outcome() -> None:
    run = Run(PIVOTED)
    run(Begin(), ok("a"), ok("l"), ok("p"), err("r", 1), retry_timer("r", 2))
    d = run(err("r", 2))
    assert run.status is SagaStatus.STUCK and run.instance.stuck_step == "r"
    assert run.step("r") is StepStatus.UNKNOWN and not run.instance.step("r").outcome_known
    assert "exhausted" in (run.instance.stuck_reason or "")
    assert dispatches(d) == []
    # retry: a fresh budget
    run(Retry("ops"))
    run(ok("r", 3), ok("s"))
    assert run.status is SagaStatus.COMPLETED


def test_retriable_step_definite_failure_is_stuck_never_compensated() -> None:
    run = Run(PIVOTED)
    run(Begin(), ok("a"), ok("l"), ok("p"))
    d = run(fail("r"))
    assert run.status is SagaStatus.STUCK and run.step("r") is StepStatus.FAILED
    assert dispatches(d) == []
    run(Resolve("r", "shipped by hand"))
    assert run.step("r") is StepStatus.RESOLVED and run.step("s") is StepStatus.RUNNING
    run(ok("s"))
    assert run.status is SagaStatus.COMPLETED


def test_retriable_step_without_pivot_is_the_point_of_no_return() -> None:
    run = Run(NO_PIVOT)
    run(Begin(), ok("a"))
    assert run.instance.point_of_no_return == "r"
    assert run(Abort("too late")).refused is not None
    run(DEADLINE)
    assert run.instance.deadline_passed and run.status is SagaStatus.PENDING


# -- abort and deadline (Semantics 8 and 9) ----------------------------------------------------


def test_abort_waits_for_the_in_flight_step_then_compensates_it() -> None:
    run = Run(PLAIN)
    run(Begin(), ok("a"))
    d = run(Abort("customer cancelled", by="alice"))
    assert run.status is SagaStatus.COMPENSATING and dispatches(d) == []
    assert run.instance.reason == "aborted: customer cancelled"
    op = next(h for h in d.history if h.kind is HistoryKind.OPERATOR)
    assert op.detail == {"command": "abort", "reason": "customer cancelled", "by": "alice"}
    d = run(ok("b", result="B"))
    assert dispatches(d) == [("b", C, 1)]  # completed in the meantime: compensated first
    d = run(ok("b", 1, C))
    assert dispatches(d) == [("a", C, 1)]
    run(ok("a", 1, C))
    assert run.status is SagaStatus.FAILED
    assert run.step("c") is StepStatus.PENDING  # never sent


def test_in_flight_step_timing_out_during_abort_has_an_unknown_outcome() -> None:
    run = Run(PLAIN)
    run(Begin(), ok("a"), Abort("stop"))
    d = run(timeout("b", 1))
    assert not run.instance.step("b").outcome_known
    assert dispatches(d) == [("b", C, 1)] and timers(d)[0].phase is C


def test_retryable_error_while_compensating_is_not_retried() -> None:
    run = Run(PLAIN)
    run(Begin(), ok("a"), Abort("stop"))
    d = run(err("b", 1))
    state = run.instance.step("b")
    assert state.status is StepStatus.COMPENSATING and not state.outcome_known
    assert [t.kind for t in timers(d)] == [TimerKind.TIMEOUT]  # the compensation's timeout only
    assert dispatches(d) == [("b", C, 1)]


def test_abort_cancels_retry_timers_and_compensates_the_retrying_step() -> None:
    run = Run(PLAIN)
    run(Begin(), ok("a"), err("b"))
    d = run(Abort("stop"))
    assert timer_name(TimerKind.RETRY, "b") in cancelled(d)
    assert run.step("b") is StepStatus.COMPENSATING
    assert dispatches(d) == [("b", C, 1)]
    assert run(retry_timer("b", 2)).history == ()  # the cancelled timer fired anyway: stale


def test_abort_before_anything_was_sent_fails_at_once() -> None:
    run = Run(PLAIN)
    d = run(Abort("never mind"))
    assert run.status is SagaStatus.FAILED and dispatches(d) == []
    assert not run(Begin()).changed


def test_pivot_in_flight_at_abort_that_succeeds_goes_forward() -> None:
    run = Run(PIVOTED)
    run(Begin(), ok("a"), ok("l"))
    run(Abort("stop"))
    assert run.status is SagaStatus.COMPENSATING
    d = run(ok("p"))
    assert run.status is SagaStatus.PENDING and run.instance.point_of_no_return == "p"
    assert dispatches(d) == [("r", A, 1)]
    assert SetTimer("deadline", TimerKind.DEADLINE, 1100.0) in timers(d)
    run(ok("r"), ok("s"))
    assert run.status is SagaStatus.COMPLETED
    assert not any(h.phase == "compensation" for h in run.history)


def test_pivot_in_flight_at_abort_that_fails_compensates() -> None:
    run = Run(PIVOTED)
    run(Begin(), ok("a"), ok("l"), Abort("stop"))
    d = run(fail("p"))
    assert dispatches(d) == [("l", C, 1)]


def test_pivot_in_flight_at_abort_that_times_out_is_stuck() -> None:
    run = Run(PIVOTED)
    run(Begin(), ok("a"), ok("l"), Abort("stop"))
    d = run(timeout("p", 1))
    assert run.status is SagaStatus.STUCK and run.instance.stuck_step == "p"
    assert dispatches(d) == []


def test_pivot_waiting_for_a_retry_at_abort_is_stuck_not_compensated_around() -> None:
    run = Run(PIVOTED)
    run(Begin(), ok("a"), ok("l"), timeout("p", 1))
    d = run(Abort("stop"))
    assert run.status is SagaStatus.STUCK and run.instance.stuck_step == "p"
    assert run.step("p") is StepStatus.UNKNOWN
    assert timer_name(TimerKind.RETRY, "p") in cancelled(d)
    assert dispatches(d) == []
    # The operator, knowing the charge did not happen, aborts again: now it compensates.
    d = run(Abort("bank confirms nothing was charged"))
    assert dispatches(d) == [("l", C, 1)]


def test_deadline_before_the_pivot_compensates() -> None:
    run = Run(PIVOTED)
    run(Begin(), ok("a"))
    d = run(DEADLINE, at=1100.0)
    assert run.instance.deadline_passed and run.status is SagaStatus.COMPENSATING
    assert run.instance.reason == "deadline passed"
    assert d.history[0].detail == {"action": "compensate"}
    assert dispatches(d) == []  # l is in flight (local): it is waited for
    d = run(ok("l"))
    assert dispatches(d) == [("l", C, 1)]
    assert not run(DEADLINE).changed  # a second firing changes nothing


def test_deadline_with_a_step_waiting_for_retry_compensates_it() -> None:
    run = Run(PIVOTED)
    run(Begin(), err("a"))
    d = run(DEADLINE)
    assert dispatches(d) == [("a", C, 1)]
    assert not run.instance.step("a").outcome_known


def test_deadline_after_the_pivot_only_flags() -> None:
    run = Run(PIVOTED)
    run(Begin(), ok("a"), ok("l"), ok("p"))
    d = run(DEADLINE)
    assert run.instance.deadline_passed and run.status is SagaStatus.PENDING
    assert d.history[0].detail == {"action": "flagged"} and d.effects == ()


def test_deadline_while_stuck_only_flags() -> None:
    run, _ = action_unknown()
    d = run(DEADLINE)
    assert run.instance.deadline_passed and run.status is SagaStatus.STUCK
    assert dispatches(d) == []


def test_deadline_with_the_pivot_in_flight_then_success_goes_forward() -> None:
    run = Run(PIVOTED)
    run(Begin(), ok("a"), ok("l"), DEADLINE)
    assert run.status is SagaStatus.COMPENSATING
    d = run(ok("p"))
    assert run.status is SagaStatus.PENDING and dispatches(d) == [("r", A, 1)]
    assert all(t.kind is not TimerKind.DEADLINE for t in timers(d))  # it has passed


@pytest.mark.parametrize("status", ["compensating", "completed", "failed"])
def test_deadline_is_ignored_once_compensating_or_finished(status: str) -> None:
    run = Run(PLAIN if status != "completed" else PIVOTED)
    run(Begin(), ok("a"))
    if status == "compensating":
        run(fail("b"))
    elif status == "failed":
        run(fail("b"), ok("a", 1, C))
    else:
        run(ok("l"), ok("p"), ok("r"), ok("s"))
    assert run.status.value == status
    assert not run(DEADLINE).changed


def test_deadline_on_a_started_instance_fails_it() -> None:
    run = Run(PIVOTED)
    run(DEADLINE)
    assert run.status is SagaStatus.FAILED


# -- operator commands in every status (Semantics 11) ------------------------------------------


def _in_status(status: str) -> Run:
    if status == "started":
        return Run(PIVOTED)
    if status == "pending":
        run = Run(PIVOTED)
        run(Begin(), ok("a"))
        return run
    if status == "pending past the pivot":
        run = Run(PIVOTED)
        run(Begin(), ok("a"), ok("l"), ok("p"))
        return run
    if status == "compensating":
        run = Run(PIVOTED)
        run(Begin(), ok("a"), ok("l"), fail("p"))
        return run
    if status == "completed":
        run = Run(PIVOTED)
        run(Begin(), ok("a"), ok("l"), ok("p"), ok("r"), ok("s"))
        return run
    if status == "failed":
        run = Run(PIVOTED)
        run(Begin(), fail("a"))
        return run
    if status == "stuck on the pivot":
        return action_unknown()[0]
    if status == "stuck past the pivot":
        run = Run(PIVOTED)
        run(Begin(), ok("a"), ok("l"), ok("p"), fail("r"))
        return run
    if status == "stuck compensating":
        run = Run(PIVOTED)
        run(Begin(), ok("a"), ok("l"), fail("p"), fail("l", 1, C))
        return run
    raise AssertionError(status)


STATUSES = [
    "started",
    "pending",
    "pending past the pivot",
    "compensating",
    "completed",
    "failed",
    "stuck on the pivot",
    "stuck past the pivot",
    "stuck compensating",
]

#: status -> (abort valid, retry valid, resolve of the stuck step valid)
COMMANDS: dict[str, tuple[bool, bool, bool]] = {
    "started": (True, False, False),
    "pending": (True, False, False),
    "pending past the pivot": (False, False, False),
    "compensating": (False, False, False),
    "completed": (False, False, False),
    "failed": (False, False, False),
    "stuck on the pivot": (True, True, True),
    "stuck past the pivot": (False, True, True),
    "stuck compensating": (False, True, True),
}

STUCK_ON = {"stuck on the pivot": "p", "stuck past the pivot": "r", "stuck compensating": "l"}


@pytest.mark.parametrize("command", ["abort", "retry", "resolve"])
@pytest.mark.parametrize("status", STATUSES)
def test_operator_commands_in_every_status(status: str, command: str) -> None:
    run = _in_status(status)
    valid = COMMANDS[status][("abort", "retry", "resolve").index(command)]
    event: Abort | Retry | Resolve
    if command == "abort":
        event = Abort("why", by="bob")
    elif command == "retry":
        event = Retry("why", by="bob")
    else:
        event = Resolve(STUCK_ON.get(status, "a"), "why", by="bob")
    before = run.instance
    assert (check_command(before, event) is None) is valid
    decision = run(event)
    if valid:
        assert decision.refused is None
        assert HistoryKind.OPERATOR in kinds(decision)
        op = next(h for h in decision.history if h.kind is HistoryKind.OPERATOR)
        assert op.detail["by"] == "bob" and op.detail["command"] == command
        assert decision.instance != before
    else:
        assert decision.refused is not None
        assert decision.refused == check_command(before, event)
        assert kinds(decision) == [HistoryKind.REFUSED]
        assert decision.history[0].detail["error"] == decision.refused
        assert decision.effects == ()
        assert replace(decision.instance, updated_at=before.updated_at) == before


def test_abort_past_the_point_of_no_return_says_why() -> None:
    run = _in_status("pending past the pivot")
    reason = check_command(run.instance, Abort("x"))
    assert reason is not None and "point of no return" in reason and "'p'" in reason


def test_resolve_on_the_wrong_step_is_refused() -> None:
    run = _in_status("stuck compensating")
    decision = run(Resolve("a", "wrong one"))
    assert decision.refused is not None and "'l'" in decision.refused
    assert run.status is SagaStatus.STUCK


def test_resolve_a_stuck_compensation_moves_on_to_the_earlier_ones() -> None:
    run = _in_status("stuck compensating")
    d = run(Resolve("l", "undone by hand"))
    assert run.step("l") is StepStatus.RESOLVED
    assert run.status is SagaStatus.COMPENSATING and dispatches(d) == [("a", C, 1)]
    run(ok("a", 1, C))
    assert run.status is SagaStatus.FAILED


def test_resolve_a_stuck_pivot_goes_forward() -> None:
    run = _in_status("stuck on the pivot")
    d = run(Resolve("p", "charged"))
    assert run.status is SagaStatus.PENDING and dispatches(d) == [("r", A, 1)]
    assert run.instance.point_of_no_return == "p"
    assert run(Abort("now?")).refused is not None


def test_abort_of_a_saga_stuck_on_an_unknown_pivot_compensates_before_it() -> None:
    run = _in_status("stuck on the pivot")
    d = run(Abort("the charge never happened"))
    assert dispatches(d) == [("l", C, 1)]
    assert run.step("p") is StepStatus.UNKNOWN  # a pivot is never compensated
