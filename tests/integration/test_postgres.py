"""PostgreSQL: migrations, workers sharing one database, takeover and fencing, wake-ups,
retention. Each test runs in a schema of its own on the real server."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest

from sagakit import (
    App,
    Client,
    IdempotencyConflict,
    RetryPolicy,
    Saga,
    SagaStatus,
    StepContext,
    StepFailed,
    Worker,
)
from sagakit.errors import StorageError
from sagakit.examples.demo import run_demo
from sagakit.ports import Batch, InstanceWrite
from sagakit.retention import RetentionPolicy
from sagakit.state import SagaInstance, StepState
from sagakit.storage.postgres import PostgresStore, Q, migrations, split_url

SNAPSHOT = Path(__file__).with_name("postgres_schema.txt")


@pytest.fixture
def url(pg_url: str) -> str:
    return pg_url


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.02)


async def catalog(url: str) -> str:
    """Tables, columns and indexes of the schema, as sorted text."""
    dsn, schema = split_url(url)
    conn = await asyncpg.connect(dsn)
    try:
        columns = await conn.fetch(
            "SELECT table_name, column_name, data_type, is_nullable, column_default"
            " FROM information_schema.columns WHERE table_schema = $1",
            schema,
        )
        indexes = await conn.fetch(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = $1", schema
        )
    finally:
        await conn.close()
    lines = [f"column {r[0]}.{r[1]} {r[2]} nullable={r[3]} default={r[4]}" for r in columns] + [
        f"index {r[0]}.{r[1]} {r[2]}" for r in indexes
    ]
    return "\n".join(sorted(line.replace(f"{schema}.", "") for line in lines)) + "\n"


async def test_migrations_apply_once_and_give_the_pinned_schema(url: str) -> None:
    store = PostgresStore(url, migrate=False)
    try:
        assert await store.migrate() == [v for v, _, _ in migrations()]
        assert await store.migrate() == []  # idempotent
    finally:
        await store.close()
    # The schema is what all migrations applied give: a change to it is a new migration and
    # a deliberate update of the snapshot (regenerate with SAGAKIT_UPDATE_SNAPSHOT=1).
    found = await catalog(url)
    if os.environ.get("SAGAKIT_UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(found)
    assert found == SNAPSHOT.read_text()


async def test_a_reader_refuses_an_unmigrated_database(url: str) -> None:
    store = PostgresStore(url, migrate=False)
    try:
        with pytest.raises(Exception, match="sagakit migrate"):
            await store.get("x")
    finally:
        await store.close()


async def test_demo_runs_on_postgres(url: str) -> None:
    summary = await run_demo(url, sagas=60, concurrency=16, seed=3)
    assert summary["ledger_ok"], summary["ledger_problems"]
    assert cast(int, summary["completed"]) + cast(int, summary["failed"]) == 60
    assert summary["unsettled"] == summary["stuck"] == 0


def counting_saga(log: Counter[str], gate: asyncio.Event | None = None) -> Saga[Any]:
    saga: Saga[Any] = Saga("counted")

    async def first(ctx: StepContext[Any]) -> str:
        log[f"{ctx.saga_id}:first"] += 1
        return "one"

    async def undo_first(ctx: StepContext[Any]) -> None:
        log[f"{ctx.saga_id}:undo_first"] += 1

    async def second(ctx: StepContext[Any]) -> str:
        log[f"{ctx.saga_id}:second"] += 1
        if gate is not None:
            await gate.wait()
        if ctx.data.get("fail"):
            raise StepFailed("no")
        return "two"

    async def undo_second(ctx: StepContext[Any]) -> None:
        log[f"{ctx.saga_id}:undo_second"] += 1

    saga.local("first", first, compensation=undo_first)
    saga.local(
        "second",
        second,
        compensation=undo_second,
        timeout=30,
        retry=RetryPolicy(max_attempts=2, initial_delay=0.01),
    )
    return saga


async def test_two_workers_share_the_work_and_never_advance_one_instance_twice(url: str) -> None:
    log: Counter[str] = Counter()
    saga = counting_saga(log)
    app = App(sagas=[saga])
    stores = [PostgresStore(url, owner=True) for _ in range(2)]
    reader = PostgresStore(url, owner=True)
    try:
        workers = [Worker(app, s, poll_interval=0.05) for s in stores]
        for w in workers:
            await w.start()
        client = Client(reader)
        handles = [
            await client.start(saga, {"n": i, "fail": i % 4 == 0}, key=f"k{i}") for i in range(40)
        ]
        results = [await h.result(timeout=30) for h in handles]
        owners = Counter(r.owner for r in results)
        for w in workers:
            await w.stop()
    finally:
        for s in [*stores, reader]:
            await s.close()
    assert [r.status for r in results] == [
        SagaStatus.FAILED if i % 4 == 0 else SagaStatus.COMPLETED for i in range(40)
    ]
    assert len(owners) == 2, owners  # both workers took queued starts
    assert max(log.values()) == 1  # every step and compensation ran once


async def test_a_paused_worker_is_taken_over_and_fenced(url: str) -> None:
    log: Counter[str] = Counter()
    gate = asyncio.Event()
    saga = counting_saga(log, gate)
    app = App(sagas=[saga])
    first_store, second_store = PostgresStore(url, owner=True), PostgresStore(url, owner=True)
    try:
        first = Worker(app, first_store, lease=0.6, poll_interval=0.05)
        await first.start()
        handle = await first.client.start(saga, {"fail": False})

        async def in_second_step() -> bool:
            return log[f"{handle.saga_id}:second"] == 1

        await until(in_second_step)
        # "Pause" the first worker: its lease stops being renewed, its step keeps running.
        for task in first._tasks:
            task.cancel()
        second = Worker(app, second_store, lease=0.6, poll_interval=0.05)
        await second.start()

        async def taken_over() -> bool:
            found = await second_store.get(handle.saga_id)
            return found is not None and found.owner == second.worker_id

        await until(taken_over)
        # The new owner runs the in-flight local step again (at least once, same key) ...
        await until(lambda: _value(log[f"{handle.saga_id}:second"] == 2))
        gate.set()
        done = await second.wait_settled(handle.saga_id, timeout=20)
        # ... and the paused worker's late answer cannot overwrite it: its commit is fenced.
        await asyncio.sleep(0.3)
        after = await second_store.get(handle.saga_id)
        history = await second_store.history(handle.saga_id)
        await second.stop()
        await first.stop()
    finally:
        await first_store.close()
        await second_store.close()
    assert done.status is SagaStatus.COMPLETED
    assert after is not None and after.revision == done.revision
    replies = [h for h in history if h.kind.value == "reply" and h.step == "second"]
    assert len(replies) == 1


async def _value(flag: bool) -> bool:
    return flag


async def test_a_queued_command_wakes_a_sleeping_worker(url: str) -> None:
    log: Counter[str] = Counter()
    saga = counting_saga(log)
    store, reader = PostgresStore(url, owner=True), PostgresStore(url, owner=True)
    try:
        worker = Worker(App(sagas=[saga]), store, poll_interval=30.0)  # polls rarely
        await worker.start()
        await asyncio.sleep(0.2)  # let the worker settle into its long poll
        began = time.monotonic()
        handle = await Client(reader).start(saga, {"fail": False})
        result = await Client(reader).wait(handle.saga_id, timeout=10)
        waited = time.monotonic() - began
        await worker.stop()
    finally:
        await store.close()
        await reader.close()
    assert result.status is SagaStatus.COMPLETED
    assert waited < 10  # LISTEN/NOTIFY woke it long before its 30 s poll


async def test_purge_keeps_starts_idempotent_and_never_touches_stuck(url: str) -> None:
    log: Counter[str] = Counter()
    saga = counting_saga(log)
    store = PostgresStore(url, owner=True)
    try:
        async with Worker(App(sagas=[saga]), store) as worker:
            done = await worker.client.run(saga, {"fail": False}, key="keep-me", timeout=10)
            await asyncio.sleep(0.05)
            purged, _ = await worker.client.purge(RetentionPolicy(0.01, 86400.02))
            assert purged == 1
            assert await store.get(done.saga_id) is None
            assert await store.history(done.saga_id) == []
            again = await worker.client.start(saga, {"fail": False}, key="keep-me")
            assert again.saga_id == done.saga_id  # the purged instance's key still holds
            with pytest.raises(IdempotencyConflict):
                await worker.client.start(saga, {"fail": True}, key="keep-me")
    finally:
        await store.close()
    assert log[f"{done.saga_id}:first"] == 1


async def test_a_compensation_cannot_overtake_its_running_action(url: str) -> None:
    from sagakit import Command, MemoryTransport, Participant, ParticipantTx
    from sagakit.definition import Phase
    from sagakit.messages import Envelope, MessageKind, decode, encode
    from sagakit.participant import ParticipantRunner
    from sagakit.transitions import idempotency_key

    entered, release = asyncio.Event(), asyncio.Event()
    bank = Participant("bank")

    @bank.command("debit")
    async def debit(tx: ParticipantTx, cmd: Command) -> object:
        await tx.execute("INSERT INTO debits (saga_id) VALUES (?)", (cmd.saga_id,))
        entered.set()
        await release.wait()  # still inside its transaction
        return {"debited": True}

    @bank.command("credit")
    async def credit(tx: ParticipantTx, cmd: Command) -> object:
        await tx.execute("DELETE FROM debits WHERE saga_id = ?", (cmd.saga_id,))
        return {"credited": True}

    stores = [PostgresStore(url, owner=True) for _ in range(2)]
    replies: list[Envelope] = []
    try:
        await stores[0].transaction(lambda tx: tx.execute("CREATE TABLE debits (saga_id TEXT)"))
        transports = [MemoryTransport(), MemoryTransport()]
        for transport in transports:

            async def collect(body: bytes) -> None:
                replies.append(decode(body))

            await transport.subscribe("replies", collect)
        # Two participant processes sharing one database, as with several workers.
        runners = [ParticipantRunner(bank, s, t) for s, t in zip(stores, transports, strict=True)]

        def command(kind: str, phase: Phase) -> bytes:
            return encode(
                Envelope(
                    id=f"m-{kind}",
                    kind=MessageKind.COMMAND,
                    type=kind,
                    saga_id="s1",
                    saga_type="pay",
                    definition_version=1,
                    step="debit",
                    phase=phase,
                    attempt=1,
                    idempotency_key=idempotency_key("s1", "debit", phase),
                    correlation_id="s1",
                    timestamp=0.0,
                    reply_to="replies",
                )
            )

        action = asyncio.create_task(runners[0].handle(command("debit", Phase.ACTION)))
        async with asyncio.timeout(10):
            await entered.wait()
        undo = asyncio.create_task(runners[1].handle(command("credit", Phase.COMPENSATION)))
        await asyncio.sleep(0.3)  # give the compensation every chance to overtake
        assert not undo.done()  # it waits for the action's transaction
        release.set()
        async with asyncio.timeout(10):
            await asyncio.gather(action, undo)
        left = await stores[0].transaction(lambda tx: tx.execute("SELECT count(*) FROM debits"))
    finally:
        for s in stores:
            await s.close()
    assert left == [(0,)]  # the undo ran after the effect, not as a no-op before it


async def test_a_step_that_keeps_the_status_is_a_hot_update(url: str) -> None:
    # Migration 3: status_at moves only with the status, so a step's update touches no index.
    log: Counter[str] = Counter()
    saga = counting_saga(log).build()
    store = PostgresStore(url, owner=True)
    try:
        async with Worker(App(sagas=[saga]), store) as worker:
            done = await worker.client.run(saga, {})
            failed = await worker.client.run(saga, {"fail": True})
    finally:
        await store.close()  # its connections end, and flush their statistics
    assert done.status is SagaStatus.COMPLETED and failed.status is SagaStatus.FAILED
    dsn, schema = split_url(url)
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema or "public"})
    try:
        rows = {
            r["saga_id"]: r
            for r in await conn.fetch(
                "SELECT saga_id, status_at, updated_at FROM sagakit_instances"
            )
        }
        # Finished: it entered its last status with its last update.
        assert rows[done.saga_id]["status_at"] == rows[done.saga_id]["updated_at"]
        assert rows[failed.saga_id]["status_at"] == rows[failed.saga_id]["updated_at"]

        async def hot_updates() -> bool:
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            return bool(
                await conn.fetchval(
                    "SELECT n_tup_hot_upd FROM pg_stat_user_tables"
                    " WHERE relid = 'sagakit_instances'::regclass"
                )
            )

        await until(hot_updates, timeout=10)
    finally:
        await conn.close()


async def test_status_at_moves_with_the_status_only(url: str) -> None:
    store = PostgresStore(url, owner=True)
    dsn, schema = split_url(url)
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema or "public"})
    try:
        await store.migrate()
        await conn.execute(
            "INSERT INTO sagakit_instances (saga_id, saga_type, version, fingerprint, status,"
            " correlation_id, created_at, updated_at, status_at, revision, state)"
            " VALUES ('a', 't', 1, 'f', 'pending', 'a', 1, 1, 1, 1, '{}'),"
            " ('b', 't', 1, 'f', 'pending', 'b', 1, 2, 2, 1, '{}')"
        )
        sql = Q["update_instances"]
        await conn.fetch(sql, ["a"], [1], ["pending"], [5.0], [2], ["{}"])
        await conn.fetch(sql, ["b"], [1], ["stuck"], [3.0], [2], ["{}"])
        fetched = await conn.fetch("SELECT saga_id, status_at FROM sagakit_instances")
        rows = {row[0]: row[1] for row in fetched}
        assert rows == {"a": 1.0, "b": 3.0}
    finally:
        await conn.close()
        await store.close()


async def test_a_commit_the_driver_refuses_is_not_a_lost_connection(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def instance(revision: int) -> SagaInstance:
        return SagaInstance(
            saga_id="refused",
            saga_type="order",
            version=1,
            fingerprint="fp",
            status=SagaStatus.PENDING,
            data=None,
            steps=(StepState("reserve"),),
            correlation_id="refused",
            created_at=1.0,
            updated_at=float(revision),
            revision=revision,
        )

    store = PostgresStore(url, owner=True)
    try:
        assert await store.commit(Batch([InstanceWrite("refused", instance(1))])) == [True]
        kept = store._commit_conn
        assert kept is not None

        async def refuse(*args: object) -> object:
            # What asyncpg raises for a wrong argument count, the connection still open.
            raise asyncpg.InterfaceError("the server expects 14 arguments, 13 were passed")

        with monkeypatch.context() as patched:
            patched.setattr(type(kept), "fetch", refuse)
            with pytest.raises(StorageError, match="driver refused") as refused:
                await store.commit(Batch([InstanceWrite("refused", instance(2), 1)]))
        assert "connection lost" not in str(refused.value)
        assert store._commit_conn is kept  # not dropped: it works
        assert await store.commit(Batch([InstanceWrite("refused", instance(2), 1)])) == [True]
    finally:
        await store.close()
