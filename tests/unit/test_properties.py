"""Property test of decide(): random event sequences against a faithful simulated world.

The world around an instance is simulated with no I/O:

* every dispatched command reaches its participant at least once (redeliveries included);
* participants honour idempotency keys through an inbox (Semantics 3 and 7): the first
  definite answer for a key is stored and sent again for every later attempt or duplicate;
  a retryable or non-retryable error stores nothing (the participant's transaction rolled
  back); a compensation that finds nothing to undo succeeds as a no-op, and an action that
  arrives after its compensation is refused with a failure;
* replies can be delayed, reordered and duplicated; they can arrive after a timeout;
* every timer set can fire, and timers that were cancelled, replaced or already fired can fire
  again (stale timers);
* operators abort, retry and resolve at any moment, valid or not;
* junk arrives: replies for attempts never sent.

After every event the instance must satisfy :func:`sagakit.testing.check_invariants`, a
step's result once done never changes, and a compensation once done stays done. After the
random prefix, the world is left to run on its own and the instance must settle (completed,
failed or stuck); a stuck instance is resolved by hand until it finishes. At the end, the
participants' books must agree with the outcome.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from hypothesis import event as observe
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sagakit import Phase, RetryPolicy, Saga, SagaDefinition, StepContext
from sagakit.state import (
    CompensationStatus,
    HistoryEntry,
    HistoryKind,
    SagaInstance,
    SagaStatus,
    StepStatus,
    evolve,
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
    decide,
    new_instance,
)

A = Phase.ACTION
C = Phase.COMPENSATION
TWO = RetryPolicy(max_attempts=2, initial_delay=1.0, backoff=2.0, max_delay=5.0, jitter=0.2)


async def _noop(ctx: StepContext[object]) -> None:
    return None


DEFINITIONS: dict[str, SagaDefinition] = {
    # compensatable steps only, remote and local mixed
    "plain": Saga("plain")
    .remote(
        "a",
        participant="svc",
        command="a",
        compensation="ua",
        timeout=5.0,
        retry=TWO,
        compensation_retry=TWO,
        compensation_timeout=5.0,
    )
    .local("b", _noop, compensation=_noop, retry=TWO, compensation_retry=TWO)
    .remote(
        "c",
        participant="svc",
        command="c",
        compensation="uc",
        timeout=5.0,
        retry=TWO,
        compensation_retry=TWO,
        compensation_timeout=5.0,
    )
    .build(),
    # compensatable, pivot, retriable, with a deadline
    "pivoted": Saga("pivoted", deadline=30.0)
    .remote(
        "a",
        participant="svc",
        command="a",
        compensation="ua",
        timeout=5.0,
        retry=TWO,
        compensation_retry=TWO,
    )
    .local("l", _noop, compensation=_noop, retry=TWO, compensation_retry=TWO)
    .remote("p", participant="bank", command="p", kind="pivot", timeout=5.0, retry=TWO)
    .remote("r", participant="ship", command="r", kind="retriable", timeout=5.0, retry=TWO)
    .build(),
    # no pivot: the retriable step is the point of no return
    "retriable": Saga("retriable", deadline=20.0)
    .remote(
        "a",
        participant="svc",
        command="a",
        compensation="ua",
        timeout=5.0,
        retry=TWO,
        compensation_retry=TWO,
    )
    .local("r", _noop, kind="retriable", retry=TWO)
    .build(),
}

# What a participant answers: a smooth world mostly succeeds (so sagas get past the pivot),
# a rough one fails and errs as often as it succeeds.
SMOOTH = ("success",) * 12 + ("failure", "error", "error", "fatal")
ROUGH = ("success", "success", "failure", "error", "error", "fatal")


@dataclass
class World:
    definition: SagaDefinition
    instance: SagaInstance
    now: float = 1000.0
    history: list[HistoryEntry] = field(default_factory=list)
    #: (step, phase, attempt, generation) of each command.
    commands: list[tuple[str, Phase, int, int]] = field(default_factory=list)  # not yet handled
    handled: list[tuple[str, Phase, int, int]] = field(default_factory=list)  # can come again
    replies: list[Reply] = field(default_factory=list)  # sent, not yet delivered
    delivered: list[Reply] = field(default_factory=list)  # can be delivered again
    timers: dict[str, SetTimer] = field(default_factory=dict)  # armed
    stale: list[SetTimer] = field(default_factory=list)  # cancelled, replaced or fired
    # Stored answers, by idempotency key: a step's phase in one of its generations.
    inbox: dict[tuple[str, Phase, int], Reply] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)  # action effects per step
    undone: dict[str, int] = field(default_factory=dict)  # compensation effects per step
    # (step, generation) compensated before their action.
    tombstones: set[tuple[str, int]] = field(default_factory=set)
    done_results: dict[str, object] = field(default_factory=dict)
    comp_done: set[str] = field(default_factory=set)
    forced: bool = False  # an operator aborted a stuck instance (their call, not ours)
    outcomes: tuple[str, ...] = SMOOTH
    abort_percent: int = 5  # chance, per abort move, that the operator aborts
    abort_after: int = 0  # the operator aborts only from this move on
    moves: int = 0

    # -- the instance ---------------------------------------------------------------------

    def apply(self, event: Event, *, advance: float = 0.1) -> Decision:
        self.now += advance
        before = self.instance
        decision = decide(before, event, self.definition, self.now)
        if decision.rejected is not None:
            assert decision.instance == before and not decision.history
            return decision
        stopped = (
            isinstance(event, Abort) and decision.refused is None
        ) or decision.instance.deadline_passed is not before.deadline_passed
        if stopped:
            self.forced = self.forced or before.status is SagaStatus.STUCK
            for state, step in zip(before.steps, self.definition.steps, strict=True):
                if state.status in (StepStatus.RUNNING, StepStatus.RETRYING):
                    what = "abort" if isinstance(event, Abort) else "deadline"
                    observe(f"{what} with a {step.kind.value} step {state.status.value}")
        if decision.refused is not None:
            assert decision.effects == ()
            assert decision.instance.steps == before.steps
            assert decision.instance.status is before.status
        self.instance = decision.instance
        self.history.extend(decision.history)
        for effect in decision.effects:
            if isinstance(effect, Dispatch):
                self.commands.append((effect.step, effect.phase, effect.attempt, effect.generation))
            elif isinstance(effect, SetTimer):
                if effect.name in self.timers:
                    self.stale.append(self.timers[effect.name])
                self.timers[effect.name] = effect
            elif isinstance(effect, CancelTimers):
                names = list(self.timers) if effect.names is None else list(effect.names)
                for name in names:
                    if name in self.timers:
                        self.stale.append(self.timers.pop(name))
        self.check()
        return decision

    def check(self) -> None:
        violations = check_invariants(self.instance, self.definition, self.history)
        assert not violations, violations
        for state in self.instance.steps:
            if state.name in self.done_results:
                # Nothing is applied twice: a done step's result never changes, and it never
                # runs again.
                assert state.result == self.done_results[state.name], state
                assert state.status in (
                    StepStatus.DONE,
                    StepStatus.COMPENSATING,
                    StepStatus.COMPENSATED,
                    StepStatus.RESOLVED,
                ), state
            elif state.status is StepStatus.DONE:
                self.done_results[state.name] = state.result
            comp = state.compensation
            if state.name in self.comp_done:
                assert comp is not None and comp.status is CompensationStatus.DONE, state
            elif comp is not None and comp.status is CompensationStatus.DONE:
                self.comp_done.add(state.name)

    # -- the participants -----------------------------------------------------------------

    def handle(self, command: tuple[str, Phase, int, int], choice: int) -> None:
        """A participant (or the worker, for a local step) handles a command."""
        step, phase, attempt, generation = command
        key = (step, phase, generation)
        stored = self.inbox.get(key)
        if stored is not None:  # a duplicate: the stored answer again, nothing re-run
            self.replies.append(
                Reply(
                    step,
                    phase,
                    attempt,
                    stored.outcome,
                    stored.result,
                    stored.error,
                    generation=generation,
                )
            )
            return
        outcome = self.outcomes[choice % len(self.outcomes)]
        if phase is A and (step, generation) in self.tombstones:
            outcome = "refused"  # Semantics 7: an action after its own compensation
        if outcome in ("success", "failure", "refused"):
            if outcome == "success":
                if phase is A:
                    self.applied[step] = self.applied.get(step, 0) + 1
                    result: object = f"{step}-result"
                else:
                    if self.applied.get(step, 0):
                        self.undone[step] = self.undone.get(step, 0) + 1
                    else:
                        self.tombstones.add((step, generation))  # nothing to undo: a no-op
                    result = None
                reply = Reply(
                    step,
                    phase,
                    attempt,
                    Outcome.SUCCESS,
                    result,  # type: ignore[arg-type]
                    generation=generation,
                )
            else:
                reply = Reply(
                    step, phase, attempt, Outcome.FAILURE, error=outcome, generation=generation
                )
            self.inbox[key] = reply
        else:
            reply = Reply(
                step,
                phase,
                attempt,
                Outcome.ERROR,
                error=outcome,
                retryable=outcome == "error",
                generation=generation,
            )
        self.replies.append(reply)

    # -- one random move ------------------------------------------------------------------

    def move(self, op: int, arg: int) -> None:
        """One thing happens; ``op`` picks what (most often a command handled or a reply
        delivered), ``arg`` picks which and how."""
        steps = [s.name for s in self.definition.steps]
        self.moves += 1
        if op <= 3 and self.commands:
            command = self.commands.pop(arg % len(self.commands))
            self.handled.append(command)
            self.handle(command, arg // 7)
        elif 4 <= op <= 7 and self.replies:
            reply = self.replies.pop(arg % len(self.replies))
            self.delivered.append(reply)
            self.apply(reply)
        elif op == 8 and self.handled:  # a redelivered command
            self.handle(self.handled[arg % len(self.handled)], arg // 7)
        elif op == 9 and self.delivered:  # a duplicated reply
            self.apply(self.delivered[arg % len(self.delivered)])
        elif op in (10, 11) and self.timers:
            # Any timer already due (in any order); now and then, when none is, time moves on
            # to the next one (everything else is slower than that).
            names = sorted(self.timers, key=lambda n: (self.timers[n].due_at, n))
            due = [n for n in names if self.timers[n].due_at <= self.now]
            if due:
                self.fire(due[arg % len(due)])
            elif arg % 4 == 0:
                self.fire(names[0])
        elif op == 12 and self.stale:
            timer = self.stale[arg % len(self.stale)]
            self.apply(TimerFired(timer.kind, timer.step, timer.phase, timer.attempt))
        elif op == 13 and self.moves >= self.abort_after and arg % 100 < self.abort_percent:
            self.apply(Abort("random abort"))
        elif op == 14 and arg % 2:
            self.apply(Retry("random retry"))
        elif op == 14:
            target = self.instance.stuck_step if arg % 4 == 0 else None
            self.apply(Resolve(target or steps[(arg // 4) % len(steps)], "random resolve"))
        elif op == 15:  # junk: an answer for an attempt never sent
            state = self.instance.steps[arg % len(steps)]
            phase = A if arg % 2 else C
            sent = (
                state.attempts
                if phase is A
                else (state.compensation.attempts if state.compensation else 0)
            )
            junk = Reply(state.name, phase, sent + 1, Outcome.SUCCESS, generation=state.generation)
            decision = self.apply(junk)
            assert decision.rejected is not None

    def fire(self, name: str) -> None:
        timer = self.timers.pop(name)
        self.stale.append(timer)
        self.apply(
            TimerFired(timer.kind, timer.step, timer.phase, timer.attempt),
            advance=max(0.0, timer.due_at - self.now),
        )

    # -- letting the world run on its own -------------------------------------------------

    def settle(self, rng: random.Random, limit: int = 300) -> None:
        """Deliver everything, fire due timers, until the instance settles."""
        for _ in range(limit):
            if self.instance.status.settled:
                return
            if self.commands:
                command = self.commands.pop(0)
                self.handled.append(command)
                self.handle(command, rng.randrange(len(self.outcomes)))
            elif self.replies:
                reply = self.replies.pop(rng.randrange(len(self.replies)))
                self.delivered.append(reply)
                self.apply(reply)
            elif self.timers:
                self.fire(min(self.timers, key=lambda n: self.timers[n].due_at))
            else:
                raise AssertionError(
                    f"{self.instance.status.value} and nothing left to move it: "
                    f"{self.instance.steps}"
                )
        raise AssertionError(f"did not settle in {limit} events: {self.instance}")

    def finish(self, rng: random.Random) -> None:
        """Settle, resolving by hand whatever the instance gets stuck on, until it ends."""
        for _ in range(3 * len(self.definition.steps) + 2):
            self.settle(rng)
            if self.instance.status.terminal:
                return
            stuck = self.instance.stuck_step
            assert stuck is not None
            decision = self.apply(Resolve(stuck, "settled by hand"))
            assert decision.refused is None, decision.refused
        raise AssertionError(f"still not finished: {self.instance}")

    def check_books(self) -> None:
        """The participants' books agree with how the instance ended."""
        status = self.instance.status
        assert status.terminal
        assert not self.timers, f"timers left behind: {sorted(self.timers)}"
        resolved = {s.name for s in self.instance.steps if s.status is StepStatus.RESOLVED}
        for step in self.definition.steps:
            name = step.name
            assert self.applied.get(name, 0) <= 1 and self.undone.get(name, 0) <= 1
            effect = self.applied.get(name, 0) - self.undone.get(name, 0)
            if status is SagaStatus.COMPLETED and name not in resolved:
                assert effect == 1, f"{name}: completed without its effect"
            if status is SagaStatus.FAILED and name not in resolved and not self.forced:
                assert effect == 0, f"{name}: failed with its effect standing"


