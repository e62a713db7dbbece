"""A start by the saga type's name (what ``sagakit start`` and the HTTP API have), queued for
a worker; and an instance's reason whatever its status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sagakit import App, Client, Saga, SagaStatus, SqliteStore, StepContext, StepFailed, Worker


def versioned(version: int, seen: list[int]) -> Saga[Any]:
    saga: Saga[Any] = Saga("greet", version=version)

    async def hello(ctx: StepContext[Any]) -> int:
        seen.append(version)
        return version

    saga.local("hello", hello, kind="retriable")
    return saga


async def test_a_start_by_name_gets_the_newest_version_or_the_one_asked_for(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "s.db")
    seen: list[int] = []
    reader = SqliteStore(db, create=True)
    client = Client(reader)
    newest = await client.start("greet", {"n": 1})
    older = await client.start("greet", {"n": 2}, version=1)
    assert newest.queued and older.queued
    owner = SqliteStore(db, owner=True)
    try:
        app = App(sagas=[versioned(1, seen), versioned(2, seen)])
        async with Worker(app, owner) as worker:
            first = await newest.result(10)
            second = await older.result(10)
            local = await worker.client.run("greet", {"n": 3}, timeout=10)
    finally:
        await owner.close()
        await reader.close()
    assert (first.version, second.version, local.version) == (2, 1, 2)
    assert first.status is SagaStatus.COMPLETED and sorted(seen) == [1, 2, 2]


async def test_a_start_for_a_type_no_worker_runs_stays_queued(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    reader = SqliteStore(db, create=True)
    client = Client(reader)
    handle = await client.start("nobody-runs-this", {})
    owner = SqliteStore(db, owner=True)
    try:
        async with Worker(App(sagas=[versioned(1, [])]), owner) as worker:
            await worker.client.run("greet", {}, timeout=10)  # the worker is working
            assert await owner.get(handle.saga_id) is None
            pending = await owner.pending_commands(10)
            assert [c.saga_id for c in pending] == [handle.saga_id]
    finally:
        await owner.close()
        await reader.close()


async def test_reason_says_why_the_instance_has_its_status(tmp_path: Path) -> None:
    saga: Saga[Any] = Saga("why")

    async def ok(ctx: StepContext[Any]) -> None:
        return None

    async def broken_undo(ctx: StepContext[Any]) -> None:
        raise StepFailed("cannot undo")

    async def fail(ctx: StepContext[Any]) -> None:
        raise StepFailed("no")

    saga.local("first", ok, compensation=broken_undo)
    saga.local("second", fail, compensation=ok)
    store = SqliteStore(":memory:", owner=True)
    async with Worker(App(sagas=[saga]), store) as worker:
        stuck = await worker.client.run(saga, {}, timeout=10)
    await store.close()
    assert stuck.status is SagaStatus.STUCK
    assert stuck.reason == stuck.stuck_reason
    assert stuck.reason is not None and "compensation of step 'first'" in stuck.reason
    # What turned it back is kept, and is the reason again once it fails.
    assert stuck.failure_reason == "step 'second' failed: no"
