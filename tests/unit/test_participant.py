"""ParticipantRunner semantics against a real SqliteStore and MemoryTransport.

A fake orchestrator subscribes to the reply queue and records every reply; commands are
published to the participant's queue as the worker's relay would. ``publish`` returns once
the participant has committed (its business writes, inbox and reply together); the reply then
travels from the participant's outbox, so the tests wait for it with a deadline.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

import pytest

from sagakit.definition import Phase
from sagakit.encoding import JSON, MAX_VALUE_BYTES
from sagakit.errors import DefinitionError, StepError, StepFailed
from sagakit.messages import MAX_MESSAGE_BYTES, Envelope, MessageKind, decode, encode, to_dict
from sagakit.participant import Command, Participant, ParticipantRunner
from sagakit.ports import OutboxMessage, ParticipantTx
from sagakit.storage import SqliteStore
from sagakit.transitions import Outcome, idempotency_key
from sagakit.transport import MemoryTransport

REPLIES = "sagakit.replies"
NAME = "inventory"
DEADLINE = 5.0
T = TypeVar("T")


class Changes:
    """Wakes waiters whenever something they may be waiting for changed."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    async def until(self, check: Callable[[], Awaitable[bool]], what: str) -> None:
        """Wait until ``await check()`` holds, re-checking after each change; fail after
        DEADLINE seconds naming ``what``."""
        try:
            async with asyncio.timeout(DEADLINE):
                while not await check():
                    await self._event.wait()
                    self._event.clear()  # then check again: no change is missed
        except TimeoutError:
            pytest.fail(f"timed out after {DEADLINE}s waiting for {what}")


class ObservedStore:
    """The participant's store, telling ``changes`` after every transaction (a port
    decorator, not a patch: the runner sees an ordinary ParticipantStore)."""

    def __init__(self, store: SqliteStore, changes: Changes) -> None:
        self._store = store
        self._changes = changes

    async def pending(self, source: str, limit: int) -> list[OutboxMessage]:
        return await self._store.pending(source, limit)

    async def transaction(self, fn: Callable[[ParticipantTx], Awaitable[T]]) -> T:
        try:
            return await self._store.transaction(fn)
        finally:
            self._changes.notify()


class Replies:
    """The fake orchestrator's reply consumer. ``healthy=False`` makes it fail (unacked)."""

    def __init__(self, changes: Changes) -> None:
        self.received: list[Envelope] = []
        self.healthy = True
        self.refused = 0
        self._changes = changes

    async def __call__(self, body: bytes) -> None:
        try:
            if not self.healthy:
                self.refused += 1
                raise RuntimeError("orchestrator unavailable")
            self.received.append(decode(body))
        finally:
            self._changes.notify()

    async def wait(self, count: int) -> list[Envelope]:
        async def arrived() -> bool:
            return len(self.received) >= count

        await self._changes.until(arrived, f"{count} replies")
        assert len(self.received) == count, self.received
        return self.received

    def to(self, cmd: Envelope) -> Envelope:
        """The one reply caused by ``cmd`` (replies are matched, not ordered)."""
        [reply] = [r for r in self.received if r.causation_id == cmd.id]
        return reply


@dataclass
class World:
    store: SqliteStore
    changes: Changes
    transport: MemoryTransport
    replies: Replies
    runner: ParticipantRunner
    #: What the reserve handler does next: ok, fail, boom, final, unencodable, huge.
    mode: list[str] = field(default_factory=lambda: ["ok"])
    calls: dict[str, list[Command]] = field(default_factory=lambda: {"reserve": [], "release": []})

    async def send(self, env: Envelope) -> None:
        await self.transport.publish(NAME, encode(env))

    async def send_raw(self, body: bytes) -> None:
        await self.transport.publish(NAME, body)

    async def holds(self) -> list[str]:
        rows = await self.store.transaction(
            lambda tx: tx.execute("SELECT order_id FROM holds ORDER BY order_id")
        )
        return [str(r[0]) for r in rows]

    async def inbox(self, key: str) -> Envelope | None:
        stored = await self.store.transaction(lambda tx: tx.inbox_get(NAME, key))
        return decode(stored) if stored is not None else None

    async def drained(self) -> None:
        """Every reply the participant committed has been delivered and marked done."""

        async def empty() -> bool:
            return await self.store.pending(NAME, 10) == []

        await self.changes.until(empty, "the participant's outbox to drain")


