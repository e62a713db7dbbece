"""Definition validation (A4): every rule that refuses a definition, each error naming the saga
and, for a rule about one step, that step.

Rules are checked when a definition is built (``SagaDefinition.__post_init__``, so
``Saga.build()`` too), some earlier by the builder, and the rest when an :class:`App` registers
the definitions. The table below holds one case per rule and per place it applies; a valid
definition of every kind in order closes the file.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from sagakit import App, Saga, StepContext
from sagakit.definition import (
    Local,
    Remote,
    RetryPolicy,
    SagaDefinition,
    Step,
    StepKind,
)
from sagakit.errors import DefinitionError
from sagakit.participant import Participant
from sagakit.ports import ParticipantTx

SAGA = "order"


async def act(ctx: StepContext[Any]) -> None:
    return None


def blocking(ctx: StepContext[Any]) -> None:
    return None


LOCAL = Local(act)


def step(
    name: str,
    kind: StepKind = StepKind.COMPENSATABLE,
    *,
    compensated: bool | None = None,
    **options: Any,
) -> Step:
    """A valid step of ``kind`` unless ``options`` say otherwise: compensated when (and only
    when) it is compensatable, unless ``compensated`` says otherwise."""
    if compensated is None:
        compensated = kind is StepKind.COMPENSATABLE
    options.setdefault("action", LOCAL)
    options.setdefault("compensation", LOCAL if compensated else None)
    return Step(name, kind=kind, **options)


def definition(*steps: Step, **options: Any) -> SagaDefinition:
    options.setdefault("name", SAGA)
    options.setdefault("version", 1)
    return SagaDefinition(steps=tuple(steps), **options)


def saga(*steps: Step, **options: Any) -> Callable[[], object]:
    """Builds the definition of ``steps`` when called."""
    return lambda: definition(*steps, **options)


C, P, R = StepKind.COMPENSATABLE, StepKind.PIVOT, StepKind.RETRIABLE


@dataclass(frozen=True)
class Case:
    """A definition that breaks one rule: building it is refused, naming ``step`` (None for a
    rule about the whole saga) and saying ``rule``."""

    id: str
    build: Callable[[], object]
    step: str | None
    rule: str
    names_saga: bool = True


def _builder(fill: Callable[[Saga[Any]], object]) -> Callable[[], object]:
    def build() -> object:
        builder: Saga[Any] = Saga(SAGA)
        fill(builder)
        return builder.build()

    return build


def _decorated_blocking_step(builder: Saga[Any]) -> None:
    builder.step("charge")(blocking)  # type: ignore[arg-type]


async def _reserve(tx: ParticipantTx, cmd: object) -> object:
    return None


def _timed(which: str, seconds: float) -> Step:
    options: dict[str, Any] = {which: seconds}
    return step("a", **options)


def _registered(
    *sagas: SagaDefinition | Saga[Any], participants: tuple[Participant, ...] = ()
) -> Callable[[], object]:
    return lambda: App(sagas=list(sagas), participants=list(participants))


def _inventory() -> Participant:
    participant = Participant("inventory")
    participant.command("inventory.reserve")(_reserve)
    return participant


def _remote_saga(command: str, compensation: str | None = None) -> Saga[Any]:
    """One remote step to the inventory: compensatable when given a compensation, else the
    pivot (valid either way)."""
    built: Saga[Any] = Saga(SAGA)
    built.remote(
        "reserve",
        participant="inventory",
        command=command,
        compensation=compensation,
        kind=C if compensation else P,
    )
    return built


BAD_POLICIES = [
    ("no attempts", RetryPolicy(max_attempts=0), "max_attempts must be at least 1"),
    ("negative initial delay", RetryPolicy(initial_delay=-1.0), "delays must be >= 0"),
    ("negative max delay", RetryPolicy(max_delay=-0.5), "delays must be >= 0"),
    ("shrinking backoff", RetryPolicy(backoff=0.5), "delays must be >= 0 and backoff >= 1"),
    ("negative jitter", RetryPolicy(jitter=-0.1), "jitter must be between 0 and 1"),
    ("jitter above one", RetryPolicy(jitter=1.5), "jitter must be between 0 and 1"),
    ("NaN jitter", RetryPolicy(jitter=math.nan), "jitter must be between 0 and 1"),
]

CASES = [
    # -- the saga as a whole ---------------------------------------------------------------
    Case("empty saga name", saga(step("a"), name=""), None, "a saga needs a non-empty name", False),
    Case("zero version", saga(step("a"), version=0), None, "version must be a positive integer"),
    Case("non-int version", saga(step("a"), version=1.5), None, "version must be a positive"),
    Case("no steps", saga(), None, "a saga needs at least one step"),
    Case("zero deadline", saga(step("a"), deadline=0.0), None, "deadline must be positive"),
    Case("negative deadline", saga(step("a"), deadline=-5.0), None, "deadline must be positive"),
    # -- names ------------------------------------------------------------------------------
    Case("empty step name", saga(step("")), "", "must be non-empty and contain no ':'"),
    Case("colon in a step name", saga(step("a:b")), "a:b", "contain no ':'"),
    Case("duplicate step", saga(step("a"), step("b"), step("a")), "a", "duplicate step name"),
    Case(
        "duplicate step in the builder",
        _builder(lambda b: b.local("a", act, compensation=act).local("a", act, compensation=act)),
        "a",
        "duplicate step name",
    ),
    Case(
        "compensation of an undeclared step",
        _builder(lambda b: b.compensate("ghost")(act)),
        "ghost",
        "compensation for unknown step",
    ),
    # -- handlers ---------------------------------------------------------------------------
    Case(
        "blocking local action",
        saga(step("a", action=Local(blocking))),  # type: ignore[arg-type]
        "a",
        "action: a local handler must be an async function",
    ),
    Case(
        "blocking local compensation",
        saga(step("a", compensation=Local(blocking))),  # type: ignore[arg-type]
        "a",
        "compensation: a local handler must be an async function",
    ),
    Case(
        "blocking function decorated as a step",
        _builder(_decorated_blocking_step),
        "charge",
        "must be an async function",
    ),
    Case(
        "remote action without participant",
        saga(step("a", action=Remote("", "inventory.reserve"))),
        "a",
        "action: a remote handler needs a participant and a command",
    ),
    Case(
        "remote action without command",
        saga(step("a", action=Remote("inventory", ""))),
        "a",
        "a remote handler needs a participant and a command",
    ),
    Case(
        "remote compensation without command",
        saga(step("a", compensation=Remote("inventory", ""))),
        "a",
        "compensation: a remote handler needs a participant and a command",
    ),
    Case(
        "action that is no handler",
        saga(step("a", action="inventory.reserve")),
        "a",
        "action: unknown handler",
    ),
    Case(
        "compensation that is no handler",
        saga(step("a", compensation=act)),
        "a",
        "compensation: unknown handler",
    ),
    # -- timeouts ---------------------------------------------------------------------------
    *(
        Case(f"{which} {value}", saga(_timed(which, value)), "a", "timeouts must be positive")
        for which in ("timeout", "compensation_timeout")
        for value in (0.0, -1.0, math.nan)
    ),
    # -- retry policies ---------------------------------------------------------------------
    *(
        Case(f"retry: {label}", saga(step("a", retry=policy)), "a", f"retry policy: {rule}")
        for label, policy, rule in BAD_POLICIES
    ),
    *(
        Case(
            f"compensation retry: {label}",
            saga(step("a", compensation_retry=policy)),
            "a",
            f"compensation retry policy: {rule}",
        )
        for label, policy, rule in BAD_POLICIES
    ),
    # -- step kinds and their order -----------------------------------------------------------
    Case(
        "compensatable step without compensation",
        saga(step("a", compensated=False)),
        "a",
        "a compensatable step needs a compensation",
    ),
    Case(
        "compensatable step after the pivot",
        saga(step("a"), step("pay", P), step("b")),
        "b",
        "steps after the pivot or a retriable step ('pay') must be retriable",
    ),
    Case(
        "compensatable step after a retriable one",
        saga(step("a"), step("mail", R), step("b")),
        "b",
        "steps after the pivot or a retriable step ('mail') must be retriable",
    ),
    Case(
        "compensated pivot",
        saga(step("a"), step("pay", P, compensated=True)),
        "pay",
        "a pivot is never compensated",
    ),
    Case(
        "second pivot",
        saga(step("pay", P), step("ship", P)),
        "ship",
        "a saga has at most one pivot ('pay')",
    ),
    Case(
        "pivot after a retriable step",
        saga(step("mail", R), step("pay", P)),
        "pay",
        "the pivot must come before retriable steps ('mail')",
    ),
    Case(
        "compensated retriable step",
        saga(step("pay", P), step("mail", R, compensated=True)),
        "mail",
        "a retriable step is never compensated",
    ),
    Case(
        "kind that is no StepKind",
        saga(step("a", kind="sideways")),  # type: ignore[arg-type]
        "a",
        "unknown step kind 'sideways'",
    ),
    Case(
        "unknown kind in the builder",
        _builder(lambda b: b.local("a", act, compensation=act, kind="sideways")),
        "a",
        "unknown step kind 'sideways'",
    ),
    Case(
        "unknown kind of a remote step in the builder",
        _builder(lambda b: b.remote("a", participant="p", command="c", kind="sideways")),
        "a",
        "unknown step kind 'sideways'",
    ),
    # -- registration in an App -----------------------------------------------------------------
    Case(
        "remote step naming a command its participant lacks",
        _registered(_remote_saga("inventory.hold"), participants=(_inventory(),)),
        "reserve",
        "participant 'inventory' has no handler for 'inventory.hold'",
    ),
    Case(
        "remote compensation naming a command its participant lacks",
        _registered(
            _remote_saga("inventory.reserve", compensation="inventory.free"),
            participants=(_inventory(),),
        ),
        "reserve",
        "participant 'inventory' has no handler for 'inventory.free'",
    ),
    Case(
        "same saga version registered twice",
        _registered(definition(step("a")), definition(step("b"))),
        None,
        "version 1 registered twice",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_broken_rule_is_refused_naming_the_saga_and_the_step(case: Case) -> None:
    with pytest.raises(DefinitionError) as refused:
        case.build()
    message = str(refused.value)
    assert case.rule in message
    if case.names_saga:
        assert f"saga {SAGA!r}" in message, message
    if case.step is not None:
        assert f"step {case.step!r}" in message, message


def test_the_case_ids_are_unique() -> None:
    assert len({c.id for c in CASES}) == len(CASES)


def test_a_participant_registered_twice_is_refused() -> None:
    with pytest.raises(DefinitionError, match="participant 'inventory' registered twice"):
        App(participants=[_inventory(), _inventory()])


def test_the_first_broken_rule_is_the_one_reported() -> None:
    """Steps are checked in order, so the error points at the earliest culprit."""
    with pytest.raises(DefinitionError, match=r"step 'a': timeouts must be positive"):
        definition(step("a", timeout=0.0), step("a"))


# -- what validation lets through ------------------------------------------------------------


def test_every_kind_in_order_is_a_valid_definition() -> None:
    built = definition(step("a"), step("b"), step("pay", P), step("mail", R), step("log", R))
    assert [s.kind for s in built.steps] == [C, C, P, R, R]


@pytest.mark.parametrize(
    "kinds",
    [[C], [P], [R], [C, R], [P, R], [C, P], [R, R]],
    ids=lambda kinds: "-".join(k.value for k in kinds),
)
def test_any_run_of_kinds_in_that_order_is_valid(kinds: list[StepKind]) -> None:
    steps = [step(f"s{i}", kind) for i, kind in enumerate(kinds)]
    assert len(definition(*steps).steps) == len(kinds)


def test_the_builder_accepts_kinds_by_name_and_limits_that_are_edge_values() -> None:
    builder: Saga[Any] = Saga(SAGA, deadline=math.inf)
    builder.local(
        "a",
        act,
        compensation=act,
        timeout=math.inf,
        retry=RetryPolicy(max_attempts=1, initial_delay=0.0, backoff=1.0, max_delay=0.0, jitter=0),
        compensation_retry=RetryPolicy(jitter=1.0),
    )
    builder.remote("pay", participant="payments", command="charge", kind="pivot")
    builder.remote("mail", participant="mailer", command="send", kind="retriable")
    built = builder.build()
    assert [s.kind for s in built.steps] == [C, P, R]


def test_a_remote_step_for_a_participant_not_registered_here_is_accepted() -> None:
    """It may run in another process: only a participant registered in the same App is
    checked for the command."""
    app = App(sagas=[_remote_saga("inventory.anything")])
    assert [d.name for d in app.definitions] == [SAGA]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Saga("a\x00b").local("s", act, compensation=act), "its name is"),
        (lambda: Saga("ok").local("caf\ud800", act, compensation=act), "its name is"),
        (lambda: Saga("ok").local("n" * 513, act, compensation=act), "longer than 512"),
        (
            lambda: Saga("ok").remote("s", participant="p\x00", command="c", compensation="u"),
            "its participant name is",
        ),
        (lambda: Saga("ok", deadline=math.nan).local("s", act, compensation=act), "deadline"),
        (
            lambda: Saga("ok").local(
                "s", act, compensation=act, retry=RetryPolicy(initial_delay=math.nan)
            ),
            "delays must be",
        ),
        (
            lambda: Saga("ok").local(
                "s", act, compensation=act, retry=RetryPolicy(backoff=math.inf)
            ),
            "delays must be",
        ),
    ],
)
def test_names_follow_the_value_rules_and_numbers_are_finite(
    build: Callable[[], Saga[Any]], message: str
) -> None:
    with pytest.raises(DefinitionError, match=message):
        build().build()
