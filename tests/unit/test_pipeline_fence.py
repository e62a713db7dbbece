"""The pipelined committer never builds on a state it did not write, and a local step's
answer that could not be committed is committed later without running the step again.

Batch N+1 is decided while batch N commits, on the states N staged. When N's write of an
instance fails its revision check because another worker claimed the instance meanwhile, the
claim has bumped the stored revision to the very number N's lost state had, so N+1's check
(expecting that number) would pass and N+1 would overwrite the new owner's state with one
built on what was never written. That was a split brain seen under SIGSTOP in
test_takeover.py; here it is reproduced step by step on one SQLite file.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from sagakit import App, Saga, SagaStatus, SqliteStore, StepContext, Worker
from sagakit.definition import Phase
from sagakit.errors import ConcurrencyConflict, StorageError
from sagakit.ports import Batch, Timer
from sagakit.state import HistoryKind
from sagakit.transitions import Outcome, Reply, TimerFired, TimerKind
from sagakit.worker.items import Item as _Item


class HeldStore(SqliteStore):
    """Commits wait while ``hold`` is set: the test decides what happens meanwhile."""

    def __init__(self, path: str) -> None:
        super().__init__(path, owner=True)
        self.hold = asyncio.Event()
        self.release = asyncio.Event()
        self.waiting = asyncio.Event()

    async def commit(self, batch: Batch) -> list[bool]:
        if self.hold.is_set():
            self.waiting.set()
            await self.release.wait()
        return await super().commit(batch)

    def let_go(self) -> None:
        """Commit the held batch and every later one."""
        self.hold.clear()
        self.release.set()


def claim_behind_the_worker(path: str, saga_id: str) -> None:
    """Another worker's claim: it takes the instance and bumps its revision."""
    with sqlite3.connect(path) as other:
        other.execute(
            "UPDATE sagakit_instances SET owner = 'intruder', revision = revision + 1 "
            "WHERE saga_id = ?",
            (saga_id,),
        )


async def until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.005)


async def test_a_batch_built_on_a_lost_state_is_not_written(tmp_path: Path) -> None:
    gate = asyncio.Event()

    async def first(ctx: StepContext[Any]) -> str:
        await gate.wait()
        return "one"

    async def second(ctx: StepContext[Any]) -> str:
        await asyncio.Event().wait()  # never answers within the test
        return "two"

    async def undo(ctx: StepContext[Any]) -> None:
        return None

    saga: Saga[Any] = Saga("fenced")
    saga.local("first", first, compensation=undo)
    saga.local("second", second, compensation=undo)
    path = str(tmp_path / "fence.db")
    store = HeldStore(path)
    try:
        await _run(saga, store, gate, path)
    finally:
        await store.close()


async def _run(saga: Saga[Any], store: HeldStore, gate: asyncio.Event, path: str) -> None:
    async with Worker(App(sagas=[saga]), store) as worker:
        handle = await worker.client.start(saga, {"n": 1})
        saga_id = handle.saga_id
        started = await store.get(saga_id)
        assert started is not None
        base = started.revision

        # Batch N: the first step's answer, held before it is written.
        store.hold.set()
        gate.set()
        await asyncio.wait_for(store.waiting.wait(), 10)
        # Batch N+1, decided on N's staged state: a duplicate of that answer.
        duplicate = Reply("first", Phase.ACTION, 1, Outcome.SUCCESS, "one")
        worker.committer.submit(_Item(saga_id, event=duplicate))
        await until(lambda: getattr(worker.committer.staged(saga_id), "revision", 0) == base + 2)

        # Meanwhile another worker claims the instance: the stored revision becomes base + 1.
        claim_behind_the_worker(path, saga_id)
        store.let_go()
        await until(lambda: worker.committer.staged(saga_id) is None)
        await asyncio.sleep(0.05)  # let any later batch commit too

        stored = await store.get(saga_id)
        assert stored is not None
        assert stored.owner == "intruder"
        assert stored.revision == base + 1  # neither N nor N+1 was written
        assert [s.status.value for s in stored.steps] == ["running", "pending"]