def command(
    saga_id: str = "s1",
    *,
    phase: Phase = Phase.ACTION,
    attempt: int = 1,
    payload: JSON = None,
    **changes: Any,
) -> Envelope:
    action = phase is Phase.ACTION
    env = Envelope(
        id=uuid4().hex,
        kind=MessageKind.COMMAND,
        type="inventory.reserve" if action else "inventory.release",
        saga_id=saga_id,
        saga_type="order",
        definition_version=1,
        step="reserve",
        phase=phase,
        attempt=attempt,
        idempotency_key=idempotency_key(saga_id, "reserve", phase),
        correlation_id=f"order-{saga_id}",
        timestamp=1_700_000_000.0,
        payload=payload if payload is not None else {"order_id": f"o-{saga_id}"},
        causation_id="orchestrator-msg",
        reply_to=REPLIES,
        deadline=1_700_000_030.0,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    return replace(env, **changes)


def compensation(saga_id: str = "s1", result: JSON = None, **changes: Any) -> Envelope:
    return command(
        saga_id,
        phase=Phase.COMPENSATION,
        payload={"input": {"order_id": f"o-{saga_id}"}, "result": result},
        **changes,
    )


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    store = SqliteStore(str(tmp_path / "inventory.db"), create=True)
    await store.transaction(lambda tx: tx.execute("CREATE TABLE holds (order_id TEXT PRIMARY KEY)"))
    changes = Changes()
    transport = MemoryTransport()
    replies = Replies(changes)
    await transport.subscribe(REPLIES, replies)
    inventory = Participant(NAME)
    runner = ParticipantRunner(
        inventory, ObservedStore(store, changes), transport, rescan_interval=0.05
    )
    w = World(store, changes, transport, replies, runner)

    @inventory.command("inventory.reserve")
    async def reserve(tx: ParticipantTx, cmd: Command) -> object:
        w.calls["reserve"].append(cmd)
        order_id = cmd.input["order_id"]  # type: ignore[index,call-overload]
        await tx.execute("INSERT INTO holds (order_id) VALUES (?)", (order_id,))
        mode = w.mode.pop(0) if len(w.mode) > 1 else w.mode[0]
        if mode == "fail":
            raise StepFailed("out of stock")
        if mode == "boom":
            raise RuntimeError("disk on fire")
        if mode == "final":
            raise StepError("sku discontinued", retryable=False, retry_after=3.0)
        if mode == "unencodable":
            return {"hold": object()}
        if mode == "huge":
            return {"blob": "x" * MAX_MESSAGE_BYTES}
        return {"hold": f"h-{order_id}"}

    @inventory.command("inventory.release")
    async def release(tx: ParticipantTx, cmd: Command) -> object:
        w.calls["release"].append(cmd)
        await tx.execute("DELETE FROM holds WHERE order_id = ?", (cmd.input["order_id"],))  # type: ignore[index,call-overload]
        return {"released": True}

    await w.runner.start()
    try:
        yield w
        ids = [r.id for r in replies.received]
        assert len(ids) == len(set(ids)), "a reply was delivered twice while nothing crashed"
    finally:
        await w.runner.stop()
        await transport.close()
        await store.close()


# -- serving ------------------------------------------------------------------------------


async def test_a_command_is_served_recorded_and_replied(world: World) -> None:
    cmd = command()
    await world.send(cmd)
    # publish returned: the business write and the inbox record are committed already.
    assert await world.holds() == ["o-s1"]
    [reply] = await world.replies.wait(1)
    assert reply.kind is MessageKind.REPLY
    assert reply.outcome is Outcome.SUCCESS
    assert reply.payload == {"hold": "h-o-s1"}
    assert reply.error is None
    assert reply.causation_id == cmd.id and reply.id != cmd.id
    assert (
        reply.saga_id,
        reply.step,
        reply.phase,
        reply.attempt,
        reply.idempotency_key,
        reply.correlation_id,
    ) == (cmd.saga_id, cmd.step, cmd.phase, cmd.attempt, cmd.idempotency_key, cmd.correlation_id)
    assert await world.inbox(cmd.idempotency_key) == reply
    [seen] = world.calls["reserve"]
    assert (
        seen.saga_id,
        seen.step,
        seen.phase,
        seen.attempt,
        seen.idempotency_key,
        seen.deadline,
        seen.payload,
    ) == ("s1", "reserve", Phase.ACTION, 1, "s1:reserve:action", cmd.deadline, cmd.payload)
    assert seen.input == cmd.payload and seen.result is None
    await world.drained()


async def test_a_duplicate_command_gets_the_stored_reply_without_running_again(
    world: World,
) -> None:
    first = command()
    await world.send(first)
    again = command(attempt=2)  # a redelivery or a retry: a new message id, the same key
    await world.send(again)
    await world.replies.wait(2)
    one, two = world.replies.to(first), world.replies.to(again)
    assert len(world.calls["reserve"]) == 1
    assert await world.holds() == ["o-s1"]
    assert (two.outcome, two.payload, two.error) == (one.outcome, one.payload, one.error)
    assert two.causation_id == again.id and two.attempt == 2
    assert two.id not in (one.id, again.id)
    await world.drained()


async def test_a_duplicate_of_a_definite_failure_gets_the_stored_failure(world: World) -> None:
    world.mode = ["fail", "ok"]
    await world.send(command())
    await world.send(command(attempt=2))
    one, two = await world.replies.wait(2)  # the same content whichever came first
    assert one.outcome is two.outcome is Outcome.FAILURE
    assert one.error == two.error == "out of stock"
    assert len(world.calls["reserve"]) == 1


# -- out of order (Semantics 7) -----------------------------------------------------------


async def test_a_compensation_with_nothing_to_undo_is_a_recorded_no_op(world: World) -> None:
    undo = compensation()
    await world.send(undo)
    [reply] = await world.replies.wait(1)
    assert (reply.outcome, reply.payload, reply.phase) == (
        Outcome.SUCCESS,
        {"noop": True},
        Phase.COMPENSATION,
    )
    assert world.calls["release"] == []
    assert await world.inbox(undo.idempotency_key) == reply
    redelivered = compensation(attempt=2)
    await world.send(redelivered)
    await world.replies.wait(2)
    again = world.replies.to(redelivered)
    assert (again.outcome, again.payload) == (Outcome.SUCCESS, {"noop": True})
    assert world.calls["release"] == []


@pytest.mark.parametrize("mode", ["fail", "boom"])
async def test_a_compensation_after_an_action_that_did_nothing_is_a_no_op(
    world: World, mode: str
) -> None:
    world.mode = [mode]
    await world.send(command())
    undo = compensation()
    await world.send(undo)
    await world.replies.wait(2)
    undone = world.replies.to(undo)
    assert (undone.outcome, undone.payload) == (Outcome.SUCCESS, {"noop": True})
    assert world.calls["release"] == []
    assert await world.holds() == []


async def test_an_action_after_its_compensation_is_refused_for_good(world: World) -> None:
    await world.send(compensation())
    late = command()
    await world.send(late)
    await world.replies.wait(2)
    refused = world.replies.to(late)
    assert refused.outcome is Outcome.FAILURE
    assert refused.error is not None and refused.error.startswith("refused")
    assert refused.causation_id == late.id
    assert world.calls["reserve"] == []
    assert await world.holds() == []
    # Recorded: a redelivery of the late action is refused again, still without running.
    redelivered = command(attempt=2)
    await world.send(redelivered)
    await world.replies.wait(3)
    again = world.replies.to(redelivered)
    assert (again.outcome, again.error) == (Outcome.FAILURE, refused.error)
    assert world.calls["reserve"] == []


async def test_a_compensation_after_a_successful_action_gets_input_and_result(
    world: World,
) -> None:
    action = command()
    await world.send(action)
    [done] = await world.replies.wait(1)
    undo = compensation(result=done.payload)
    await world.send(undo)
    await world.replies.wait(2)
    undone = world.replies.to(undo)
    assert (undone.outcome, undone.payload) == (Outcome.SUCCESS, {"released": True})
    [seen] = world.calls["release"]
    assert seen.phase is Phase.COMPENSATION
    assert seen.input == action.payload
    assert seen.result == {"hold": "h-o-s1"}
    assert seen.idempotency_key == "s1:reserve:compensation"
    assert await world.holds() == []


# -- outcomes -----------------------------------------------------------------------------


async def test_step_failed_is_recorded_and_its_writes_rolled_back(world: World) -> None:
    world.mode = ["fail"]
    cmd = command()
    await world.send(cmd)
    [reply] = await world.replies.wait(1)
    assert (reply.outcome, reply.error, reply.payload) == (Outcome.FAILURE, "out of stock", None)
    assert await world.holds() == []  # the handler's INSERT ran, then was rolled back
    assert await world.inbox(cmd.idempotency_key) == reply
    await world.drained()


async def test_an_unexpected_exception_is_a_retryable_error_not_recorded(world: World) -> None:
    world.mode = ["boom", "ok"]
    cmd = command()
    await world.send(cmd)
    [reply] = await world.replies.wait(1)
    assert reply.outcome is Outcome.ERROR
    assert reply.error == "RuntimeError: disk on fire"
    assert reply.retryable is True and reply.retry_after is None
    assert await world.holds() == []
    assert await world.inbox(cmd.idempotency_key) is None
    # The retry runs the handler again, and this time it works.
    retry = command(attempt=2)
    await world.send(retry)
    await world.replies.wait(2)
    retried = world.replies.to(retry)
    assert len(world.calls["reserve"]) == 2
    assert (retried.outcome, retried.payload, retried.attempt) == (
        Outcome.SUCCESS,
        {"hold": "h-o-s1"},
        2,
    )
    assert await world.holds() == ["o-s1"]
    await world.drained()


async def test_a_step_error_carries_its_retry_decision(world: World) -> None:
    world.mode = ["final"]
    cmd = command()
    await world.send(cmd)
    [reply] = await world.replies.wait(1)
    assert reply.outcome is Outcome.ERROR
    assert reply.error == "sku discontinued"  # its message, as a local step records it
    assert (reply.retryable, reply.retry_after) == (False, 3.0)
    assert await world.holds() == []
    assert await world.inbox(cmd.idempotency_key) is None


async def test_an_unencodable_result_is_a_final_error_and_rolls_back(world: World) -> None:
    world.mode = ["unencodable"]
    cmd = command()
    await world.send(cmd)
    [reply] = await world.replies.wait(1)
    assert reply.outcome is Outcome.ERROR
    assert reply.retryable is False
    assert reply.error is not None and "not JSON-encodable" in reply.error
    assert await world.holds() == []
    assert await world.inbox(cmd.idempotency_key) is None


async def test_a_result_too_large_to_reply_is_a_final_error_and_rolls_back(
    world: World,
) -> None:
    """Recorded, an oversized reply would be re-sent on every retry and dead-lettered by the
    orchestrator each time: the step could never settle."""
    world.mode = ["huge"]
    cmd = command()
    await world.send(cmd)
    [reply] = await world.replies.wait(1)
    assert reply.outcome is Outcome.ERROR
    assert reply.retryable is False
    # A value's own limit (a quarter of a message's) refuses it before the reply is built.
    assert reply.error is not None and f"exceeds the limit of {MAX_VALUE_BYTES:,}" in reply.error
    assert await world.holds() == []
    assert await world.inbox(cmd.idempotency_key) is None
    await world.drained()


# -- bad input (C6) -----------------------------------------------------------------------


def _bad_messages() -> list[tuple[str, bytes, str]]:
    reply = replace(command(), kind=MessageKind.REPLY, outcome=Outcome.SUCCESS)
    v2 = json.dumps({**to_dict(command()), "protocol": "2.0"}).encode()
    return [
        ("garbage", b"\x00not json", "malformed JSON"),
        ("not-an-object", b"[]", "a message must be a JSON object"),
        ("missing-field", json.dumps({"protocol": "1.0"}).encode(), "missing field(s)"),
        ("major-version", v2, "unsupported protocol version '2.0'"),
        ("a-reply", encode(reply), "expected a command, got a reply"),
        (
            "unknown-type",
            encode(command(type="inventory.teleport")),
            "has no handler for 'inventory.teleport'",
        ),
        ("no-reply-to", encode(command(reply_to=None)), "a command needs reply_to"),
    ]


@pytest.mark.parametrize(
    ("body", "reason"), [b[1:] for b in _bad_messages()], ids=[b[0] for b in _bad_messages()]
)
async def test_a_bad_message_is_dead_lettered_and_the_runner_keeps_going(
    world: World, body: bytes, reason: str
) -> None:
    await world.send_raw(body)  # acknowledged: it must not come back forever
    [letter] = await world.store.dead_letters(10)
    assert letter.source == NAME
    assert reason in letter.reason
    assert letter.body == body
    assert world.calls["reserve"] == []
    # The next good command is served as usual.
    await world.send(command())
    [reply] = await world.replies.wait(1)
    assert reply.outcome is Outcome.SUCCESS
    await world.drained()


# -- delivery of replies (Semantics 3) ----------------------------------------------------


async def test_a_reply_that_could_not_be_delivered_stays_in_the_outbox_until_it_is(
    world: World,
) -> None:
    world.replies.healthy = False
    await world.send(command())

    async def tried() -> bool:
        return world.replies.refused >= 1

    await world.changes.until(tried, "a failed reply delivery")
    assert len(await world.store.pending(NAME, 10)) == 1
    world.replies.healthy = True
    [reply] = await world.replies.wait(1)  # the runner's rescan sends it again
    assert reply.outcome is Outcome.SUCCESS
    await world.drained()
    assert len(world.calls["reserve"]) == 1


async def _handler(tx: ParticipantTx, cmd: Command) -> object:
    return None


async def _other_handler(tx: ParticipantTx, cmd: Command) -> object:
    return None


def test_a_participant_needs_a_name_and_one_handler_per_command() -> None:
    with pytest.raises(DefinitionError):
        Participant("")
    p = Participant(NAME)
    p.command("inventory.reserve")(_handler)
    with pytest.raises(DefinitionError, match=r"duplicate handler for 'inventory\.reserve'"):
        p.command("inventory.reserve")(_other_handler)
    assert p.handlers == {"inventory.reserve": _handler}


def test_a_sync_handler_is_refused_when_it_is_registered() -> None:
    """A handler runs inside the participant's transaction, whose calls are awaited: a plain
    function could not await them, so it is refused at once rather than at the first command."""
    p = Participant(NAME)

    def reserve(tx: ParticipantTx, cmd: Command) -> object:
        return None

    with pytest.raises(
        DefinitionError,
        match=r"participant 'inventory': the handler for 'inventory\.reserve' must be an async",
    ):
        p.command("inventory.reserve")(reserve)  # type: ignore[arg-type]
    # Even one that returns an awaitable: it is not an ``async def``.
    with pytest.raises(DefinitionError, match="must be an async function"):
        p.command("inventory.release")(lambda tx, cmd: tx.execute("SELECT 1"))
    assert p.handlers == {}
    # The refusal did not take the command type: an async handler registers for it.
    p.command("inventory.reserve")(_handler)
    assert p.handlers == {"inventory.reserve": _handler}