def run_world(
    name: str,
    moves: list[tuple[int, int]],
    seed: int,
    rough: bool,
    abort_percent: int,
    abort_after: int,
) -> None:
    definition = DEFINITIONS[name]
    world = World(
        definition,
        new_instance(
            definition,
            saga_id=f"saga-{seed}",
            data={"n": seed},
            correlation_id=None,
            idempotency_key=None,
            input_digest="",
            now=1000.0,
        ),
        outcomes=ROUGH if rough else SMOOTH,
        abort_percent=abort_percent,
        abort_after=abort_after,
    )
    world.apply(Begin())
    for op, arg in moves:
        world.move(op, arg)
    observe(f"after the random events: {world.instance.status.value}")
    world.finish(random.Random(seed))
    world.check_books()
    observe(f"finally: {world.instance.status.value}")


MOVES = st.lists(
    st.tuples(st.sampled_from(range(16)), st.integers(0, 10_000)), min_size=15, max_size=50
)
WORLD = {
    "moves": MOVES,
    "seed": st.integers(0, 2**16),
    "rough": st.booleans(),
    "abort_percent": st.sampled_from([0, 10, 100]),
    "abort_after": st.integers(0, 40),
}
PAD = [(15, 1)] * 15  # answers for attempts never sent: rejected, they change nothing
TO_THE_PIVOT = [(0, 0), (4, 0), (0, 0), (4, 0)]  # a and l succeed; the pivot is sent
SETTINGS = settings(max_examples=200, deadline=None)


