"""Step generations (Semantics 2): an operator's retry of a step that definitely failed runs it
again under keys of its own; a step whose outcome is unknown keeps its key. Pure core: decide()
and the stored row of an instance."""

from __future__ import annotations

import json

import pytest

from sagakit import Phase, RetryPolicy, Saga, SagaDefinition, StepContext
from sagakit.effects import generation_of
from sagakit.operator_commands import retry_generation
from sagakit.state import (
    CompensationState,
    CompensationStatus,
    HistoryKind,
    SagaInstance,
    SagaStatus,
    StepState,
    StepStatus,
)
from sagakit.storage.rows import instance_from_row, state_text
from sagakit.testing import check_invariants
from sagakit.transitions import (
    Begin,
    Decision,
    Dispatch,
    Event,
    Outcome,
    Reply,
    Retry,
    TimerFired,
    TimerKind,
    decide,
    idempotency_key,
    new_instance,
)

A = Phase.ACTION
C = Phase.COMPENSATION
ONE = RetryPolicy(max_attempts=1, jitter=0.0)


async def _noop(ctx: StepContext[object]) -> None:
    return None


def definition() -> SagaDefinition:
    """a (remote, compensatable), p (remote pivot), r (remote retriable), s (local retriable)."""
    return (
        Saga("gens")
        .remote("a", participant="svc", command="a.do", compensation="a.undo", retry=ONE)
        .remote("p", participant="bank", command="p.charge", kind="pivot", retry=ONE)
        .remote("r", participant="ship", command="r.ship", kind="retriable", retry=ONE)
        .local("s", _noop, kind="retriable", retry=ONE)
        .build()
    )


DEFINITION = definition()


class Run:
    def __init__(self) -> None:
        self.now = 1000.0
        self.instance = new_instance(
            DEFINITION,
            saga_id="s1",
            data={},
            correlation_id=None,
            idempotency_key=None,
            input_digest="",
            now=self.now,
        )
        self.history: list[object] = []

    def __call__(self, event: Event) -> Decision:
        self.now += 1.0
        decision = decide(self.instance, event, DEFINITION, self.now)
        if decision.rejected is None:
            self.instance = decision.instance
            self.history.extend(decision.history)
        violations = check_invariants(self.instance, DEFINITION, self.history)  # type: ignore[arg-type]
        assert not violations, violations
        return decision


def ok(step: str, attempt: int, generation: int = 1) -> Reply:
    return Reply(step, A, attempt, Outcome.SUCCESS, result=step, generation=generation)


def failed(step: str, attempt: int, generation: int = 1) -> Reply:
    return Reply(step, A, attempt, Outcome.FAILURE, error="no", generation=generation)


def dispatch(decision: Decision) -> Dispatch:
    [sent] = [e for e in decision.effects if isinstance(e, Dispatch)]
    return sent


def stuck_on_r_failed() -> Run:
    run = Run()
    run(Begin())
    run(ok("a", 1))
    run(ok("p", 1))
    run(failed("r", 1))
    assert run.instance.status is SagaStatus.STUCK and run.instance.stuck_step == "r"
    assert run.instance.step("r").status is StepStatus.FAILED
    return run


def test_a_retry_of_a_definite_failure_starts_a_new_generation_with_its_own_key() -> None:
    run = stuck_on_r_failed()
    decision = run(Retry("the carrier is back", by="ops"))
    sent = dispatch(decision)
    assert (sent.step, sent.attempt, sent.generation) == ("r", 2, 2)
    assert sent.idempotency_key == "s1:r:action:g2"
    assert run.instance.step("r").generation == 2
    operator, *_, dispatched = decision.history
    assert operator.kind is HistoryKind.OPERATOR and operator.detail["generation"] == 2
    assert dispatched.kind is HistoryKind.DISPATCHED and dispatched.detail == {"generation": 2}
    # The first generation's failure, delivered again, is only recorded: it answers the old key.
    late = run(failed("r", 1))
    assert [h.kind for h in late.history] == [HistoryKind.LATE_REPLY]
    assert late.history[0].detail == {"outcome": "failure", "error": "no"}
    assert run.instance.step("r").status is StepStatus.RUNNING
    # The new generation's answer applies.
    run(ok("r", 2, generation=2))
    assert run.instance.step("r").status is StepStatus.DONE


def test_the_new_generation_s_answers_and_the_next_step_go_on() -> None:
    run = stuck_on_r_failed()
    run(Retry("again"))
    decision = run(ok("r", 2, generation=2))
    assert dispatch(decision).step == "s"
    assert dispatch(decision).idempotency_key == "s1:s:action"  # s keeps generation 1
    run(ok("s", 1))
    assert run.instance.status is SagaStatus.COMPLETED
    # A reply of a generation that was never begun is dead-lettered.
    never = run(ok("r", 2, generation=3))
    assert never.rejected == "reply for generation 3 attempt 2 of step 'r', never sent"


