"""Statuses at the edges: a command that cannot be built or delivered, a local action's remote
compensation, a participant's ``retry_after``, and messages and commands for an instance that
finished before a restart. Each was a wrong or silent status before."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from sagakit import (
    App,
    CommandRefused,
    MemoryTransport,
    Participant,
    ParticipantTx,
    Phase,
    RetryPolicy,
    Saga,
    SagaStatus,
    SqliteStore,
    StepContext,
    StepStatus,
    Worker,
)
from sagakit.answers import unsent
from sagakit.definition import Local, Remote, SagaDefinition, Step, StepKind
from sagakit.participant import Command
from sagakit.state import HistoryKind, StepState
from sagakit.transitions import (
    Begin,
    Outcome,
    Reply,
    SetTimer,
    TimerKind,
    decide,
    new_instance,
)

A = Phase.ACTION
C = Phase.COMPENSATION
ONE = RetryPolicy(max_attempts=1, jitter=0.0)


async def _noop(ctx: StepContext[Any]) -> None:
    return None


def begun(definition: SagaDefinition) -> Any:
    instance = new_instance(
        definition,
        saga_id="s1",
        data={},
        correlation_id=None,
        idempotency_key=None,
        input_digest="",
        now=0.0,
    )
    return decide(instance, Begin(), definition, 1.0).instance


# -- a command that is never sent is a definite failure -----------------------------------------


def test_an_unsent_first_attempt_is_a_definite_failure_and_a_later_one_unknown() -> None:
    first = StepState("b", StepStatus.RUNNING, attempts=1)
    assert unsent(first, A, "cannot build").outcome is Outcome.FAILURE
    retried = StepState("b", StepStatus.RUNNING, attempts=2)  # attempt 1 went out
    said = unsent(retried, A, "cannot build")
    assert (said.outcome, said.retryable) == (Outcome.ERROR, False)
    # An operator's retry of an unknown outcome: earlier attempts went out under this key.
    again = StepState("b", StepStatus.RUNNING, attempts=3, budget_from=2, outcome_known=False)
    assert unsent(again, A, "x").outcome is Outcome.ERROR
    # A new generation: nothing went out under its key yet.
    fresh = StepState("b", StepStatus.RUNNING, attempts=3, budget_from=2, generation=2)
    assert unsent(fresh, A, "x").outcome is Outcome.FAILURE


def unencodable(ctx: StepContext[Any]) -> object:
    return {"when": object()}


def shop(record: list[str]) -> Participant:
    participant = Participant("shop")

    @participant.command("do")
    @participant.command("undo")
    async def serve(tx: ParticipantTx, cmd: Command) -> object:
        record.append(f"{cmd.step} {cmd.phase.value}")
        return None

    return participant


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(str(tmp_path / "saga.db"), owner=True)
    yield s
    await s.close()


async def test_a_step_whose_command_cannot_be_built_fails_the_saga(store: SqliteStore) -> None:
    done: list[str] = []
    saga: Saga[Any] = (
        Saga("unbuildable")
        .remote("a", participant="shop", command="do", compensation="undo")
        .remote("b", participant="shop", command="do", compensation="undo", input=unencodable)
    )
    async with Worker(App(sagas=[saga], participants=[shop(done)]), store) as worker:
        inst = await worker.client.run(saga, {}, timeout=10)
    assert inst.status is SagaStatus.FAILED, inst.status_reason
    assert inst.reason is not None
    assert inst.reason.startswith("step 'b' failed: cannot build the command: input of step 'b'")
    assert inst.step("b").status is StepStatus.FAILED  # nothing was sent: nothing to undo
    assert inst.step("a").status is StepStatus.COMPENSATED
    assert done == ["a action", "a compensation"]


# -- a local action's remote compensation has a durable timeout ---------------------------------


def mixed() -> SagaDefinition:
    return SagaDefinition(
        "mixed",
        1,
        (
            Step("l", Local(_noop), Remote("svc", "undo"), compensation_timeout=7.0),
            Step("r", Remote("svc", "do"), Local(_noop), timeout=3.0, retry=ONE),
            Step("x", Remote("svc", "do"), kind=StepKind.PIVOT, retry=ONE),
        ),
    )


def test_a_local_action_s_remote_compensation_gets_a_timeout() -> None:
    definition = mixed()
    inst = begun(definition)
    decision = decide(inst, Reply("l", A, 1, Outcome.SUCCESS), definition, 2.0)
    [timer] = [e for e in decision.effects if isinstance(e, SetTimer)]  # r's action: remote
    assert timer.name == "timeout:r:action"
    decision = decide(decision.instance, Reply("r", A, 1, Outcome.SUCCESS), definition, 3.0)
    decision = decide(decision.instance, Reply("x", A, 1, Outcome.FAILURE), definition, 4.0)
    # r's compensation is local (the worker bounds it): no timer; l's is remote: a timer.
    assert not [e for e in decision.effects if isinstance(e, SetTimer)]
    decision = decide(decision.instance, Reply("r", C, 1, Outcome.SUCCESS), definition, 5.0)
    [timer] = [e for e in decision.effects if isinstance(e, SetTimer)]
    assert (timer.name, timer.kind, timer.due_at) == (
        "timeout:l:compensation",
        TimerKind.TIMEOUT,
        12.0,
    )


# -- retry_after: finite, >= 0, at most the policy's max_delay ---------------------------------


@pytest.mark.parametrize(
    ("retry_after", "delay"),
    [
        (2.5, 2.5),
        (0.0, 0.0),
        (1e9, 10.0),  # capped by max_delay
        (math.inf, 1.0),  # not finite: the policy's backoff
        (math.nan, 1.0),
        (-5.0, 1.0),  # negative: the policy's backoff
    ],
)
def test_a_reply_s_retry_after_is_checked_and_capped(retry_after: float, delay: float) -> None:
    policy = RetryPolicy(max_attempts=3, initial_delay=1.0, max_delay=10.0, jitter=0.0)
    definition = (
        Saga("hint")
        .remote("a", participant="svc", command="a", kind="retriable", retry=policy)
        .build()
    )
    inst = begun(definition)
    reply = Reply("a", A, 1, Outcome.ERROR, error="busy", retry_after=retry_after)
    decision = decide(inst, reply, definition, 100.0)
    [timer] = [e for e in decision.effects if isinstance(e, SetTimer)]
    assert timer.kind is TimerKind.RETRY and timer.due_at == 100.0 + delay
    [scheduled] = [h for h in decision.history if h.kind is HistoryKind.RETRY_SCHEDULED]
    assert scheduled.detail == {"delay": delay}


# -- a participant that nothing serves, on the in-process bus ----------------------------------


async def test_a_step_whose_participant_nothing_serves_fails_with_the_reason(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    saga: Saga[Any] = Saga("lonely").remote(
        "ask", participant="nobody", command="ask", compensation="unask", timeout=300.0
    )
    with caplog.at_level(logging.WARNING, logger="sagakit.worker"):
        async with Worker(App(sagas=[saga]), store) as worker:
            warned = [r.getMessage() for r in caplog.records if "'nobody'" in r.getMessage()]
            inst = await worker.client.run(saga, {}, timeout=10)
    assert warned == [
        "participant 'nobody' is served by nothing in this process, and the in-process "
        "transport reaches nothing else: step 'ask' of lonely v1, compensation 'ask' of "
        "lonely v1 will fail at once (register the participant with the app, or use a broker)"
    ]
    assert inst.status is SagaStatus.FAILED
    assert inst.reason == (
        "step 'ask' failed: cannot send the command: nothing in this process serves "
        "participant 'nobody' (in-process transport)"
    )


async def test_a_participant_served_by_hand_is_reached(store: SqliteStore) -> None:
    transport = MemoryTransport()
    received: list[bytes] = []

    async def swallow(body: bytes) -> None:
        received.append(body)

    await transport.subscribe("nobody", swallow)
    saga: Saga[Any] = Saga("served").remote(
        "ask", participant="nobody", command="ask", kind="retriable"
    )
    async with Worker(App(sagas=[saga]), store, transport) as worker:
        handle = await worker.client.start(saga, {})
        inst = await worker.client.get(handle.saga_id)
    assert inst.step("ask").status is StepStatus.RUNNING


# -- after a restart: messages and commands for an instance that finished ----------------------


class Answering:
    """A participant by hand that answers every command with a success."""

    def __init__(self, transport: MemoryTransport) -> None:
        self.transport = transport
        self.commands: list[dict[str, Any]] = []

    async def __call__(self, body: bytes) -> None:
        self.commands.append(json.loads(body))
        await self.transport.publish("sagakit.replies", self.reply(self.commands[-1]))

    def reply(self, cmd: dict[str, Any]) -> bytes:
        return json.dumps(
            {
                **cmd,
                "id": uuid4().hex,
                "kind": "reply",
                "causation_id": cmd["id"],
                "timestamp": time.time(),
                "outcome": "success",
                "payload": {"ok": 1},
            }
        ).encode()


def quick() -> Saga[Any]:
    return Saga("quick").remote("ask", participant="svc", command="ask", compensation="unask")


async def finished_then_restarted(db: str) -> tuple[str, Answering, MemoryTransport]:
    """Run a saga to completion under one worker, which then stops."""
    store = SqliteStore(db, owner=True)
    transport = MemoryTransport()
    svc = Answering(transport)
    await transport.subscribe("svc", svc)
    try:
        async with Worker(App(sagas=[quick()]), store, transport) as worker:
            inst = await worker.client.run(quick(), {}, timeout=10)
    finally:
        await store.close()
    assert inst.status is SagaStatus.COMPLETED
    return inst.saga_id, svc, transport


async def test_a_late_reply_and_a_command_for_a_finished_instance_are_answered_after_a_restart(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "saga.db")
    saga_id, svc, _ = await finished_then_restarted(db)
    store = SqliteStore(db, owner=True)
    try:
        transport = MemoryTransport()
        await transport.subscribe("svc", svc)
        # Queued while it ran (the client checked it then), applied only after the restart.
        command = await store.enqueue(saga_id, "abort", {"reason": "late", "by": "ops"})
        async with Worker(App(sagas=[quick()]), store, transport, poll_interval=0.02) as worker:
            await transport.publish("sagakit.replies", svc.reply(svc.commands[0]))
            with pytest.raises(CommandRefused, match="the saga is already completed"):
                await worker.client.wait_command(command, timeout=10)
            history = await worker.client.history(saga_id)
            letters = await worker.client.dead_letters()
    finally:
        await store.close()
    assert [h.kind for h in history][-2:] == [HistoryKind.DUPLICATE_REPLY, HistoryKind.REFUSED]
    assert letters == []


async def test_without_its_definition_they_are_dead_lettered_and_refused_with_the_reason(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "saga.db")
    saga_id, svc, _ = await finished_then_restarted(db)
    store = SqliteStore(db, owner=True)
    other: Saga[Any] = Saga("other").remote("x", participant="svc", command="x", kind="pivot")
    try:
        transport = MemoryTransport()
        await transport.subscribe("svc", svc)
        command = await store.enqueue(saga_id, "retry", {"reason": "late", "by": "ops"})
        async with Worker(App(sagas=[other]), store, transport, poll_interval=0.02) as worker:
            await transport.publish("sagakit.replies", svc.reply(svc.commands[0]))
            with pytest.raises(CommandRefused) as refused:
                await worker.client.wait_command(command, timeout=10)
            letters = await worker.client.dead_letters()
    finally:
        await store.close()
    reason = (
        f"saga {saga_id} is already completed (and this worker has no definition quick v1 "
        "to record this in)"
    )
    assert str(refused.value) == reason
    assert [letter.reason for letter in letters] == [reason]