@SETTINGS
@given(**WORLD)
def test_plain_saga_under_random_events(
    moves: list[tuple[int, int]], seed: int, rough: bool, abort_percent: int, abort_after: int
) -> None:
    run_world("plain", moves, seed, rough, abort_percent, abort_after)


@SETTINGS
@given(**WORLD)
# Aborted while the pivot is in flight; the pivot then succeeds: the saga goes forward.
@example([*TO_THE_PIVOT, (13, 0), (0, 0), (4, 0), *PAD], 0, False, 100, 0)
# The pivot took effect but its reply is slow; it times out and waits for a retry when the
# saga is aborted: stuck, the steps before it are not compensated.
@example([*TO_THE_PIVOT, (0, 0), (10, 0), (13, 0), *PAD], 0, False, 100, 0)
def test_pivoted_saga_under_random_events(
    moves: list[tuple[int, int]], seed: int, rough: bool, abort_percent: int, abort_after: int
) -> None:
    run_world("pivoted", moves, seed, rough, abort_percent, abort_after)


@SETTINGS
@given(**WORLD)
def test_retriable_saga_under_random_events(
    moves: list[tuple[int, int]], seed: int, rough: bool, abort_percent: int, abort_after: int
) -> None:
    run_world("retriable", moves, seed, rough, abort_percent, abort_after)


