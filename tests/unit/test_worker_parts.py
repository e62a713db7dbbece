"""Each role of the worker on its own: the inbox, the instance cache, the store's clock, the
sources and their poll helper, the applier, local steps and ownership.

The roles are built by hand with the collaborators they declare, on an in-memory SQLite
store where they need one; nothing here starts a whole Worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sagakit import App, Saga, SqliteStore, StepContext
from sagakit.definition import Phase
from sagakit.encoding import JSON
from sagakit.errors import DefinitionMissing, IdempotencyConflict, StoreRefused
from sagakit.messages import Envelope, MessageKind, decode, encode
from sagakit.ports import Batch, DefinitionRef, InstanceWrite, Timer, TimerOp, TimerOpKind
from sagakit.state import HistoryEntry, HistoryKind, SagaInstance, StepStatus, evolve
from sagakit.transitions import (
    Abort,
    Begin,
    Dispatch,
    Outcome,
    Reply,
    TimerFired,
    TimerKind,
    decide,
    idempotency_key,
    new_instance,
)
from sagakit.worker.apply import Applier
from sagakit.worker.clock import StoreClock
from sagakit.worker.instances import Instances
from sagakit.worker.items import Inbox, Item, Start, Work, input_digest
from sagakit.worker.local_steps import LocalSteps
from sagakit.worker.logbook import Logbook
from sagakit.worker.ownership import Ownership
from sagakit.worker.sources import CommandSource, ReplySource, TimerSource, poll

ME = "worker-1"


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - polls a role's state, nothing to await
            await asyncio.sleep(0.002)


async def act(ctx: StepContext[Any]) -> str:
    return f"{ctx.step}-done"


def local_saga(name: str = "parts") -> Saga[Any]:
    saga: Saga[Any] = Saga(name)
    saga.local("a", act, compensation=act)
    saga.local("b", act, compensation=act)
    return saga


@pytest.fixture
async def store() -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(":memory:")
    try:
        yield opened
    finally:
        await opened.close()


async def write(store: SqliteStore, instance: SagaInstance) -> SagaInstance:
    instance = evolve(instance, revision=1)
    history = [HistoryEntry(1.0, HistoryKind.CREATED)]
    assert await store.commit(
        Batch(transitions=[InstanceWrite(instance.saga_id, instance, None, history)])
    ) == [True]
    return instance


def instance_of(
    saga: Saga[Any], saga_id: str, *, owner: str | None = ME, **kw: Any
) -> SagaInstance:
    fields: dict[str, Any] = {
        "correlation_id": f"corr-{saga_id}",
        "idempotency_key": None,
        "input_digest": "",
        **kw,
    }
    made = new_instance(saga.build(), saga_id=saga_id, data={"n": 1}, now=1.0, **fields)
    return evolve(made, owner=owner)


# -- items and instances --------------------------------------------------------------------


async def test_the_inbox_hands_out_what_waits_in_order_up_to_the_limit() -> None:
    inbox = Inbox()
    taker = asyncio.create_task(inbox.take(2))
    await asyncio.sleep(0)
    assert not taker.done()  # nothing waits: the committer sleeps
    for n in range(3):
        inbox.put_nowait(Item(f"s{n}"))
    assert [i.saga_id for i in await taker] == ["s0", "s1"]
    assert [i.saga_id for i in await inbox.take(10)] == ["s2"]
    future = inbox.submit(Item("s3"))
    assert not future.done() and not inbox.empty()


def test_unstaging_leaves_a_newer_staged_state_alone() -> None:
    saga = local_saga()
    instances = Instances()
    first = instance_of(saga, "s1", idempotency_key="k")
    newer = evolve(first, revision=2)
    instances.staged["s1"] = newer
    instances.staged_keys[("parts", "k")] = newer
    instances.unstage("s1", first)  # the batch that staged ``first`` is done
    assert instances.staged["s1"] is newer and ("parts", "k") in instances.staged_keys
    instances.unstage("s1", newer)
    assert instances.staged == {} and instances.staged_keys == {}


async def test_the_store_clock_follows_the_stores_time() -> None:
    class Skewed:
        async def now(self) -> float:
            return 1_000.0

    local = iter([10.0, 12.0, 20.0])
    clock = StoreClock(lambda: next(local))
    await clock.sync(Skewed())  # type: ignore[arg-type]
    assert clock() == 20.0 + (1_000.0 - 11.0)  # the store's time, not ours


# -- sources ----------------------------------------------------------------------------------


async def test_poll_retries_a_failed_scan_and_a_wake_cuts_the_wait_short(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scans: list[int] = []
    wake = asyncio.Event()

    async def scan() -> float:
        scans.append(len(scans))
        if len(scans) == 1:
            raise RuntimeError("store away")
        return 3600.0  # a long wait: only a wake-up brings the next scan

    task = asyncio.create_task(poll(scan, wake, 0.001, "test"))
    try:
        await until(lambda: len(scans) == 2)  # the failure waited the short interval
        wake.set()
        await until(lambda: len(scans) == 3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert "test scan failed: store away" in caplog.text


async def test_a_reply_becomes_an_item_and_a_malformed_one_a_dead_letter() -> None:
    inbox = Inbox()
    source = ReplySource(inbox, "replies", lambda: 7.0)
    envelope = Envelope(
        id="m1",
        kind=MessageKind.REPLY,
        type="reserve.reply",
        saga_id="s1",
        saga_type="parts",
        definition_version=1,
        step="a",
        phase=Phase.ACTION,
        attempt=1,
        idempotency_key="s1:a:action",
        correlation_id="c",
        timestamp=1.0,
        payload={"ok": True},
        outcome=Outcome.SUCCESS,
    )
    good = asyncio.create_task(source.on_message(encode(envelope)))
    bad = asyncio.create_task(source.on_message(b"{not json"))
    items = await inbox.take(10)
    assert isinstance(items[0].event, Reply) and items[0].event.result == {"ok": True}
    assert items[0].saga_id == "s1" and items[0].source == "replies"
    assert items[1].dead_letter is not None and items[1].dead_letter.at == 7.0
    assert "malformed JSON" in items[1].dead_letter.reason
    for item in items:
        assert item.future is not None
        item.future.set_result(None)  # committed: the transport may acknowledge
    await asyncio.gather(good, bad)


async def test_due_timers_are_submitted_once_and_a_refused_one_is_left_alone(
    store: SqliteStore,
) -> None:
    saga = local_saga()
    await write(store, instance_of(saga, "s1", owner=None))
    timer = Timer("s1", "timeout:a:action", TimerKind.TIMEOUT, 0.5, "a", Phase.ACTION, 1)
    write_timer = InstanceWrite("s1", timer_ops=[])
    write_timer.timer_ops.append(TimerOp(TimerOpKind.SET, timer))
    await store.commit(Batch(transitions=[write_timer]))
    inbox = Inbox()
    source = TimerSource(store, inbox, set(), 0.05)
    await source._fire_due()
    await source._fire_due()  # still in flight: not submitted twice
    items = await inbox.take(10)
    assert len(items) == 1
    assert items[0].event == TimerFired(TimerKind.TIMEOUT, "a", Phase.ACTION, 1)
    assert items[0].future is not None
    items[0].future.set_exception(StoreRefused("no"))
    await source._fire_due()
    assert inbox.empty()  # refused: never refired in a loop


async def test_commands_become_events_and_a_start_for_another_worker_stays_queued(
    store: SqliteStore,
) -> None:
    saga = local_saga()
    app = App(sagas=[saga])
    await store.enqueue("s1", "abort", {"reason": "customer", "by": "ann"})
    await store.enqueue("s2", "start", {"saga_type": "elsewhere", "version": 1, "data": {}})
    await store.enqueue(
        "s3", "start", {"saga_type": "parts", "version": 1, "data": {"n": 2}, "key": "k"}
    )
    inbox = Inbox()
    source = CommandSource(app, store, inbox, set(), 0.05)
    await source._scan()
    await source._scan()  # in flight: not submitted again
    items = await inbox.take(10)
    assert [i.saga_id for i in items] == ["s1", "s3"]  # s2's type runs elsewhere
    assert items[0].event == Abort("customer", "ann")
    start = items[1].start
    assert start is not None and start.key == "k" and start.data == {"n": 2}
    assert start.digest == input_digest({"n": 2}, "k")


# -- the applier ------------------------------------------------------------------------------


def applier_for(
    app: App, store: SqliteStore, instances: Instances | None = None
) -> tuple[Applier, Inbox, set[str], list[int]]:
    inbox, orphans, claims = Inbox(), set[str](), list[int]()
    applier = Applier(
        app,
        store,
        instances or Instances(),
        inbox,
        worker_id=ME,
        reply_queue="replies",
        clock=lambda: 5.0,
        orphans=orphans,
        wake_claims=lambda: claims.append(1),
    )
    return applier, inbox, orphans, claims


async def test_a_keyed_start_finds_its_instance_or_is_refused_as_a_conflict(
    store: SqliteStore,
) -> None:
    saga = local_saga()
    definition = saga.build()
    digest = input_digest({"n": 1}, "k")
    await write(store, instance_of(saga, "s1", idempotency_key="k", input_digest=digest))
    applier, _, _, _ = applier_for(App(sagas=[saga]), store)

    same = Item("new-1", start=Start(definition, {"n": 1}, "k", None, digest))
    work = Work("new-1", None, None, False)
    work.items.append(same)
    await applier.start(work, same, 5.0, {})
    assert same.result == "s1" and not work.changed  # the existing instance, nothing new

    other_digest = input_digest({"n": 2}, "k")
    other = Item("new-2", start=Start(definition, {"n": 2}, "k", None, other_digest))
    other.future = asyncio.get_running_loop().create_future()
    work = Work("new-2", None, None, False)
    work.items.append(other)
    await applier.start(work, other, 5.0, {})
    with pytest.raises(IdempotencyConflict, match="different input"):
        await other.future


async def test_a_new_start_decides_its_first_step(store: SqliteStore) -> None:
    saga = local_saga()
    applier, _, _, _ = applier_for(App(sagas=[saga]), store)
    item = Item("s9", start=Start(saga.build(), {"n": 1}, None, "corr", ""))
    work = Work("s9", None, None, False)
    work.items.append(item)
    await applier.start(work, item, 5.0, {})
    assert work.changed and work.instance is not None and work.instance.owner == ME
    assert [d.step for d in work.local_runs] == ["a"]  # a local step: no message
    assert work.transition.outbox == []
    assert work.transition.history[0].kind is HistoryKind.CREATED


async def test_events_for_unknown_foreign_and_orphaned_instances(store: SqliteStore) -> None:
    saga = local_saga()
    app = App(sagas=[saga])
    applier, _, orphans, claims = applier_for(app, store)
    reply = Reply("a", Phase.ACTION, 1, Outcome.SUCCESS, "x")

    batch = Batch()
    unknown = Item("nope", event=reply, body=b"{}", source="replies")
    applier.event(Work("nope", None, None, False), unknown, 5.0, batch)
    assert [d.reason for d in batch.dead_letters] == ["unknown saga instance nope"]

    released = instance_of(saga, "s1", owner=None)
    loose = Item("s1", event=reply)
    loose.future = asyncio.get_running_loop().create_future()
    work = Work("s1", released, 1, False)
    applier.event(work, loose, 5.0, Batch())
    assert claims == [1] and not work.changed  # a claim is asked for; nothing decided
    with pytest.raises(DefinitionMissing):
        await loose.future

    other_shape = evolve(instance_of(saga, "s2"), fingerprint="another-shape")
    stray = Item("s2", event=reply)
    stray.future = asyncio.get_running_loop().create_future()
    applier.event(Work("s2", other_shape, 1, False), stray, 5.0, Batch())
    assert orphans == {"s2"}  # never advanced with the wrong steps
    with pytest.raises(DefinitionMissing):
        await stray.future


# -- local steps and ownership ------------------------------------------------------------------


async def test_a_local_step_runs_once_per_attempt_and_hands_its_answer_to_the_inbox(
    store: SqliteStore,
) -> None:
    runs: list[str] = []

    async def counted(ctx: StepContext[Any]) -> JSON:
        runs.append(ctx.idempotency_key)
        return {"n": len(runs)}

    saga: Saga[Any] = Saga("counted")
    saga.local("a", counted, compensation=act)
    instance = await write(store, instance_of(saga, "s1"))
    instances, inbox = Instances(), Inbox()
    steps = LocalSteps(
        App(sagas=[saga]),
        store,
        instances,
        inbox,
        worker_id=ME,
        clock=lambda: 1.0,
        logbook=Logbook(),
    )
    steps.running = True
    key = idempotency_key("s1", "a", Phase.ACTION)
    dispatch = Dispatch("a", Phase.ACTION, 1, key, 100.0)
    steps.spawn("s1", dispatch)
    steps.spawn("s1", dispatch)  # the same attempt: not run twice
    [item] = await inbox.take(10)
    assert runs == [key] and item.saga_id == instance.saga_id
    assert isinstance(item.event, Reply) and item.event.result == {"n": 1}
    assert item.future is not None
    item.future.set_result(None)  # committed: the run is over
    assert steps.tasks == {}
    await steps.stop()


async def test_a_takeover_holds_the_instances_and_reruns_their_running_local_steps(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sagakit.worker")
    saga = local_saga()
    definition = saga.build()
    abandoned = instance_of(saga, "s1", owner=None)
    steps_state = list(abandoned.steps)
    steps_state[0] = evolve(steps_state[0], status=StepStatus.RUNNING, attempts=1)
    await write(store, evolve(abandoned, steps=tuple(steps_state)))
    await store.attach(
        ME, 10.0, [DefinitionRef(definition.name, definition.version, definition.fingerprint)]
    )

    instances, inbox = Instances(), Inbox()
    spawned: list[tuple[str, str, int]] = []

    class Recording(LocalSteps):
        def spawn(self, saga_id: str, dispatch: Any) -> None:
            spawned.append((saga_id, dispatch.step, dispatch.attempt))

    steps = Recording(
        App(sagas=[saga]),
        store,
        instances,
        inbox,
        worker_id=ME,
        clock=lambda: 1.0,
        logbook=Logbook(),
    )
    woken: list[int] = []

    async def rescan() -> None:
        woken.append(2)

    ownership = Ownership(
        App(sagas=[saga]),
        store,
        instances,
        steps,
        StoreClock(),
        worker_id=ME,
        lease=10.0,
        orphans={"s1"},
        on_takeover=lambda: woken.append(1),
        rescan_outbox=rescan,
        logbook=Logbook(),
    )
    assert await ownership.take_over() == 1
    assert instances.cache["s1"].owner == ME and instances.cache["s1"].revision == 2
    assert spawned == [("s1", "a", 1)]  # same attempt, same key: at least once
    assert woken == [1, 2]
    assert "took over 1 instance(s)" in caplog.text


async def test_a_command_sent_after_a_reply_names_that_reply_as_its_cause(
    store: SqliteStore,
) -> None:
    saga: Saga[Any] = Saga("remote_parts")
    saga.remote("a", participant="svc", command="a.do", compensation="a.undo")
    saga.remote("b", participant="svc", command="b.do", compensation="b.undo")
    begun = decide(instance_of(saga, "s1"), Begin(), saga.build(), 1.0).instance
    applier, _, _, _ = applier_for(App(sagas=[saga]), store)
    reply = Reply("a", Phase.ACTION, 1, Outcome.SUCCESS, "ok")
    work = Work("s1", begun, 1, False)
    applier.event(work, Item("s1", event=reply, body=b"{}", message_id="m-42"), 5.0, Batch())
    [sent] = work.transition.outbox
    command = decode(sent.body)
    assert command.step == "b" and command.causation_id == "m-42"
