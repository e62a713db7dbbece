"""Protocol 1.1 and its generations, with participants and workers of both versions.

- the 1.1 participant (``ParticipantRunner``) relates a step's action and compensation within
  one generation (Semantics 7 across generations), and serves 1.0 commands by their 1.0 keys;
- an operator's retry of a step a participant definitely failed runs it again in a new
  generation, with the 1.1 participant and with a participant written against 1.0 (JSON by
  hand, an inbox keyed by ``idempotency_key``, no ``generation``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from sagakit import (
    App,
    MemoryTransport,
    Participant,
    ParticipantTx,
    RetryPolicy,
    Saga,
    SagaStatus,
    SqliteStore,
    StepContext,
    StepFailed,
    StepStatus,
    Worker,
)
from sagakit.messages import Envelope, decode
from sagakit.participant import Command, ParticipantRunner
from sagakit.state import HistoryKind

REPLIES = "replies"
#: The fields a 1.0 reply copies from its command (docs/protocol.md, 1.0).
COPIED_1_0 = (
    "type",
    "saga_id",
    "saga_type",
    "definition_version",
    "step",
    "phase",
    "attempt",
    "idempotency_key",
    "correlation_id",
    "deadline",
    "reply_to",
    "traceparent",
)


# -- the 1.1 participant, fed hand-written commands ------------------------------------------


class Collected:
    """The replies a participant sent (from its outbox, by its relay)."""

    def __init__(self) -> None:
        self.replies: list[Envelope] = []
        self._arrived = asyncio.Condition()

    async def __call__(self, body: bytes) -> None:
        async with self._arrived:
            self.replies.append(decode(body))
            self._arrived.notify_all()

    async def to(self, command_id: str) -> Envelope:
        """The reply caused by the command ``command_id``, once it has arrived."""

        def caused() -> list[Envelope]:
            return [r for r in self.replies if r.causation_id == command_id]

        async with asyncio.timeout(5.0), self._arrived:
            await self._arrived.wait_for(caused)
        [reply] = caused()
        return reply


class Stock:
    """A participant that reserves and releases, counting what its handlers did."""

    def __init__(self) -> None:
        self.participant = Participant("stock")
        self.done: list[str] = []

        @self.participant.command("stock.reserve")
        async def reserve(tx: ParticipantTx, cmd: Command) -> object:
            self.done.append(f"reserve {cmd.idempotency_key}")
            return {"hold": cmd.generation}

        @self.participant.command("stock.release")
        async def release(tx: ParticipantTx, cmd: Command) -> object:
            self.done.append(f"release {cmd.idempotency_key}")
            return None


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[ParticipantRunner, Stock, Collected]]:
    store = SqliteStore(str(tmp_path / "stock.db"), create=True)
    transport = MemoryTransport()
    collected = Collected()
    await transport.subscribe(REPLIES, collected)
    stock = Stock()
    runner = ParticipantRunner(stock.participant, store, transport, rescan_interval=0.05)
    await runner.start()
    try:
        yield runner, stock, collected
    finally:
        await runner.stop()
        await store.close()


def command(phase: str, attempt: int = 1, *, generation: int | None = None) -> dict[str, Any]:
    """A command as JSON. Without ``generation``, exactly what a 1.0 orchestrator sends."""
    key = f"s1:reserve:{phase}" + (f":g{generation}" if generation not in (None, 1) else "")
    out: dict[str, Any] = {
        "protocol": "1.0" if generation is None else "1.1",
        "id": uuid4().hex,
        "kind": "command",
        "type": "stock.reserve" if phase == "action" else "stock.release",
        "saga_id": "s1",
        "saga_type": "order",
        "definition_version": 1,
        "step": "reserve",
        "phase": phase,
        "attempt": attempt,
        "idempotency_key": key,
        "correlation_id": "o-1",
        "timestamp": 1_700_000_000.0,
        "reply_to": REPLIES,
        "payload": {"sku": "A"} if phase == "action" else {"input": {"sku": "A"}, "result": None},
    }
    if generation is not None:
        out["generation"] = generation
    return out


async def answer(runner: ParticipantRunner, collected: Collected, cmd: dict[str, Any]) -> Envelope:
    await runner.handle(json.dumps(cmd).encode())
    return await collected.to(cmd["id"])


async def test_the_1_1_participant_serves_1_0_commands_by_their_1_0_keys(
    served: tuple[ParticipantRunner, Stock, Collected],
) -> None:
    runner, stock, collected = served
    did = await answer(runner, collected, command("action"))
    assert (did.protocol, did.outcome, did.payload) == ("1.0", "success", {"hold": 1})
    assert did.idempotency_key == "s1:reserve:action" and did.generation == 1
    again = await answer(runner, collected, command("action", 2))
    assert (again.outcome, again.payload, again.attempt) == ("success", {"hold": 1}, 2)
    undone = await answer(runner, collected, command("compensation"))
    assert undone.outcome == "success"
    late = await answer(runner, collected, command("action", 3))  # a stored reply: the same
    assert late.payload == {"hold": 1}
    assert stock.done == ["reserve s1:reserve:action", "release s1:reserve:compensation"]


async def test_an_action_after_its_compensation_is_refused_only_in_its_own_generation(
    served: tuple[ParticipantRunner, Stock, Collected],
) -> None:
    runner, stock, collected = served
    # Generation 1: the compensation overtakes the action, which is then refused.
    noop = await answer(runner, collected, command("compensation", generation=1))
    assert (noop.outcome, noop.payload) == ("success", {"noop": True})
    refused = await answer(runner, collected, command("action", generation=1))
    assert refused.outcome == "failure"
    assert refused.error == "refused: the action arrived after its compensation"
    # Generation 2, after generation 1's compensation: an operator asked for it, so it runs.
    second = await answer(runner, collected, command("action", 2, generation=2))
    assert (second.outcome, second.payload, second.generation) == ("success", {"hold": 2}, 2)
    assert second.idempotency_key == "s1:reserve:action:g2"
    # Its compensation undoes it (generation 2's action succeeded, whatever generation 1 did).
    undone = await answer(runner, collected, command("compensation", 2, generation=2))
    assert undone.outcome == "success" and undone.payload is None
    assert stock.done == ["reserve s1:reserve:action:g2", "release s1:reserve:compensation:g2"]


async def test_a_compensation_undoes_only_its_own_generation_s_action(
    served: tuple[ParticipantRunner, Stock, Collected],
) -> None:
    runner, stock, collected = served
    await answer(runner, collected, command("action", generation=1))
    # Generation 2's action never arrived: its compensation has nothing to undo.
    noop = await answer(runner, collected, command("compensation", generation=2))
    assert (noop.outcome, noop.payload) == ("success", {"noop": True})
    assert stock.done == ["reserve s1:reserve:action"]


# -- a 1.1 worker and an operator's retry, with participants of either version -----------------

FAST = RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=0.0)


def shipping() -> Saga[Any]:
    return (
        Saga("shipping")
        .remote(
            "reserve",
            participant="shop",
            command="stock.reserve",
            compensation="stock.release",
            timeout=5.0,
        )
        .remote("ship", participant="shop", command="ship.send", kind="retriable", timeout=5.0)
        .remote("notify", participant="shop", command="mail.send", kind="retriable", retry=FAST)
    )


class Legacy:
    """A participant written against protocol 1.0, in another language as it were: JSON in and
    out, an inbox keyed by ``idempotency_key``, Semantics 7 by the 1.0 keys, no ``generation``.
    The first ``ship.send`` fails definitely."""

    def __init__(self, transport: MemoryTransport) -> None:
        self.transport = transport
        self.inbox: dict[str, dict[str, Any]] = {}
        self.commands: list[dict[str, Any]] = []
        self.effects: list[str] = []

    async def __call__(self, body: bytes) -> None:
        cmd = json.loads(body)
        self.commands.append(cmd)
        key = cmd["idempotency_key"]
        stored = self.inbox.get(key)
        if stored is None:
            other = "compensation" if cmd["phase"] == "action" else "action"
            sibling = self.inbox.get(f"{cmd['saga_id']}:{cmd['step']}:{other}")
            if cmd["phase"] == "action" and sibling is not None:
                stored = {"outcome": "failure", "error": "refused: after its compensation"}
            elif cmd["phase"] == "compensation" and (sibling or {}).get("outcome") != "success":
                stored = {"outcome": "success", "payload": {"noop": True}}
            elif cmd["type"] == "ship.send" and "no carrier" not in self.effects:
                self.effects.append("no carrier")
                stored = {"outcome": "failure", "error": "no carrier today"}
            else:
                self.effects.append(key)
                stored = {"outcome": "success", "payload": {"done": key}}
            self.inbox[key] = stored
        reply = {name: cmd.get(name) for name in COPIED_1_0}
        reply.update(
            protocol="1.0",
            id=uuid4().hex,
            kind="reply",
            causation_id=cmd["id"],
            timestamp=time.time(),
            payload=stored.get("payload"),
            outcome=stored["outcome"],
            error=stored.get("error"),
        )
        await self.transport.publish(cmd["reply_to"], json.dumps(reply).encode())


async def retry_until_done(worker: Worker, saga: Saga[Any]) -> str:
    """Start the saga, see it stuck on the failed step, retry it: returns the saga id."""
    inst = await worker.client.run(saga, {"order": 7}, timeout=10)
    assert inst.status is SagaStatus.STUCK, inst
    assert inst.stuck_reason == "step 'ship' failed past the point of no return: no carrier today"
    handle = await worker.client.retry(inst.saga_id, "the carrier is back")
    await handle.wait(timeout=10)
    done = await worker.wait_settled(inst.saga_id, timeout=10)
    assert done.status is SagaStatus.COMPLETED, done
    ship = done.step("ship")
    assert (ship.status, ship.generation, ship.attempts) == (StepStatus.DONE, 2, 2)
    history = await worker.client.history(inst.saga_id)
    [operator] = [h for h in history if h.kind is HistoryKind.OPERATOR]
    assert operator.detail["generation"] == 2
    return inst.saga_id


async def test_a_retried_definite_failure_runs_again_at_a_1_1_participant(tmp_path: Path) -> None:
    shop = Participant("shop")
    ran: list[str] = []

    @shop.command("stock.reserve")
    @shop.command("stock.release")
    @shop.command("mail.send")
    async def fine(tx: ParticipantTx, cmd: Command) -> object:
        ran.append(cmd.idempotency_key)
        return {"ok": True}

    @shop.command("ship.send")
    async def ship(tx: ParticipantTx, cmd: Command) -> object:
        ran.append(cmd.idempotency_key)
        if cmd.generation == 1:
            raise StepFailed("no carrier today")
        return {"tracking": "t-1"}

    definition = shipping()
    store = SqliteStore(str(tmp_path / "saga.db"), owner=True)
    try:
        async with Worker(App(sagas=[definition], participants=[shop]), store) as worker:
            saga_id = await retry_until_done(worker, definition)
    finally:
        await store.close()
    assert ran == [
        f"{saga_id}:reserve:action",
        f"{saga_id}:ship:action",
        f"{saga_id}:ship:action:g2",
        f"{saga_id}:notify:action",
    ]


async def test_a_1_0_participant_works_with_a_1_1_worker_and_its_generations(
    tmp_path: Path,
) -> None:
    transport = MemoryTransport()
    legacy = Legacy(transport)
    await transport.subscribe("shop", legacy)
    definition = shipping()
    store = SqliteStore(str(tmp_path / "saga.db"), owner=True)
    try:
        async with Worker(App(sagas=[definition]), store, transport, reply_queue=REPLIES) as w:
            saga_id = await retry_until_done(w, definition)
            # Generation 1's failure, delivered again by the 1.0 participant's broker: late.
            first = next(c for c in legacy.commands if c["step"] == "ship")
            await legacy(json.dumps(first).encode())
            history = await w.client.history(saga_id)
    finally:
        await store.close()
    assert [c["protocol"] for c in legacy.commands] == ["1.1"] * len(legacy.commands)
    keys = [c["idempotency_key"] for c in legacy.commands]
    assert keys == [
        f"{saga_id}:reserve:action",
        f"{saga_id}:ship:action",
        f"{saga_id}:ship:action:g2",
        f"{saga_id}:notify:action",
        f"{saga_id}:ship:action",
    ]
    assert legacy.effects == [
        f"{saga_id}:reserve:action",
        "no carrier",
        f"{saga_id}:ship:action:g2",
        f"{saga_id}:notify:action",
    ]
    late = [h for h in history if h.kind is HistoryKind.LATE_REPLY]
    assert [(h.step, h.attempt, h.detail["outcome"]) for h in late] == [("ship", 1, "failure")]


async def test_a_local_step_of_a_new_generation_receives_its_new_key(tmp_path: Path) -> None:
    keys: list[str] = []

    async def book(ctx: StepContext[Any]) -> str:
        keys.append(ctx.idempotency_key)
        if len(keys) == 1:
            raise StepFailed("no room today")
        return "booked"

    saga: Saga[Any] = Saga("trip").local("book", book, kind="retriable")
    store = SqliteStore(str(tmp_path / "saga.db"), owner=True)
    try:
        async with Worker(App(sagas=[saga]), store) as worker:
            inst = await worker.client.run(saga, {}, timeout=10)
            assert inst.status is SagaStatus.STUCK
            await (await worker.client.retry(inst.saga_id, "a room came free")).wait(timeout=10)
            done = await worker.wait_settled(inst.saga_id, timeout=10)
    finally:
        await store.close()
    assert done.status is SagaStatus.COMPLETED
    assert keys == [f"{inst.saga_id}:book:action", f"{inst.saga_id}:book:action:g2"]
