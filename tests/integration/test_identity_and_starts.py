"""Definition identity (Semantics 1) and idempotent queued starts (Semantics 15, 11), on
SQLite and PostgreSQL: an instance survives a refactor of its step functions and an upgrade
from fingerprints v1; a start or a worker with other steps under a name and version in use is
refused before anything is sent; a start queued without a worker holds its key, is refused
(not answered with another's instance) when another input took the key, and is listed, shown
and cancelled by the id the client returned."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    App,
    Client,
    CommandRefused,
    DefinitionError,
    DefinitionNotRegistered,
    IdempotencyConflict,
    MemoryTransport,
    ParticipantTx,
    RetryPolicy,
    Saga,
    SagaHandle,
    SagaStatus,
    StepContext,
    Worker,
)
from sagakit.ports import ORCHESTRATOR, CommandState, InstanceFilter, Store
from sagakit.storage import open_store

FAST = RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=0.0)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'saga.db'}"
    else:
        yield request.getfixturevalue("pg_url")


@contextlib.asynccontextmanager
async def running(app: App, url: str, **options: Any) -> AsyncIterator[Worker]:
    store = open_store(url, owner=True)
    try:
        async with Worker(app, store, poll_interval=0.02, **options) as worker:
            yield worker
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def client_of(url: str) -> AsyncIterator[Client]:
    """A client in a process with no worker (the CLI, another service)."""
    # Its database made as a worker (or `sagakit migrate`) would make it.
    options = {"create": True} if url.startswith("sqlite") else {"migrate": True}
    store = open_store(url, **options)
    try:
        yield Client(store, poll_interval=0.02)
    finally:
        await store.close()


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.02)


def holding(name: str, gate: asyncio.Event | None, calls: list[str]) -> Saga[Any]:
    """``hold`` then ``finish``, local steps whose functions are named after ``name``; with a
    ``gate``, ``hold`` waits for it."""

    async def act(ctx: StepContext[Any]) -> str:
        calls.append(f"{name}:{ctx.step}")
        if gate is not None and ctx.step == "hold":
            await gate.wait()
        return ctx.step

    async def undo(ctx: StepContext[Any]) -> None:
        calls.append(f"{name}:undo {ctx.step}")

    act.__qualname__ = act.__name__ = f"act_{name}"
    undo.__qualname__ = undo.__name__ = f"undo_{name}"
    saga: Saga[Any] = Saga("held", version=1)
    saga.local("hold", act, compensation=undo, retry=FAST)
    saga.local("finish", act, compensation=undo, retry=FAST)
    return saga


def shaped(command: str, *, version: int = 1) -> Saga[Any]:
    """A one-step remote saga; ``command`` is its shape."""
    return Saga("shaped", version=version).remote(
        "ask", participant="nobody", command=command, compensation="unask", retry=FAST
    )


async def never_answering() -> MemoryTransport:
    """An in-process bus on which "nobody" takes commands and never answers (with no consumer
    at all, a step that needs one fails at once)."""

    async def swallow(body: bytes) -> None:
        return None

    transport = MemoryTransport()
    await transport.subscribe("nobody", swallow)
    return transport


async def execute(store: Store, sql: str, *params: object) -> None:
    async def write(tx: ParticipantTx) -> None:
        await tx.execute(sql, params)

    await store.transaction(write)


# -- Semantics 1: identity -------------------------------------------------------------------


async def test_renaming_the_functions_keeps_a_running_instance_running(db: str) -> None:
    calls: list[str] = []
    before = holding("before", asyncio.Event(), calls)  # its first step never ends
    after = holding("after", None, calls)
    assert before.build().fingerprint == after.build().fingerprint
    assert before.build().legacy_fingerprint != after.build().legacy_fingerprint
    async with running(App(sagas=[before]), db) as worker:
        handle = await worker.client.start(before, {"n": 1})
        await until(lambda: _called(calls, "before:hold"))
    async with running(App(sagas=[after]), db) as worker:
        done = await worker.client.wait(handle.saga_id, timeout=10)
    assert done.status is SagaStatus.COMPLETED
    assert calls == ["before:hold", "after:hold", "after:finish"]


async def _called(calls: list[str], what: str) -> bool:
    return what in calls


async def test_an_instance_carrying_a_v1_fingerprint_is_claimed_and_finished(db: str) -> None:
    calls: list[str] = []
    before = holding("same", asyncio.Event(), calls)
    async with running(App(sagas=[before]), db) as worker:
        handle = await worker.client.start(before, {"n": 1})
        await until(lambda: _called(calls, "same:hold"))
        store = worker.store
        # As sagakit wrote it before fingerprints v2.
        await execute(
            store,
            "UPDATE sagakit_instances SET fingerprint = ? WHERE saga_id = ?",
            before.build().legacy_fingerprint,
            handle.saga_id,
        )
    after = holding("same", None, calls)
    async with running(App(sagas=[after]), db) as worker:
        done = await worker.client.wait(handle.saga_id, timeout=10)
    assert done.status is SagaStatus.COMPLETED
    assert done.fingerprint == after.build().fingerprint  # rewritten when claimed


async def test_a_start_with_other_steps_is_refused_before_anything_is_sent(db: str) -> None:
    running_shape, other_shape = shaped("ask.v1"), shaped("ask.v2")
    async with running(App(sagas=[running_shape]), db) as worker:
        with pytest.raises(DefinitionNotRegistered, match="other steps"):
            await worker.client.start(other_shape, {"n": 1})
        async with client_of(db) as client:
            # Another process sees the running worker's definition and refuses at once.
            with pytest.raises(DefinitionNotRegistered, match="other steps"):
                await client.start(other_shape, {"n": 2})
            assert await client.queued_starts() == []
        assert await worker.client.list() == []
        assert await worker.store.pending(ORCHESTRATOR, 10) == []


async def test_a_queued_start_with_other_steps_is_refused_by_the_worker(db: str) -> None:
    async with client_of(db) as client:
        handle = await client.start(shaped("ask.v2"), {"n": 1}, key="k")  # no worker runs
        async with running(App(sagas=[shaped("ask.v1")]), db):
            with pytest.raises(DefinitionNotRegistered, match="other steps"):
                await handle.result(timeout=10)
        assert await client.list() == []
        start = await client.queued_start(handle.saga_id)
        assert start is not None and start.state is CommandState.REFUSED


async def test_a_worker_with_other_steps_than_unfinished_instances_refuses_to_start(
    db: str,
) -> None:
    old, new = shaped("ask.v1"), shaped("ask.v2")
    async with running(App(sagas=[old]), db, transport=await never_answering()) as worker:
        handle = await worker.client.start(old, {"n": 1})  # waits for "nobody"
    store = open_store(db, owner=True)
    try:
        with pytest.raises(DefinitionError, match=r"'shaped' v1 .* unfinished instances"):
            await Worker(App(sagas=[new]), store).start()
        assert await store.live_definitions() == []
        untouched = await store.get(handle.saga_id)
        assert untouched is not None and untouched.status is SagaStatus.PENDING
    finally:
        await store.close()
    # Deployed as the how-to says: the change as a new version, beside the old one.
    async with running(App(sagas=[old, shaped("ask.v2", version=2)]), db) as worker:
        assert {(d.saga_type, d.version) for d in await worker.store.live_definitions()} == {
            ("shaped", 1),
            ("shaped", 2),
        }


async def test_a_second_worker_with_other_steps_is_refused_at_attach(pg_url: str) -> None:
    async with running(App(sagas=[shaped("ask.v1")]), pg_url) as first:
        store = open_store(pg_url, owner=True)
        try:
            with pytest.raises(DefinitionError, match=r"'shaped' v1 .* running worker"):
                await Worker(App(sagas=[shaped("ask.v2")]), store).start()
        finally:
            await store.close()
        live = await first.store.live_definitions()
        assert [d.fingerprint for d in live] == [shaped("ask.v1").build().fingerprint]
        # The same steps join it.
        async with running(App(sagas=[shaped("ask.v1")]), pg_url):
            assert len(await first.store.live_definitions()) == 2


# -- Semantics 15 and 11: queued starts ---------------------------------------------------------


async def test_a_client_without_a_worker_refuses_a_used_key_with_other_input(db: str) -> None:
    saga = holding("x", None, [])
    async with client_of(db) as client:
        first = await client.start(saga, {"n": 1}, key="k")
        # Still queued: the queued start holds the key.
        again = await client.start(saga, {"n": 1}, key="k")
        assert again.saga_id == first.saga_id
        with pytest.raises(IdempotencyConflict, match="queued, not started yet"):
            await client.start(saga, {"n": 2}, key="k")
        assert len(await client.queued_starts()) == 1
        async with running(App(sagas=[saga]), db):
            done = await first.result(timeout=10)
        assert done.status is SagaStatus.COMPLETED
        # Now the instance holds it.
        with pytest.raises(IdempotencyConflict, match=f"used by saga {done.saga_id} with"):
            await client.start(saga, {"n": 2}, key="k")
        same = await client.start(saga, {"n": 1}, key="k")
        assert same.saga_id == done.saga_id


async def test_of_two_queued_starts_with_one_key_the_second_gets_the_conflict(db: str) -> None:
    saga = holding("x", None, [])
    definition = saga.build()
    async with client_of(db) as client:
        # Two clients that both found the key free: both starts are queued.
        handles = []
        for n in (1, 2):
            body: dict[str, Any] = {
                "saga_type": "held",
                "version": 1,
                "fingerprint": definition.fingerprint,
                "data": {"n": n},
                "key": "k",
                "correlation_id": None,
            }
            command_id = await client.store.enqueue(f"start-{n}", "start", body)
            handles.append(SagaHandle(f"start-{n}", client, "held", "k", command_id))
        async with running(App(sagas=[saga]), db):
            first = await handles[0].result(timeout=10)
            with pytest.raises(IdempotencyConflict, match="different input"):
                await handles[1].result(timeout=10)
            with pytest.raises(IdempotencyConflict):
                await handles[1].get()
        assert first.saga_id == "start-1" and first.data == {"n": 1}
        assert [i.saga_id for i in await client.list()] == ["start-1"]
        refused = await client.queued_start("start-2")
        assert refused is not None and refused.state is CommandState.REFUSED
        assert refused.error is not None and refused.error.startswith("IdempotencyConflict: ")


async def test_a_queued_start_is_listed_shown_and_cancelled_by_its_id(db: str) -> None:
    calls: list[str] = []
    saga = holding("x", None, calls)
    async with client_of(db) as client:
        handle = await client.start(saga, {"n": 1}, key="k", correlation_id="c-1")
        [queued] = await client.queued_starts()
        assert (queued.saga_id, queued.saga_type, queued.version, queued.key) == (
            handle.saga_id,
            "held",
            1,
            "k",
        )
        assert (queued.data, queued.correlation_id) == ({"n": 1}, "c-1")
        assert queued.state is CommandState.PENDING
        assert queued.stalled is not None and "no worker is running" in queued.stalled
        assert await client.queued_start(handle.saga_id) == queued
        assert await client.queued_starts(saga_type="other") == []

        cancel = await client.abort(handle.saga_id, "ordered by mistake", by="alice")
        assert cancel.cancelled_start and cancel.saga_id == handle.saga_id
        assert await client.queued_starts() == []
        cancelled = await client.queued_start(handle.saga_id)
        assert cancelled is not None and cancelled.state is CommandState.REFUSED
        assert cancelled.error == "aborted before it started: ordered by mistake (by alice)"
        with pytest.raises(CommandRefused, match="aborted before it started"):
            await handle.result(timeout=1)
        with pytest.raises(CommandRefused, match="never started"):
            await client.abort(handle.saga_id, "again")

        async with running(App(sagas=[saga]), db) as worker:
            # A start the worker can run, queued behind the cancelled one: once it is done,
            # the cancelled one had its chance to be (wrongly) applied.
            later = await client.start(saga, {"n": 2})
            await later.result(timeout=10)
            assert [i.saga_id for i in await worker.client.list()] == [later.saga_id]
        # The key was never taken.
        free = await client.start(saga, {"n": 3}, key="k")
        assert free.saga_id != handle.saga_id


async def test_once_a_queued_start_is_applied_abort_applies_to_its_instance(db: str) -> None:
    gate = asyncio.Event()
    calls: list[str] = []
    saga = holding("x", gate, calls)
    async with client_of(db) as client:
        handle = await client.start(saga, {"n": 1})
        async with running(App(sagas=[saga]), db):
            await until(lambda: _called(calls, "x:hold"))
            command = await client.abort(handle.saga_id, "changed my mind")
            assert not command.cancelled_start
            await command.wait(timeout=10)
            gate.set()
            done = await handle.result(timeout=10)
    assert done.status is SagaStatus.FAILED
    assert "changed my mind" in (done.reason or "")


async def test_the_queue_says_why_a_start_waits(db: str) -> None:
    async with client_of(db) as client:
        handle = await client.start(shaped("ask.v1", version=7), {"n": 1})
        async with running(App(sagas=[shaped("ask.v1")]), db):
            start = await client.queued_start(handle.saga_id)
            assert start is not None and start.state is CommandState.PENDING
            assert start.stalled == "no running worker has the definition shaped v7"
            [listed] = await client.queued_starts()
            assert listed.stalled == start.stalled
        instances = await client.store.list(InstanceFilter())
        assert instances == []