def test_a_retry_of_an_unknown_outcome_keeps_the_generation_and_the_key() -> None:
    run = Run()
    run(Begin())
    run(ok("a", 1))
    run(ok("p", 1))
    run(TimerFired(TimerKind.TIMEOUT, "r", A, 1))  # no answer: the outcome is unknown
    assert run.instance.status is SagaStatus.STUCK
    decision = run(Retry("ask again"))
    sent = dispatch(decision)
    assert (sent.attempt, sent.generation, sent.idempotency_key) == (2, 1, "s1:r:action")
    operator = decision.history[0]
    assert "generation" not in operator.detail
    # The participant that did it answers attempt 2 from its inbox: the stored success.
    run(ok("r", 2))
    assert run.instance.step("r").status is StepStatus.DONE


def test_a_retry_of_a_stuck_compensation_keeps_its_key() -> None:
    run = Run()
    run(Begin())
    run(ok("a", 1))
    run(failed("p", 1))  # the pivot failed: a is compensated
    run(Reply("a", C, 1, Outcome.ERROR, error="down", retryable=False))
    assert run.instance.status is SagaStatus.STUCK
    sent = dispatch(run(Retry("again")))
    assert (sent.phase, sent.generation, sent.idempotency_key) == (C, 1, "s1:a:compensation")


def test_a_local_step_of_a_new_generation_gets_the_new_key() -> None:
    run = Run()
    run(Begin())
    for step in ("a", "p", "r"):
        run(ok(step, 1))
    run(failed("s", 1))
    sent = dispatch(run(Retry("again")))
    assert (sent.step, sent.generation, sent.idempotency_key) == ("s", 2, "s1:s:action:g2")


@pytest.mark.parametrize(
    ("status", "generation"),
    [
        (StepStatus.FAILED, 3),
        (StepStatus.COMPENSATED, 3),
        (StepStatus.UNKNOWN, 2),
        (StepStatus.DONE, 2),
        (StepStatus.RESOLVED, 2),
    ],
)
def test_which_steps_an_operator_s_retry_gives_a_new_generation(
    status: StepStatus, generation: int
) -> None:
    assert retry_generation(StepState("x", status, generation=2)) == generation


def test_keys_name_their_generation_from_the_second_on() -> None:
    assert idempotency_key("s1", "pay", A) == "s1:pay:action"
    assert idempotency_key("s1", "pay", C, 1) == "s1:pay:compensation"
    assert idempotency_key("s1", "pay", C, 12) == "s1:pay:compensation:g12"
    for key, generation in [
        ("s1:pay:action", 1),
        ("s1:pay:action:g2", 2),
        ("s1:pay:compensation:g12", 12),
        ("s1:pay:action:gx", 1),
        ("s1:pay:action:g", 1),
        ("s1:pay:action:g٣", 1),  # an Arabic-Indic digit is not a generation
        ("opaque", 1),
    ]:
        assert generation_of(key) == generation, key


# -- the stored row ------------------------------------------------------------------------


def stored(instance: SagaInstance) -> SagaInstance:
    row = (
        instance.saga_id,
        instance.saga_type,
        instance.version,
        instance.fingerprint,
        instance.status.value,
        instance.correlation_id,
        instance.idempotency_key,
        instance.created_at,
        instance.updated_at,
        instance.revision,
        state_text(instance),
        instance.owner,
    )
    return instance_from_row(row)


def test_a_generation_is_stored_and_rows_of_generation_one_are_unchanged() -> None:
    run = stuck_on_r_failed()
    before = json.loads(state_text(run.instance))["steps"]
    assert {len(step) for step in before} == {8}  # the row every earlier sagakit wrote
    run(Retry("again"))
    steps = json.loads(state_text(run.instance))["steps"]
    assert [len(step) for step in steps] == [8, 8, 9, 8] and steps[2][8] == 2
    assert stored(run.instance) == run.instance


def test_a_row_written_before_generations_is_read_as_generation_one() -> None:
    old = {
        "data": {"n": 1},
        "steps": [
            ["a", "compensated", 1, 0, {"x": 1}, None, True, ["done", 1, 0, None]],
            ["p", "failed", 2, 1, None, "no", True, None],
        ],
        "reason": "step 'p' failed: no",
        "stuck_reason": None,
        "stuck_step": None,
        "deadline_at": None,
        "deadline_passed": False,
        "point_of_no_return": None,
        "input_digest": "",
    }
    row = ("s1", "gens", 1, "fp", "failed", "c", None, 1.0, 2.0, 5, json.dumps(old), None)
    instance = instance_from_row(row)
    assert [s.generation for s in instance.steps] == [1, 1]
    assert instance.steps[0] == StepState(
        "a",
        StepStatus.COMPENSATED,
        1,
        0,
        {"x": 1},
        None,
        True,
        CompensationState(CompensationStatus.DONE, 1, 0, None),
    )
    assert json.loads(state_text(instance))["steps"] == old["steps"]