async def test_side_records_decided_on_a_lost_state_are_not_written(tmp_path: Path) -> None:
    # Batch N+1 decides a timeout of step 1 on N's staged state (step 1 done): it changes
    # nothing but consumes the timer. N is lost to a claim; the new owner's instance still
    # has step 1 running, so its timeout timer must survive.
    saga: Saga[Any] = Saga("fenced_remote")
    saga.remote("first", participant="nobody", command="do", compensation="undo", timeout=100)
    saga.remote("second", participant="nobody", command="do2", compensation="undo2")
    path = str(tmp_path / "side.db")
    store = HeldStore(path)
    try:
        async with Worker(App(sagas=[saga]), store) as worker:
            saga_id = (await worker.client.start(saga, {"n": 1})).saga_id
            with sqlite3.connect(path) as db:
                name, kind, step, phase, attempt, due = db.execute(
                    "SELECT name, kind, step, phase, attempt, due_at FROM sagakit_timers "
                    "WHERE saga_id = ? AND name LIKE 'timeout:first:%'",
                    (saga_id,),
                ).fetchone()
            fired = Timer(saga_id, name, TimerKind(kind), due, step, Phase(phase), attempt)

            store.hold.set()
            answer = Reply("first", Phase.ACTION, 1, Outcome.SUCCESS, "one")
            worker.committer.submit(_Item(saga_id, event=answer))  # batch N, held
            await asyncio.wait_for(store.waiting.wait(), 10)
            timeout = TimerFired(TimerKind.TIMEOUT, "first", Phase.ACTION, 1)
            late = worker.committer.submit(_Item(saga_id, event=timeout, timer=fired))  # batch N+1
            await until(lambda: worker.committer.idle())
            claim_behind_the_worker(path, saga_id)
            store.let_go()
            with pytest.raises(ConcurrencyConflict):
                await asyncio.wait_for(late, 10)

            with sqlite3.connect(path) as db:
                names = {
                    r[0]
                    for r in db.execute(
                        "SELECT name FROM sagakit_timers WHERE saga_id = ?", (saga_id,)
                    )
                }
            assert name in names
    finally:
        await store.close()


class FailsOnce(SqliteStore):
    """The first commit that carries an answer of ``step`` fails (the database went away)."""

    def __init__(self, path: str, step: str) -> None:
        super().__init__(path, owner=True)
        self.step = step
        self.failed = 0

    async def commit(self, batch: Batch) -> list[bool]:
        answers = [h for t in batch.transitions for h in t.history if h.kind is HistoryKind.REPLY]
        if not self.failed and any(h.step == self.step for h in answers):
            self.failed += 1
            raise StorageError("connection reset")
        return await super().commit(batch)


async def test_a_local_reply_whose_commit_fails_is_committed_later_and_not_run_again(
    tmp_path: Path,
) -> None:
    runs: list[str] = []

    async def first(ctx: StepContext[Any]) -> str:
        runs.append(ctx.step)
        return "one"

    async def second(ctx: StepContext[Any]) -> str:
        runs.append(ctx.step)
        return "two"

    async def undo(ctx: StepContext[Any]) -> None:
        return None

    saga: Saga[Any] = Saga("retried_answer")
    saga.local("first", first, compensation=undo)
    saga.local("second", second, compensation=undo)
    store = FailsOnce(str(tmp_path / "once.db"), "first")
    try:
        async with Worker(App(sagas=[saga]), store) as worker:
            instance = await worker.client.run(saga, {}, timeout=10)
            assert worker.local_runs == 0  # every run's attempt was released
    finally:
        await store.close()
    assert store.failed == 1
    assert instance.status is SagaStatus.COMPLETED
    assert runs == ["first", "second"]  # the answer was submitted again, not the step
    assert instance.steps[0].result == "one"