@settings(max_examples=500, deadline=None)
@given(name=st.sampled_from(sorted(DEFINITIONS)), seed=st.integers(0, 2**32 - 1))
def test_uniform_random_walks(name: str, seed: int) -> None:
    """Breadth: every move and its timing drawn uniformly from one seed (hypothesis draws
    small, structured cases; these reach the rarer interleavings, such as an abort while the
    pivot is in flight). A failure names the seed to replay."""
    rng = random.Random(seed)
    moves = [(rng.randrange(16), rng.randrange(10_000)) for _ in range(rng.randrange(15, 80))]
    run_world(
        name,
        moves,
        seed,
        rough=rng.random() < 0.5,
        abort_percent=rng.choice([0, 10, 100]),
        abort_after=rng.randrange(41),
    )


# -- the checker itself catches what it should ------------------------------------------------


def _world(name: str) -> World:
    definition = DEFINITIONS[name]
    instance = new_instance(
        definition,
        saga_id="w",
        data=None,
        correlation_id=None,
        idempotency_key=None,
        input_digest="",
        now=0.0,
    )
    world = World(definition, instance)
    world.apply(Begin())
    return world


def _entry(
    kind: HistoryKind, step: str | None = None, phase: Phase | None = None, **detail: str
) -> HistoryEntry:
    return HistoryEntry(0.0, kind, step, phase.value if phase else None, 1, dict(detail))


