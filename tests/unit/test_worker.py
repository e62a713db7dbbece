"""The worker end to end on a real SQLite file and the in-process bus: local and remote steps,
retries, timeouts, late and malformed messages, operator commands, restarts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    App,
    CommandRefused,
    IdempotencyConflict,
    MemoryTransport,
    Participant,
    ParticipantTx,
    Phase,
    RetryPolicy,
    Saga,
    SagaStatus,
    SqliteStore,
    StepContext,
    StepError,
    StepFailed,
    StepStatus,
    Worker,
)
from sagakit.messages import Envelope, MessageKind, encode
from sagakit.participant import Command
from sagakit.state import HistoryKind
from sagakit.transitions import Outcome

FAST = RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=0.0)


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "saga.db")


@dataclass
class Calls:
    log: list[tuple[str, Any]]

    def names(self) -> list[str]:
        return [name for name, _ in self.log]


@pytest.fixture
def calls() -> Calls:
    return Calls([])


def two_steps(
    calls: Calls, *, fail: Exception | None = None, policy: RetryPolicy = FAST
) -> Saga[Any]:
    saga: Saga[Any] = Saga("two")

    async def first(ctx: StepContext[Any]) -> dict[str, int]:
        calls.log.append(("first", ctx.attempt))
        return {"n": 1}

    async def undo_first(ctx: StepContext[Any]) -> None:
        calls.log.append(("undo_first", ctx.result))

    async def second(ctx: StepContext[Any]) -> int:
        calls.log.append(("second", ctx.attempt))
        if fail is not None and (ctx.data or {}).get("fail", True):
            raise fail
        return 2

    async def undo_second(ctx: StepContext[Any]) -> None:
        calls.log.append(("undo_second", ctx.outcome_known))

    saga.local("first", first, compensation=undo_first, retry=policy)
    saga.local("second", second, compensation=undo_second, retry=policy, timeout=0.5)
    return saga


@pytest.fixture
async def store(db: str) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(db, owner=True)
    yield s
    await s.close()


async def test_success_runs_each_step_once(store: SqliteStore, calls: Calls) -> None:
    saga = two_steps(calls)
    async with Worker(App(sagas=[saga]), store) as worker:
        inst = await worker.client.run(saga, {}, timeout=5)
    assert inst.status is SagaStatus.COMPLETED
    assert calls.names() == ["first", "second"]
    assert inst.results() == {"first": {"n": 1}, "second": 2}


async def test_definite_failure_compensates_earlier_steps_only(
    store: SqliteStore, calls: Calls
) -> None:
    saga = two_steps(calls, fail=StepFailed("no"))
    async with Worker(App(sagas=[saga]), store) as worker:
        inst = await worker.client.run(saga, {}, timeout=5)
    assert inst.status is SagaStatus.FAILED
    assert inst.reason == "step 'second' failed: no"
    assert calls.log == [("first", 1), ("second", 1), ("undo_first", {"n": 1})]


async def test_retryable_error_retries_then_compensates_unknown_outcome(
    store: SqliteStore, calls: Calls
) -> None:
    saga = two_steps(calls, fail=RuntimeError("flaky"))
    async with Worker(App(sagas=[saga]), store) as worker:
        inst = await worker.client.run(saga, {}, timeout=5)
        history = await worker.client.history(inst.saga_id)
    assert inst.status is SagaStatus.FAILED
    assert calls.names() == ["first", "second", "second", "second", "undo_second", "undo_first"]
    assert ("undo_second", False) in calls.log  # its outcome is unknown: compensated anyway
    assert inst.step("second").status is StepStatus.COMPENSATED
    assert sum(1 for h in history if h.kind is HistoryKind.RETRY_SCHEDULED) == 2


async def test_non_retryable_error_is_not_retried(store: SqliteStore, calls: Calls) -> None:
    saga = two_steps(calls, fail=StepError("bad input", retryable=False))
    async with Worker(App(sagas=[saga]), store) as worker:
        inst = await worker.client.run(saga, {}, timeout=5)
    assert inst.status is SagaStatus.FAILED
    assert calls.names().count("second") == 1


async def test_local_step_timeout_is_an_error_then_unknown(
    store: SqliteStore, calls: Calls
) -> None:
    saga: Saga[Any] = Saga("slow")

    async def slow(ctx: StepContext[Any]) -> None:
        calls.log.append(("slow", ctx.attempt))
        await asyncio.sleep(30)

    async def undo(ctx: StepContext[Any]) -> None:
        calls.log.append(("undo", ctx.outcome_known))

    saga.local(
        "slow",
        slow,
        compensation=undo,
        timeout=0.05,
        retry=RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=0),
    )
    async with Worker(App(sagas=[saga]), store) as worker:
        inst = await worker.client.run(saga, {}, timeout=5)
    assert inst.status is SagaStatus.FAILED
    assert calls.log == [("slow", 1), ("slow", 2), ("undo", False)]
    assert "timed out" in (inst.step("slow").error or "")


async def test_unencodable_result_fails_the_step_not_retryably(
    store: SqliteStore, calls: Calls
) -> None:
    saga: Saga[Any] = Saga("enc")

    async def bad(ctx: StepContext[Any]) -> object:
        calls.log.append(("bad", ctx.attempt))
        return object()

    async def undo(ctx: StepContext[Any]) -> None:
        calls.log.append(("undo", None))

    saga.local("bad", bad, compensation=undo, retry=FAST)
    async with Worker(App(sagas=[saga]), store) as worker:
        inst = await worker.client.run(saga, {}, timeout=5)
    assert inst.status is SagaStatus.FAILED
    assert calls.names() == ["bad", "undo"]
    assert "not JSON-encodable" in (inst.step("bad").error or "")


async def test_idempotent_start(store: SqliteStore, calls: Calls) -> None:
    saga = two_steps(calls)
    async with Worker(App(sagas=[saga]), store) as worker:
        a = await worker.client.start(saga, {"x": 1}, key="k1")
        b = await worker.client.start(saga, {"x": 1}, key="k1")
        assert a.saga_id == b.saga_id
        with pytest.raises(IdempotencyConflict):
            await worker.client.start(saga, {"x": 2}, key="k1")
        # Two concurrent starts with one key in the same batch give one instance.
        c, d = await asyncio.gather(
            worker.client.start(saga, {"y": 1}, key="k2"),
            worker.client.start(saga, {"y": 1}, key="k2"),
        )
        assert c.saga_id == d.saga_id
        await a.result(timeout=5)
        await c.result(timeout=5)
    assert calls.names().count("first") == 2


async def test_abort_waits_for_in_flight_step_then_compensates(
    store: SqliteStore, calls: Calls
) -> None:
    release = asyncio.Event()
    saga: Saga[Any] = Saga("abortable")

    async def first(ctx: StepContext[Any]) -> str:
        calls.log.append(("first", None))
        return "ok"

    async def undo_first(ctx: StepContext[Any]) -> None:
        calls.log.append(("undo_first", None))

    async def waiting(ctx: StepContext[Any]) -> str:
        calls.log.append(("waiting", None))
        await release.wait()
        return "late"

    async def undo_waiting(ctx: StepContext[Any]) -> None:
        calls.log.append(("undo_waiting", ctx.result))

    saga.local("first", first, compensation=undo_first)
    saga.local("waiting", waiting, compensation=undo_waiting, timeout=10)
    async with Worker(App(sagas=[saga]), store) as worker:
        handle = await worker.client.start(saga, {})

        async def running() -> bool:
            return ("waiting", None) in calls.log

        await until(running)
        command = await worker.client.abort(handle.saga_id, "customer cancelled", by="alice")
        await command.wait(timeout=5)
        inst = await handle.get()
        assert inst.status is SagaStatus.COMPENSATING
        assert calls.names() == ["first", "waiting"]  # nothing undone while a step is in flight
        release.set()
        inst = await handle.result(timeout=5)
        history = await worker.client.history(handle.saga_id)
    assert inst.status is SagaStatus.FAILED
    assert inst.reason == "aborted: customer cancelled"
    assert calls.names() == ["first", "waiting", "undo_waiting", "undo_first"]
    operator = [h for h in history if h.kind is HistoryKind.OPERATOR]
    assert operator and operator[0].detail["by"] == "alice"


async def test_stuck_compensation_then_operator_retry_and_resolve(
    store: SqliteStore, calls: Calls
) -> None:
    broken = {"undo_first": True, "undo_second": True}
    saga: Saga[Any] = Saga("stuckable")
    policy = RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=0)

    def step(name: str) -> Callable[[StepContext[Any]], Awaitable[str]]:
        async def run(ctx: StepContext[Any]) -> str:
            calls.log.append((name, None))
            return name

        return run

    def undo(name: str) -> Callable[[StepContext[Any]], Awaitable[None]]:
        async def run(ctx: StepContext[Any]) -> None:
            calls.log.append((name, None))
            if broken[name]:
                raise RuntimeError(f"{name} is down")

        return run

    async def third(ctx: StepContext[Any]) -> None:
        raise StepFailed("nope")

    saga.local("first", step("first"), compensation=undo("undo_first"), compensation_retry=policy)
    saga.local(
        "second", step("second"), compensation=undo("undo_second"), compensation_retry=policy
    )
    saga.local("third", third, compensation=undo("undo_third"))
    broken["undo_third"] = False
    async with Worker(App(sagas=[saga]), store) as worker:
        inst = await worker.client.run(saga, {}, timeout=5)
        assert inst.status is SagaStatus.STUCK
        assert inst.stuck_step == "second"
        assert "compensation of step 'second' exhausted" in (inst.status_reason or "")
        assert calls.names().count("undo_first") == 0  # earlier compensations wait
        with pytest.raises(CommandRefused):
            await worker.client.abort(inst.saga_id, "give up")
        with pytest.raises(CommandRefused):
            await worker.client.resolve(inst.saga_id, "first", "wrong step")
        broken["undo_second"] = False
        await (await worker.client.retry(inst.saga_id, "service back")).wait(timeout=5)
        inst = await worker.client.wait(inst.saga_id, timeout=5)
        assert inst.status is SagaStatus.STUCK and inst.stuck_step == "first"
        await (await worker.client.resolve(inst.saga_id, "first", "undone by hand")).wait(timeout=5)
        inst = await worker.client.wait(inst.saga_id, timeout=5)
    assert inst.status is SagaStatus.FAILED
    assert inst.step("first").status is StepStatus.RESOLVED
    assert inst.step("second").status is StepStatus.COMPENSATED


# -- remote steps -------------------------------------------------------------------------


def remote_app(behaviour: dict[str, Any]) -> tuple[App, Saga[Any], Participant]:
    bank = Participant("bank")

    @bank.command("debit")
    async def debit(tx: ParticipantTx, cmd: Command) -> Any:
        behaviour.setdefault("debits", []).append(cmd.attempt)
        mode = behaviour.get("debit")
        if mode == "fail":
            raise StepFailed("insufficient funds")
        return {"debited": 5}

    @bank.command("credit")
    async def credit(tx: ParticipantTx, cmd: Command) -> Any:
        behaviour.setdefault("credits", []).append(cmd.payload)
        return None

    saga: Saga[Any] = (
        Saga("pay")
        .remote(
            "debit",
            participant="bank",
            command="debit",
            compensation="credit",
            timeout=0.2,
            retry=FAST,
        )
        .remote(
            "notify",
            participant="mailer",
            command="mail",
            kind="retriable",
            timeout=0.2,
            retry=FAST,
        )
    )
    return App(sagas=[saga], participants=[bank]), saga, bank


async def test_remote_steps_time_out_durably_and_go_stuck_past_the_point_of_no_return(
    store: SqliteStore,
) -> None:
    behaviour: dict[str, Any] = {}
    app, saga, _ = remote_app(behaviour)
    transport = MemoryTransport()
    mail: list[Envelope] = []

    async def mailer(body: bytes) -> None:  # a participant that never answers
        from sagakit.messages import decode

        mail.append(decode(body))

    await transport.subscribe("mailer", mailer)
    async with Worker(app, store, transport) as worker:
        inst = await worker.client.run(saga, {"amount": 5}, timeout=10)
        history = await worker.client.history(inst.saga_id)
    assert inst.status is SagaStatus.STUCK
    assert inst.stuck_step == "notify"
    assert [m.attempt for m in mail] == [1, 2, 3]
    assert {m.idempotency_key for m in mail} == {f"{inst.saga_id}:notify:action"}
    assert sum(1 for h in history if h.kind is HistoryKind.TIMED_OUT) == 3
    assert behaviour["debits"] == [1]


async def test_late_duplicate_unknown_and_malformed_replies(store: SqliteStore) -> None:
    behaviour: dict[str, Any] = {}
    app, saga, _ = remote_app(behaviour)
    transport = MemoryTransport()
    mail: list[Envelope] = []

    async def mailer(body: bytes) -> None:
        from sagakit.messages import decode

        mail.append(decode(body))

    await transport.subscribe("mailer", mailer)
    async with Worker(app, store, transport) as worker:
        handle = await worker.client.start(saga, {"amount": 5})

        async def sent() -> bool:
            return bool(mail)

        await until(sent)
        command = mail[0]

        def reply(outcome: Outcome, **kw: Any) -> bytes:
            return encode(
                Envelope(
                    **{
                        **command.__dict__,
                        "id": f"r-{len(kw)}-{outcome.value}",
                        "kind": MessageKind.REPLY,
                        "outcome": outcome,
                        **kw,
                    }
                )
            )

        await transport.publish("sagakit.replies", reply(Outcome.SUCCESS, payload={"sent": 1}))
        inst = await handle.result(timeout=5)
        assert inst.status is SagaStatus.COMPLETED
        # A duplicate success, a late failure: recorded, never applied.
        await transport.publish("sagakit.replies", reply(Outcome.SUCCESS, payload={"sent": 2}))
        await transport.publish("sagakit.replies", reply(Outcome.FAILURE, error="x"))
        # Malformed, unknown instance, never-sent attempt: dead-lettered, the worker goes on.
        await transport.publish("sagakit.replies", b"{not json")
        await transport.publish("sagakit.replies", reply(Outcome.SUCCESS, saga_id="nope"))
        await transport.publish("sagakit.replies", reply(Outcome.SUCCESS, attempt=9))
        history = await worker.client.history(handle.saga_id)
        letters = await worker.client.dead_letters()
    stored = await store.get(handle.saga_id)
    assert stored is not None and stored.step("notify").result == {"sent": 1}
    kinds = [h.kind for h in history]
    assert HistoryKind.DUPLICATE_REPLY in kinds and HistoryKind.LATE_REPLY in kinds
    reasons = sorted(d.reason for d in letters)
    assert len(reasons) == 3
    assert any("malformed JSON" in r for r in reasons)
    assert any("unknown saga instance nope" in r for r in reasons)
    assert any("never sent" in r for r in reasons)


async def test_timer_survives_a_restart(db: str, calls: Calls) -> None:
    saga: Saga[Any] = Saga("patient").remote(
        "ask",
        participant="nobody",
        command="ask",
        compensation="unask",
        timeout=0.3,
        retry=RetryPolicy(max_attempts=1),
    )

    async def swallow(body: bytes) -> None:
        return None

    store = SqliteStore(db, owner=True)
    transport = MemoryTransport()
    await transport.subscribe("nobody", swallow)
    async with Worker(App(sagas=[saga]), store, transport) as worker:
        handle = await worker.client.start(saga, {})
    await store.close()
    # The first worker is gone before the timeout; a new one fires the stored timer.
    store = SqliteStore(db, owner=True)
    transport = MemoryTransport()
    await transport.subscribe("nobody", swallow)
    try:
        async with Worker(App(sagas=[saga]), store, transport):

            async def compensating() -> bool:
                inst = await store.get(handle.saga_id)
                return inst is not None and inst.status is SagaStatus.COMPENSATING

            await until(compensating)
    finally:
        await store.close()
    store = SqliteStore(db)
    inst = await store.get(handle.saga_id)
    history = await store.history(handle.saga_id)
    await store.close()
    assert inst is not None
    assert inst.step("ask").status is StepStatus.COMPENSATING
    assert inst.step("ask").outcome_known is False
    assert [h.kind for h in history].count(HistoryKind.TIMED_OUT) == 1


async def test_instance_of_unknown_definition_is_left_untouched(
    store: SqliteStore, calls: Calls
) -> None:
    release = asyncio.Event()
    v1: Saga[Any] = Saga("versioned", version=1)

    async def wait(ctx: StepContext[Any]) -> None:
        await release.wait()

    async def undo(ctx: StepContext[Any]) -> None:
        return None

    v1.local("wait", wait, compensation=undo)
    async with Worker(App(sagas=[v1]), store) as worker:
        handle = await worker.client.start(v1, {})
    before = await store.get(handle.saga_id)
    v2: Saga[Any] = Saga("versioned", version=2)
    v2.local("other", wait, compensation=undo)
    async with Worker(App(sagas=[v2]), store):
        await asyncio.sleep(0.2)  # give it the chance to do the wrong thing
    after = await store.get(handle.saga_id)
    assert before is not None and after is not None
    assert after.revision == before.revision and after.status is SagaStatus.PENDING


async def test_group_commit_under_load(store: SqliteStore, calls: Calls) -> None:
    saga = two_steps(calls)
    async with Worker(App(sagas=[saga]), store) as worker:
        handles = await asyncio.gather(*(worker.client.start(saga, {}) for _ in range(200)))
        results = await asyncio.gather(*(h.result(timeout=20) for h in handles))
        commits, transitions = worker.commits, worker.transitions_committed
    assert all(r.status is SagaStatus.COMPLETED for r in results)
    assert transitions >= 600
    assert commits < transitions / 3  # many transitions share one durable commit


async def test_compensation_gets_unknown_outcome_input(store: SqliteStore, calls: Calls) -> None:
    saga = two_steps(calls, fail=RuntimeError("flaky"))
    async with Worker(App(sagas=[saga]), store) as worker:
        inst = await worker.client.run(saga, {"fail": True}, timeout=5)
    assert inst.step("second").compensation is not None
    assert Phase.COMPENSATION.value == "compensation"


async def test_a_start_queued_without_a_worker_waits_for_one(db: str, calls: Calls) -> None:
    saga = two_steps(calls)
    reader = SqliteStore(db, create=True)
    from sagakit import Client

    client = Client(reader)
    handle = await client.start(saga, {"from": "cli"}, key="queued-1")
    again = await client.start(saga, {"from": "cli"}, key="queued-1")
    assert calls.log == []  # nothing runs without a worker
    owner = SqliteStore(db, owner=True)
    try:
        async with Worker(App(sagas=[saga]), owner):
            inst = await client.wait(handle.saga_id, timeout=5)
    finally:
        await owner.close()
        await reader.close()
    assert inst.status is SagaStatus.COMPLETED
    assert inst.idempotency_key == "queued-1"
    assert calls.names() == ["first", "second"]
    del again


async def test_a_stuck_instance_is_operable_after_a_restart(db: str, calls: Calls) -> None:
    broken = {"down": True}
    saga: Saga[Any] = Saga("restartable")

    async def act(ctx: StepContext[Any]) -> str:
        return "done"

    async def undo(ctx: StepContext[Any]) -> None:
        calls.log.append(("undo", ctx.attempt))
        if broken["down"]:
            raise RuntimeError("down")

    async def fail(ctx: StepContext[Any]) -> None:
        raise StepFailed("no")

    saga.local("act", act, compensation=undo, compensation_retry=RetryPolicy(max_attempts=1))
    saga.local("fail", fail, compensation=undo)
    store = SqliteStore(db, owner=True)
    async with Worker(App(sagas=[saga]), store) as worker:
        stuck = await worker.client.run(saga, {}, timeout=5)
    await store.close()
    assert stuck.status is SagaStatus.STUCK
    broken["down"] = False
    store = SqliteStore(db, owner=True)  # a new worker process, as after a restart
    try:
        async with Worker(App(sagas=[saga]), store) as worker:
            command = await worker.client.retry(stuck.saga_id, "service is back")
            await command.wait(timeout=5)
            done = await worker.client.wait(stuck.saga_id, timeout=5)
    finally:
        await store.close()
    assert done.status is SagaStatus.FAILED
    assert done.step("act").status is StepStatus.COMPENSATED


async def test_a_queued_start_with_a_used_key_resolves_to_the_first_instance(
    db: str, calls: Calls
) -> None:
    from sagakit import Client

    saga = two_steps(calls)
    reader = SqliteStore(db, create=True)
    client = Client(reader)
    first = await client.start(saga, {"n": 1}, key="same")
    # No instance yet: the start waiting in the queue holds the key.
    second = await client.start(saga, {"n": 1}, key="same")
    assert second.saga_id == first.saga_id
    assert len(await reader.pending_commands(10)) == 1
    owner = SqliteStore(db, owner=True)
    try:
        async with Worker(App(sagas=[saga]), owner):
            a = await first.result(timeout=5)
            b = await second.result(timeout=5)

            async def answered() -> bool:
                return not await reader.pending_commands(10)

            await until(answered)
    finally:
        await owner.close()
        await reader.close()
    assert a.saga_id == b.saga_id
    assert calls.names() == ["first", "second"]  # one instance ran


async def test_a_worker_without_the_definition_leaves_the_timers_alone(db: str) -> None:
    v1: Saga[Any] = Saga("timed", version=1).remote(
        "ask",
        participant="nobody",
        command="ask",
        compensation="unask",
        timeout=0.2,
        retry=RetryPolicy(max_attempts=1),
    )
    v2: Saga[Any] = Saga("timed", version=2).remote(
        "other",
        participant="nobody",
        command="ask",
        compensation="unask",
        timeout=0.2,
    )

    async def swallow(body: bytes) -> None:
        return None

    async def run(app: App, action: Callable[[Worker], Awaitable[Any]]) -> Any:
        store = SqliteStore(db, owner=True)
        transport = MemoryTransport()
        await transport.subscribe("nobody", swallow)
        try:
            async with Worker(app, store, transport, poll_interval=0.02) as worker:
                return await action(worker)
        finally:
            await store.close()

    async def start(worker: Worker) -> str:
        return (await worker.client.start(v1, {})).saga_id

    saga_id = await run(App(sagas=[v1]), start)

    async def linger(worker: Worker) -> float | None:
        # Not a synchronisation: the timer must fall due while this worker runs, and then
        # nothing may have happened to it.
        await asyncio.sleep(0.6)
        return await worker.store.next_due()

    assert await run(App(sagas=[v2]), linger) is not None  # still there for v1's worker

    async def timed_out(worker: Worker) -> Any:
        async def compensating() -> bool:
            inst = await worker.store.get(saga_id)
            return inst is not None and inst.status is SagaStatus.COMPENSATING

        await until(compensating)
        return await worker.store.get(saga_id)

    inst = await run(App(sagas=[v1]), timed_out)
    assert inst.step("ask").outcome_known is False


async def test_show_says_why_an_instance_is_not_advancing(db: str) -> None:
    from sagakit import Client

    release = asyncio.Event()
    v1: Saga[Any] = Saga("explained", version=1)

    async def wait(ctx: StepContext[Any]) -> None:
        await release.wait()

    async def undo(ctx: StepContext[Any]) -> None:
        return None

    v1.local("wait", wait, compensation=undo)
    v2: Saga[Any] = Saga("explained", version=2)
    v2.local("other", wait, compensation=undo)
    store = SqliteStore(db, owner=True)
    try:
        async with Worker(App(sagas=[v1]), store) as worker:
            handle = await worker.client.start(v1, {})
            inst = await handle.get()
            assert await worker.client.stalled(inst) is None  # its worker runs it
        assert "no worker is running" in (await Client(store).stalled(inst) or "")
        async with Worker(App(sagas=[v2]), store):
            why = await Client(store).stalled(inst)
    finally:
        release.set()
        await store.close()
    assert why is not None and "no running worker has the definition explained v1" in why


async def test_a_queued_start_cancelled_while_the_worker_applies_it_creates_nothing(
    db: str, calls: Calls
) -> None:
    from sagakit import Client
    from sagakit.ports import Batch

    saga = two_steps(calls)
    guarded: list[int] = []

    class CancelledMeanwhile(SqliteStore):
        """An operator's cancel lands between the worker's read of the start and its commit."""

        async def commit(self, batch: Batch) -> list[bool]:
            for write in batch.transitions:
                if write.expected_revision is None and write.commands:
                    guarded.append(write.commands[0].id)
                    if len(guarded) == 1:
                        assert await self.cancel_start(write.commands[0].id, "cancelled")
            return await super().commit(batch)

    reader = SqliteStore(db, create=True)
    client = Client(reader)
    doomed = await client.start(saga, {"n": 1}, key="doomed")
    owner = CancelledMeanwhile(db, owner=True)
    try:
        async with Worker(App(sagas=[saga]), owner, poll_interval=0.02):
            later = await client.start(saga, {"n": 2}, key="later")
            await later.result(timeout=5)
        with pytest.raises(CommandRefused, match="cancelled"):
            await doomed.result(timeout=1)
        assert await reader.get(doomed.saga_id) is None
    finally:
        await owner.close()
        await reader.close()
    # Tried once, not again and again: a queued start whose write failed goes back to the
    # queue, where it is no longer pending.
    assert guarded.count(guarded[0]) == 1
    assert calls.names() == ["first", "second"]  # only the later one ran