def _violations(world: World, instance: SagaInstance | None = None) -> list[str]:
    return check_invariants(instance or world.instance, world.definition, world.history)


def test_checker_flags_a_completed_saga_with_a_step_not_done() -> None:
    world = _world("plain")
    bad = replace(world.instance, status=SagaStatus.COMPLETED)
    assert any("not done or resolved" in v for v in _violations(world, bad))


def test_checker_flags_a_failed_saga_with_a_completed_step_not_compensated() -> None:
    world = _world("plain")
    world.apply(Reply("a", A, 1, Outcome.SUCCESS))
    bad = replace(
        evolve(
            world.instance,
            steps=(
                world.instance.steps[0],
                evolve(world.instance.steps[1], status=StepStatus.PENDING, attempts=0),
                *world.instance.steps[2:],
            ),
        ),
        status=SagaStatus.FAILED,
        failure_reason="x",
    )
    assert any("'a' (done) was not compensated" in v for v in _violations(world, bad))


def test_checker_flags_stuck_without_step_or_reason_and_a_foreign_definition() -> None:
    world = _world("plain")
    bad = replace(world.instance, status=SagaStatus.STUCK)
    found = _violations(world, bad)
    assert "stuck without a reason" in found and "stuck without a step" in found
    other = check_invariants(world.instance, DEFINITIONS["pivoted"], world.history)
    assert other and "fingerprint" in other[0]


def test_checker_flags_compensations_out_of_reverse_order() -> None:
    world = _world("plain")
    world.history = [
        _entry(HistoryKind.DISPATCHED, "a", A),
        _entry(HistoryKind.REPLY, "a", A, outcome="success"),
        _entry(HistoryKind.DISPATCHED, "b", A),
        _entry(HistoryKind.REPLY, "b", A, outcome="success"),
        _entry(HistoryKind.DISPATCHED, "a", C),  # before b's compensation
        _entry(HistoryKind.DISPATCHED, "b", C),
        _entry(HistoryKind.REPLY, "b", C, outcome="success"),
        _entry(HistoryKind.DISPATCHED, "c", A),  # an action after compensation began
    ]
    found = _violations(world)
    assert any("before the compensation of later step 'b'" in v for v in found), found
    assert any("after that of earlier step 'a'" in v for v in found), found
    assert any("'c' dispatched after compensation began" in v for v in found), found


def test_checker_flags_effects_applied_twice_and_compensation_past_the_pivot() -> None:
    world = _world("pivoted")
    world.history = [
        _entry(HistoryKind.DISPATCHED, "a", A),
        _entry(HistoryKind.REPLY, "a", A, outcome="success"),
        _entry(HistoryKind.REPLY, "a", A, outcome="success"),
        _entry(HistoryKind.DISPATCHED, "p", A),
        _entry(HistoryKind.REPLY, "p", A, outcome="success"),
        _entry(HistoryKind.OPERATOR, command="abort"),
        _entry(HistoryKind.DISPATCHED, "a", C),
        _entry(HistoryKind.REPLY, "a", C, outcome="success"),
        _entry(HistoryKind.REPLY, "a", C, outcome="success"),
        _entry(HistoryKind.STATUS, to="failed"),
        _entry(HistoryKind.DISPATCHED, "r", A),
    ]
    found = " | ".join(_violations(world))
    assert "step 'a' succeeded twice" in found
    assert "abort accepted past the point of no return" in found
    assert "compensation of step 'a' dispatched past the point of no return" in found
    assert "compensation of step 'a' was applied twice" in found
    assert "failed past the point of no return" in found
    assert "dispatched after the saga was failed" in found
