"""Contract tests for the store ports, run against every store adapter.

One test class per port (TransitionStore, InstanceQueries, TimerQueue, Outbox, CommandQueue,
DeadLetters, ParticipantStore, Leases, Catalog). Every class runs against every entry of
``ADAPTERS``: adding a backend (PostgreSQL) is one more line there, and a fake can never drift
from the real thing.

Times that the store judges (due timers) are taken relative to ``await store.now()``, so the
tests hold for a backend whose clock is the database's and cannot be replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest

from sagakit.catalog import DEAD_WORKER_RETENTION, DefinitionRecord, HandlerRecord, StepRecord
from sagakit.client import Client
from sagakit.definition import Phase, RetryPolicy, StepKind
from sagakit.encoding import JSON
from sagakit.errors import StorageError, StoreLocked, StoreRefused
from sagakit.messages import Envelope, MessageKind, decode, encode
from sagakit.participant import Command, Participant, ParticipantRunner
from sagakit.ports import (
    ORCHESTRATOR,
    Batch,
    CommandResult,
    CommandState,
    DeadLetter,
    DefinitionRef,
    InstanceFilter,
    InstanceWrite,
    OutboxMessage,
    ParticipantTx,
    Store,
    Timer,
    TimerOp,
    TimerOpKind,
)
from sagakit.retention import RetentionPolicy
from sagakit.state import (
    CompensationState,
    CompensationStatus,
    HistoryEntry,
    HistoryKind,
    SagaInstance,
    SagaStatus,
    StepState,
    StepStatus,
)
from sagakit.storage import PostgresStore, SqliteStore, open_store
from sagakit.transitions import Outcome, TimerKind
from sagakit.transport import MemoryTransport

PG_URL = os.environ.get("SAGAKIT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
#: The definition of make_instance's instances, as a worker claims by it.
FP3 = DefinitionRef("order", 3, "fp-3")

# -- adapters -----------------------------------------------------------------------------


def sqlite_file(tmp_path: Path) -> Store:
    return SqliteStore(str(tmp_path / "contract.db"), owner=True)


def sqlite_memory(tmp_path: Path) -> Store:
    return SqliteStore(":memory:")


_PG_SCHEMAS: set[str] = set()


def postgres(tmp_path: Path) -> Store:
    """The database of ``tmp_path``: a schema named after it, so reopening finds it again."""
    schema = "c_" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:16]
    _PG_SCHEMAS.add(schema)
    return PostgresStore(f"{PG_URL}?schema={schema}", owner=True)


@pytest.fixture(scope="session", autouse=True)
def _drop_contract_schemas() -> Iterator[None]:
    yield
    if _PG_SCHEMAS:
        asyncio.run(_drop(sorted(_PG_SCHEMAS)))


async def _drop(schemas: list[str]) -> None:
    conn = await asyncpg.connect(PG_URL)
    try:
        for schema in schemas:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def same_sql(text: str) -> str:
    return text


@dataclass(frozen=True)
class StoreAdapter:
    """How the contract tests open one backend.

    ``factory(tmp_path)`` opens a fresh database for a test; when the backend is
    ``persistent``, calling it again with the same ``tmp_path`` reopens that database (the
    durability tests do). ``sql`` turns the tests' business SQL (``?`` placeholders) into the
    backend's dialect.
    """

    name: str
    factory: Callable[[Path], Store]
    persistent: bool
    sql: Callable[[str], str] = same_sql
    #: Whether the query methods read apart from the writer, seeing only committed rows.
    isolated_reads: bool = True
    #: Whether several workers attach to one database at once, each with a lease that runs out
    #: unless renewed (PostgreSQL). On SQLite one worker owns the file: its lock is the lease.
    shared: bool = False

    async def open(self, tmp_path: Path) -> Store:
        return self.factory(tmp_path)


# One line per backend.
ADAPTERS = [
    pytest.param(StoreAdapter("sqlite", sqlite_file, persistent=True), id="sqlite"),
    pytest.param(
        StoreAdapter("postgresql", postgres, persistent=True, shared=True), id="postgresql"
    ),
    pytest.param(
        StoreAdapter("sqlite-memory", sqlite_memory, persistent=False, isolated_reads=False),
        id="sqlite-memory",
    ),
]
PERSISTENT_ADAPTERS = [p for p in ADAPTERS if cast(StoreAdapter, p.values[0]).persistent]


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> StoreAdapter:
    chosen: StoreAdapter = request.param
    if chosen.name == "postgresql":
        request.getfixturevalue("postgres_available")
    return chosen


@pytest.fixture
async def store(adapter: StoreAdapter, tmp_path: Path) -> AsyncIterator[Store]:
    opened = await adapter.open(tmp_path)
    try:
        yield opened
    finally:
        await opened.close()


# -- builders -----------------------------------------------------------------------------


def make_instance(
    saga_id: str,
    *,
    saga_type: str = "order",
    status: SagaStatus = SagaStatus.PENDING,
    key: str | None = None,
    correlation_id: str | None = None,
    created_at: float = 1000.0,
    updated_at: float | None = None,
    revision: int = 1,
    data: JSON = None,
) -> SagaInstance:
    """An instance that uses every field, so a lossy encoding shows."""
    return SagaInstance(
        saga_id=saga_id,
        saga_type=saga_type,
        version=3,
        fingerprint="fp-3",
        status=status,
        data=data if data is not None else {"order_id": saga_id, "lines": [1, 2.5, "x", None]},
        steps=(
            StepState(
                "reserve", StepStatus.DONE, attempts=2, budget_from=1, result={"hold": "h-1"}
            ),
            StepState(
                "charge",
                StepStatus.COMPENSATING,
                attempts=1,
                result=None,
                error="timed out",
                outcome_known=False,
                compensation=CompensationState(CompensationStatus.RETRYING, 2, 1, "busy"),
            ),
            StepState("ship"),
        ),
        correlation_id=correlation_id or f"corr-{saga_id}",
        created_at=created_at,
        updated_at=updated_at if updated_at is not None else created_at,
        idempotency_key=key,
        input_digest="sha256:abc",
        deadline_at=5000.5,
        deadline_passed=True,
        failure_reason="step 'charge' failed",
        stuck_reason=None,
        stuck_step=None,
        point_of_no_return="ship",
        revision=revision,
    )


def created(saga_id: str, at: float = 1000.0) -> HistoryEntry:
    return HistoryEntry(at, HistoryKind.CREATED, detail={"by": "test"})


def message(
    id: str, *, source: str = ORCHESTRATOR, destination: str = "inventory", saga_id: str = "s1"
) -> OutboxMessage:
    return OutboxMessage(id, source, destination, f"body of {id}".encode() + b"\x00\xff", saga_id)


def timer(
    saga_id: str, name: str, due_at: float, *, attempt: int = 1, kind: TimerKind = TimerKind.TIMEOUT
) -> Timer:
    return Timer(
        saga_id, name, kind, due_at, step="reserve", phase=Phase.COMPENSATION, attempt=attempt
    )


def set_timer(t: Timer) -> TimerOp:
    return TimerOp(TimerOpKind.SET, timer=t)


def insert(inst: SagaInstance, **records: Any) -> InstanceWrite:
    return InstanceWrite(
        inst.saga_id,
        instance=inst,
        expected_revision=None,
        history=[created(inst.saga_id)],
        **records,
    )


def update(inst: SagaInstance, expected: int, **records: object) -> InstanceWrite:
    return InstanceWrite(inst.saga_id, instance=inst, expected_revision=expected, **records)  # type: ignore[arg-type]


async def timers_of(store: Store) -> set[tuple[str, str, float, int]]:
    """Every timer, as (saga, name, due_at, attempt): the tests set them all in the past."""
    return {(t.saga_id, t.name, t.due_at, t.attempt) for t in await store.due(10_000)}


async def pending_ids(store: Store, source: str = ORCHESTRATOR) -> list[str]:
    return [m.id for m in await store.pending(source, 10_000)]


# -- TransitionStore ----------------------------------------------------------------------


class TestTransitionStore:
    async def test_insert_then_update_with_the_current_revision(self, store: Store) -> None:
        inst = make_instance("s1")
        assert await store.commit(Batch([insert(inst)])) == [True]
        moved = replace(inst, status=SagaStatus.COMPENSATING, updated_at=1001.0, revision=2)
        assert await store.commit(Batch([update(moved, expected=1)])) == [True]
        assert await store.get("s1") == moved

    async def test_a_stale_transition_writes_none_of_its_records_and_the_rest_commit(
        self, store: Store
    ) -> None:
        past = await store.now() - 100
        ids = ["a", "stale", "c"]
        # Each instance exists with revision 1, one timer, one inbound message to consume.
        await store.commit(
            Batch(
                [
                    insert(
                        make_instance(s),
                        outbox=[message(f"in-{s}", source="inbound", saga_id=s)],
                        timer_ops=[set_timer(timer(s, "t", past))],
                    )
                    for s in ids
                ]
            )
        )
        cmds = {s: await store.enqueue(s, "abort", {"reason": s}) for s in ids}
        before = await store.get("stale")

        def moved(s: str, expected: int) -> InstanceWrite:
            return update(
                replace(make_instance(s), status=SagaStatus.COMPENSATING, revision=2),
                expected,
                history=[HistoryEntry(1001.0, HistoryKind.OPERATOR, detail={"who": s})],
                outbox=[message(f"out-{s}", saga_id=s)],
                timer_ops=[
                    TimerOp(TimerOpKind.CANCEL, names=("t",)),
                    set_timer(timer(s, "t2", past + 1)),
                ],
                consumed=[f"in-{s}"],
                commands=[CommandResult(cmds[s], CommandState.APPLIED)],
            )

        batch = Batch(
            [moved("a", 1), moved("stale", 0), moved("c", 1)],
            dead_letters=[DeadLetter("sagakit.replies", "bad", b"{")],
        )
        assert await store.commit(batch) == [True, False, True]

        # The stale transition left everything as it was ...
        assert await store.get("stale") == before
        assert await store.history("stale") == [created("stale")]
        assert await pending_ids(store) == ["out-a", "out-c"]
        assert await pending_ids(store, "inbound") == ["in-stale"]
        assert await timers_of(store) == {
            ("stale", "t", past, 1),
            ("a", "t2", past + 1, 1),
            ("c", "t2", past + 1, 1),
        }
        stale_cmd = await store.command(cmds["stale"])
        assert stale_cmd is not None and stale_cmd.state is CommandState.PENDING
        # ... while the others and the batch's own records committed.
        for s in ("a", "c"):
            got = await store.get(s)
            assert got is not None and got.revision == 2
            assert got.status is SagaStatus.COMPENSATING
            assert [e.kind for e in await store.history(s)] == [
                HistoryKind.CREATED,
                HistoryKind.OPERATOR,
            ]
            cmd = await store.command(cmds[s])
            assert cmd is not None and cmd.state is CommandState.APPLIED
        assert [d.reason for d in await store.dead_letters(10)] == ["bad"]

    async def test_a_revision_checked_twice_in_one_batch_lets_only_the_first_through(
        self, store: Store
    ) -> None:
        inst = make_instance("s1")
        await store.commit(Batch([insert(inst)]))
        first = replace(inst, status=SagaStatus.COMPLETED, revision=2)
        second = replace(inst, status=SagaStatus.FAILED, revision=2)
        following = replace(first, updated_at=2000.0, revision=3)
        result = await store.commit(
            Batch([update(first, 1), update(second, 1), update(following, 2)])
        )
        assert result == [True, False, True]
        assert await store.get("s1") == following

    async def test_one_step_of_one_saga_writes_its_history_and_clears_its_timers(
        self, store: Store
    ) -> None:
        # The usual commit with one saga in flight (a scalar statement on PostgreSQL).
        past = await store.now() - 100
        inst = make_instance("s1")
        await store.commit(Batch([insert(inst), insert(make_instance("s2"))]))
        await store.commit(
            Batch(
                [
                    InstanceWrite("s1", timer_ops=[set_timer(timer("s1", n, past)) for n in "ab"]),
                    InstanceWrite("s2", timer_ops=[set_timer(timer("s2", "a", past))]),
                ]
            )
        )
        step = [
            HistoryEntry(1001.0, HistoryKind.REPLY, "reserve", "action", 1, {"outcome": "ok"}),
            HistoryEntry(1001.0, HistoryKind.DISPATCHED, "charge", "action", 1),
        ]
        moved = replace(inst, status=SagaStatus.PENDING, updated_at=1001.0, revision=2)
        assert await store.commit(Batch([update(moved, expected=1, history=step)])) == [True]
        assert await store.get("s1") == moved
        assert await store.history("s1") == [created("s1"), *step]
        assert await timers_of(store) == {
            ("s1", "a", past, 1),
            ("s1", "b", past, 1),
            ("s2", "a", past, 1),
        }
        done = replace(moved, status=SagaStatus.COMPLETED, updated_at=1002.0, revision=3)
        end = [HistoryEntry(1002.0, HistoryKind.STATUS, detail={"to": "completed"})]
        clear = [TimerOp(TimerOpKind.CANCEL)]
        assert await store.commit(
            Batch([update(done, expected=2, history=end, timer_ops=clear)])
        ) == [True]
        assert await store.get("s1") == done
        assert await store.history("s1") == [created("s1"), *step, *end]
        assert await timers_of(store) == {("s2", "a", past, 1)}

    async def test_history_keeps_the_order_given_in_a_large_batch(self, store: Store) -> None:
        # One transition records several entries (a reply, then the status it led to); they
        # must read back in that order whatever plan the store uses to write a large batch.
        ids = [f"h{i}" for i in range(300)]
        await store.commit(Batch([insert(make_instance(i)) for i in ids]))
        kinds = [HistoryKind.REPLY, HistoryKind.STATUS, HistoryKind.DISPATCHED]
        steps = []
        for i in ids:
            inst = replace(make_instance(i), updated_at=1001.0, revision=2)
            entries = [HistoryEntry(1001.0, k, detail={"n": n}) for n, k in enumerate(kinds)]
            steps.append(update(inst, expected=1, history=entries))
        assert await store.commit(Batch(steps)) == [True] * len(ids)
        for i in ids[:: len(ids) // 10]:
            written = await store.history(i)
            assert [e.kind for e in written[1:]] == kinds, i

    async def test_one_stale_step_of_one_saga_writes_nothing(self, store: Store) -> None:
        past = await store.now() - 100
        inst = make_instance("s1")
        await store.commit(Batch([insert(inst)]))
        await store.commit(
            Batch([InstanceWrite("s1", timer_ops=[set_timer(timer("s1", "a", past))])])
        )
        stale = replace(inst, status=SagaStatus.COMPLETED, updated_at=1001.0, revision=6)
        entry = HistoryEntry(1001.0, HistoryKind.STATUS)
        for ops in ([], [TimerOp(TimerOpKind.CANCEL)]):
            assert await store.commit(
                Batch([update(stale, expected=5, history=[entry], timer_ops=ops)])
            ) == [False]
        assert await store.get("s1") == inst
        assert await store.history("s1") == [created("s1")]
        assert await timers_of(store) == {("s1", "a", past, 1)}

    async def test_an_update_of_a_missing_instance_is_rejected(self, store: Store) -> None:
        ghost = make_instance("ghost", revision=2)
        assert await store.commit(
            Batch([update(ghost, 1, outbox=[message("m1", saga_id="ghost")])])
        ) == [False]
        assert await store.get("ghost") is None
        assert await pending_ids(store) == []

    async def test_a_duplicate_idempotency_key_is_rejected_like_a_stale_transition(
        self, store: Store
    ) -> None:
        past = await store.now() - 100
        first = make_instance("s1", key="k1")
        assert await store.commit(Batch([insert(first)])) == [True]
        cmd = await store.enqueue("s2", "start", {})

        twin = insert(
            make_instance("s2", key="k1"),
            outbox=[message("m-s2", saga_id="s2")],
            timer_ops=[set_timer(timer("s2", "t", past))],
            consumed=["m-start"],
            commands=[CommandResult(cmd, CommandState.APPLIED)],
        )
        await store.commit(
            Batch([InstanceWrite("s0", outbox=[message("m-start", source="inbound")])])
        )
        result = await store.commit(
            Batch(
                [
                    twin,
                    insert(make_instance("s3", key="k1", saga_type="refund")),  # other type: fine
                    insert(make_instance("s4")),  # no key: never a duplicate
                    insert(make_instance("s5")),
                ]
            )
        )
        assert result == [False, True, True, True]
        assert await store.get("s2") is None
        assert await store.history("s2") == []
        assert await pending_ids(store) == []
        assert await pending_ids(store, "inbound") == ["m-start"]
        assert await timers_of(store) == set()
        queued = await store.command(cmd)
        assert queued is not None and queued.state is CommandState.PENDING
        assert await store.find_by_key("order", "k1") == first

    async def test_a_duplicate_key_within_one_batch_lets_the_first_win(self, store: Store) -> None:
        result = await store.commit(
            Batch(
                [
                    insert(make_instance("s1", key="k")),
                    insert(make_instance("s2", key="k")),
                ]
            )
        )
        assert result == [True, False]
        assert await store.find_by_key("order", "k") == make_instance("s1", key="k")
        assert await store.get("s2") is None

    async def test_inserting_an_existing_saga_id_is_rejected_and_overwrites_nothing(
        self, store: Store
    ) -> None:
        original = make_instance("s1")
        await store.commit(Batch([insert(original)]))
        again = insert(replace(original, status=SagaStatus.FAILED, data={"other": True}))
        assert await store.commit(Batch([again])) == [False]
        assert await store.get("s1") == original
        assert await store.history("s1") == [created("s1")]

    async def test_a_transition_without_instance_writes_its_side_records(
        self, store: Store
    ) -> None:
        await store.commit(Batch([insert(make_instance("s1"))]))
        side = InstanceWrite(
            "s1",
            history=[HistoryEntry(1002.0, HistoryKind.LATE_REPLY, "reserve", "action", 1)],
            outbox=[message("m1")],
        )
        assert await store.commit(Batch([side])) == [True]
        assert (await store.get("s1")) == make_instance("s1")
        assert [e.kind for e in await store.history("s1")] == [
            HistoryKind.CREATED,
            HistoryKind.LATE_REPLY,
        ]
        assert await pending_ids(store) == ["m1"]

    @pytest.mark.parametrize(
        "bad",
        [
            pytest.param(
                HistoryEntry(1.0, HistoryKind.CREATED, detail={"x": "caf\ud800"}), id="surrogate"
            ),
            pytest.param(
                HistoryEntry(1.0, HistoryKind.CREATED, detail={"x": 2**70}), id="huge-int"
            ),
        ],
    )
    async def test_a_value_the_store_cannot_hold_is_refused_and_writes_nothing(
        self, store: Store, bad: HistoryEntry
    ) -> None:
        # StoreRefused, not a plain StorageError: the committer then isolates the culprit
        # instead of retrying the whole batch as after a lost connection.
        good, poisoned = make_instance("s1"), make_instance("s2")
        with pytest.raises(StoreRefused):
            await store.commit(
                Batch(
                    transitions=[
                        insert(good),
                        InstanceWrite(
                            "s2", instance=poisoned, expected_revision=None, history=[bad]
                        ),
                    ]
                )
            )
        assert await store.get("s1") is None  # the whole transaction was rolled back
        assert await store.commit(Batch(transitions=[insert(good)])) == [True]
        assert await store.get("s1") is not None

    async def test_an_empty_batch_commits_nothing_and_returns_no_flags(self, store: Store) -> None:
        assert await store.commit(Batch()) == []


# -- InstanceQueries ----------------------------------------------------------------------


class TestInstanceQueries:
    async def test_get_round_trips_every_field(self, store: Store) -> None:
        inst = make_instance("s1", key="k1", data={"nested": {"a": [1, {"b": None}]}, "u": "é"})
        await store.commit(Batch([insert(inst)]))
        assert await store.get("s1") == inst
        assert await store.get("nope") is None

    async def test_find_by_key(self, store: Store) -> None:
        inst = make_instance("s1", key="k1")
        await store.commit(Batch([insert(inst), insert(make_instance("s2"))]))
        assert await store.find_by_key("order", "k1") == inst
        assert await store.find_by_key("refund", "k1") is None
        assert await store.find_by_key("order", "k2") is None

    async def _population(self, store: Store) -> None:
        await store.commit(
            Batch(
                [
                    insert(
                        make_instance(
                            "a",
                            saga_type="order",
                            status=SagaStatus.PENDING,
                            correlation_id="c1",
                            created_at=100.0,
                            updated_at=500.0,
                        )
                    ),
                    insert(
                        make_instance(
                            "b",
                            saga_type="order",
                            status=SagaStatus.COMPLETED,
                            correlation_id="c2",
                            created_at=200.0,
                            updated_at=400.0,
                        )
                    ),
                    insert(
                        make_instance(
                            "c",
                            saga_type="refund",
                            status=SagaStatus.PENDING,
                            correlation_id="c1",
                            created_at=300.0,
                            updated_at=300.0,
                        )
                    ),
                    insert(
                        make_instance(
                            "d",
                            saga_type="refund",
                            status=SagaStatus.STUCK,
                            correlation_id="c3",
                            created_at=400.0,
                            updated_at=600.0,
                        )
                    ),
                    insert(
                        make_instance(
                            "e",
                            saga_type="order",
                            status=SagaStatus.COMPENSATING,
                            correlation_id="c3",
                            created_at=500.0,
                            updated_at=200.0,
                        )
                    ),
                ]
            )
        )

    @pytest.mark.parametrize(
        ("flt", "expected"),
        [
            (InstanceFilter(), ["d", "a", "b", "c", "e"]),
            (InstanceFilter(limit=2), ["d", "a"]),
            (InstanceFilter(status=SagaStatus.PENDING), ["a", "c"]),
            (InstanceFilter(saga_type="refund"), ["d", "c"]),
            (InstanceFilter(correlation_id="c3"), ["d", "e"]),
            (InstanceFilter(created_after=300.0), ["d", "c", "e"]),  # inclusive
            (InstanceFilter(created_before=300.0), ["a", "b"]),  # exclusive
            (InstanceFilter(created_after=200.0, created_before=500.0), ["d", "b", "c"]),
            (InstanceFilter(status=SagaStatus.PENDING, saga_type="order"), ["a"]),
            (InstanceFilter(status=SagaStatus.FAILED), []),
        ],
        ids=[
            "all",
            "limit",
            "status",
            "type",
            "correlation",
            "after",
            "before",
            "window",
            "status+type",
            "none",
        ],
    )
    async def test_list_filters_most_recently_updated_first(
        self, store: Store, flt: InstanceFilter, expected: list[str]
    ) -> None:
        await self._population(store)
        assert [i.saga_id for i in await store.list(flt)] == expected

    async def test_list_returns_whole_instances(self, store: Store) -> None:
        inst = make_instance("s1", key="k")
        await store.commit(Batch([insert(inst)]))
        assert await store.list(InstanceFilter()) == [inst]

    async def test_history_in_commit_order_per_instance(self, store: Store) -> None:
        await store.commit(Batch([insert(make_instance("s1")), insert(make_instance("s2"))]))
        later = [
            HistoryEntry(
                1001.0,
                HistoryKind.DISPATCHED,
                "reserve",
                "action",
                1,
                {"command": "inventory.reserve"},
            ),
            HistoryEntry(
                999.0,
                HistoryKind.REPLY,
                "reserve",
                "action",
                1,
                {"outcome": "success", "result": {"hold": [1, 2]}},
            ),
        ]
        await store.commit(
            Batch(
                [
                    InstanceWrite("s1", history=later),
                    InstanceWrite("s2", history=[HistoryEntry(5.0, HistoryKind.STATUS)]),
                ]
            )
        )
        last = HistoryEntry(1003.0, HistoryKind.OPERATOR, None, None, None, {"who": "ops"})
        await store.commit(Batch([InstanceWrite("s1", history=[last])]))
        # Commit order, not time order: a clock that steps back does not reorder history.
        assert await store.history("s1") == [created("s1"), *later, last]
        assert await store.history("s2") == [created("s2"), HistoryEntry(5.0, HistoryKind.STATUS)]
        assert await store.history("nope") == []

    async def test_count_by_status(self, store: Store) -> None:
        assert {k: v for k, v in (await store.count_by_status()).items() if v} == {}
        await store.commit(
            Batch(
                [
                    insert(make_instance("a", status=SagaStatus.PENDING)),
                    insert(make_instance("b", status=SagaStatus.PENDING)),
                    insert(make_instance("c", status=SagaStatus.STUCK, saga_type="refund")),
                ]
            )
        )
        counts = await store.count_by_status()
        assert {k: v for k, v in counts.items() if v} == {
            SagaStatus.PENDING: 2,
            SagaStatus.STUCK: 1,
        }
        assert all(isinstance(k, SagaStatus) for k in counts)


# -- TimerQueue ---------------------------------------------------------------------------


class TestTimerQueue:
    async def test_due_returns_only_due_timers_earliest_first(self, store: Store) -> None:
        now = await store.now()
        timers = [
            timer("s1", "late", now - 10),
            Timer("s2", "deadline", TimerKind.DEADLINE, now - 50),  # defaults round-trip too
            timer("s3", "future", now + 3600),
            timer("s1", "early", now - 100, attempt=4, kind=TimerKind.RETRY),
        ]
        await store.commit(
            Batch([InstanceWrite(t.saga_id, timer_ops=[set_timer(t)]) for t in timers])
        )
        assert await store.due(100) == [timers[3], timers[1], timers[0]]
        assert await store.due(2) == [timers[3], timers[1]]

    async def test_next_due_is_the_earliest_timer_due_or_not(self, store: Store) -> None:
        assert await store.next_due() is None
        now = await store.now()
        await store.commit(
            Batch(
                [
                    InstanceWrite(
                        "s1",
                        timer_ops=[
                            set_timer(timer("s1", "b", now + 7200)),
                            set_timer(timer("s1", "a", now + 3600)),
                        ],
                    )
                ]
            )
        )
        assert await store.due(10) == []
        assert await store.next_due() == now + 3600

    async def test_now_is_the_clock_that_judges_due_timers(self, store: Store) -> None:
        first = await store.now()
        await store.commit(
            Batch([InstanceWrite("s1", timer_ops=[set_timer(timer("s1", "t", first))])])
        )
        assert await store.now() >= first
        assert [t.name for t in await store.due(10)] == ["t"]

    async def test_set_is_an_upsert_by_saga_and_name(self, store: Store) -> None:
        past = await store.now() - 100
        await store.commit(
            Batch(
                [
                    InstanceWrite("s1", timer_ops=[set_timer(timer("s1", "t", past))]),
                    InstanceWrite("s2", timer_ops=[set_timer(timer("s2", "t", past))]),
                ]
            )
        )
        await store.commit(
            Batch(
                [InstanceWrite("s1", timer_ops=[set_timer(timer("s1", "t", past + 5, attempt=2))])]
            )
        )
        assert await timers_of(store) == {("s1", "t", past + 5, 2), ("s2", "t", past, 1)}

    async def test_cancel_names_touches_only_those_names_of_that_saga(self, store: Store) -> None:
        past = await store.now() - 100
        await store.commit(
            Batch(
                [
                    InstanceWrite("s1", timer_ops=[set_timer(timer("s1", n, past)) for n in "abc"]),
                    InstanceWrite("s2", timer_ops=[set_timer(timer("s2", "a", past))]),
                ]
            )
        )
        await store.commit(
            Batch(
                [
                    InstanceWrite(
                        "s1",
                        timer_ops=[
                            TimerOp(TimerOpKind.CANCEL, names=("a", "b", "missing")),
                        ],
                    )
                ]
            )
        )
        assert await timers_of(store) == {("s1", "c", past, 1), ("s2", "a", past, 1)}

    async def test_cancel_all_touches_only_that_saga(self, store: Store) -> None:
        past = await store.now() - 100
        await store.commit(
            Batch(
                [
                    InstanceWrite("s1", timer_ops=[set_timer(timer("s1", n, past)) for n in "ab"]),
                    InstanceWrite("s2", timer_ops=[set_timer(timer("s2", "a", past))]),
                ]
            )
        )
        await store.commit(Batch([InstanceWrite("s1", timer_ops=[TimerOp(TimerOpKind.CANCEL)])]))
        assert await timers_of(store) == {("s2", "a", past, 1)}
        assert await store.next_due() == past

    async def test_fired_deletes_exactly_the_timer_that_fired(self, store: Store) -> None:
        past = await store.now() - 100
        t = timer("s1", "t", past)
        await store.commit(Batch([InstanceWrite("s1", timer_ops=[set_timer(t)])]))
        [fired] = await store.due(10)
        await store.commit(
            Batch([InstanceWrite("s1", timer_ops=[TimerOp(TimerOpKind.FIRED, fired)])])
        )
        assert await store.due(10) == []
        assert await store.next_due() is None

    async def test_fired_keeps_a_timer_set_again_with_a_new_due_time(self, store: Store) -> None:
        past = await store.now() - 100
        old = timer("s1", "t", past)
        await store.commit(Batch([InstanceWrite("s1", timer_ops=[set_timer(old)])]))
        renewed = replace(old, due_at=past + 1)
        await store.commit(Batch([InstanceWrite("s1", timer_ops=[set_timer(renewed)])]))
        # The old firing is applied after the timer was set again: it must not delete it.
        await store.commit(
            Batch([InstanceWrite("s1", timer_ops=[TimerOp(TimerOpKind.FIRED, old)])])
        )
        assert await store.due(10) == [renewed]

    async def test_fired_keeps_a_timer_set_again_with_a_new_attempt(self, store: Store) -> None:
        past = await store.now() - 100
        old = timer("s1", "t", past, attempt=1)
        await store.commit(Batch([InstanceWrite("s1", timer_ops=[set_timer(old)])]))
        renewed = replace(old, attempt=2)
        await store.commit(Batch([InstanceWrite("s1", timer_ops=[set_timer(renewed)])]))
        await store.commit(
            Batch([InstanceWrite("s1", timer_ops=[TimerOp(TimerOpKind.FIRED, old)])])
        )
        assert await store.due(10) == [renewed]

    @pytest.mark.parametrize(
        ("ops", "left"),
        [
            (["fired-old", "set-new"], {"new"}),
            (["set-new", "fired-old"], {"new"}),
            (["set-new", "cancel"], set()),
            (["cancel", "set-new"], {"new"}),
            (["set-new", "cancel-all", "set-other"], {"other"}),
        ],
    )
    async def test_timer_ops_apply_in_order(
        self, store: Store, ops: list[str], left: set[str]
    ) -> None:
        past = await store.now() - 100
        old = timer("s1", "t", past)
        new = replace(old, due_at=past + 1, attempt=2)
        other = timer("s1", "u", past + 2)
        await store.commit(Batch([InstanceWrite("s1", timer_ops=[set_timer(old)])]))
        by_name = {
            "fired-old": TimerOp(TimerOpKind.FIRED, old),
            "set-new": set_timer(new),
            "set-other": set_timer(other),
            "cancel": TimerOp(TimerOpKind.CANCEL, names=("t",)),
            "cancel-all": TimerOp(TimerOpKind.CANCEL),
        }
        await store.commit(Batch([InstanceWrite("s1", timer_ops=[by_name[o] for o in ops])]))
        named = {"new": new, "other": other}
        assert await store.due(10) == sorted((named[n] for n in left), key=lambda t: t.due_at)


# -- Outbox -------------------------------------------------------------------------------


class TestOutbox:
    async def test_pending_by_source_in_insertion_order(self, store: Store) -> None:
        await store.commit(
            Batch(
                [
                    InstanceWrite("s1", outbox=[message("z1"), message("a2")]),
                    InstanceWrite("s2", outbox=[message("p1", source="payment", saga_id="s2")]),
                    InstanceWrite("s3", outbox=[message("m3", saga_id="s3")]),
                ]
            )
        )
        await store.transaction(lambda tx: tx.outbox_put(message("b4")))
        await store.commit(Batch([InstanceWrite("s1", outbox=[message("c5")])]))
        assert await pending_ids(store) == ["z1", "a2", "m3", "b4", "c5"]
        assert await pending_ids(store, "payment") == ["p1"]
        assert await pending_ids(store, "nobody") == []
        assert [m.id for m in await store.pending(ORCHESTRATOR, 2)] == ["z1", "a2"]

    async def test_messages_round_trip(self, store: Store) -> None:
        sent = OutboxMessage("m1", ORCHESTRATOR, "inventory", bytes(range(256)), "s1")
        await store.commit(Batch([InstanceWrite("s1", outbox=[sent])]))
        assert await store.pending(ORCHESTRATOR, 10) == [sent]

    async def test_a_message_id_is_written_once(self, store: Store) -> None:
        first = message("m1")
        await store.commit(Batch([InstanceWrite("s1", outbox=[first])]))
        await store.commit(Batch([InstanceWrite("s1", outbox=[replace(first, body=b"again")])]))
        assert await store.pending(ORCHESTRATOR, 10) == [first]

    async def test_consumed_and_outbox_done_delete_only_their_messages(self, store: Store) -> None:
        await store.commit(Batch([InstanceWrite("s1", outbox=[message(i) for i in "abcde"])]))
        await store.commit(
            Batch(
                [InstanceWrite("s1", consumed=["b"])],
                outbox_done=["d", "never-written"],
            )
        )
        assert await pending_ids(store) == ["a", "c", "e"]
        await store.transaction(lambda tx: tx.outbox_done(["a", "e"]))
        assert await pending_ids(store) == ["c"]

    async def test_sent_ids_commit_beside_transitions_that_write_nothing(
        self, store: Store
    ) -> None:
        # Batch shapes the PostgreSQL statement is put together for: a transition with no
        # state and no records beside sent ids, then sent ids alone, then nothing at all.
        await store.commit(Batch([InstanceWrite("s1", outbox=[message(i) for i in "abc"])]))
        assert await store.commit(Batch([InstanceWrite("s2")], outbox_done=["a"])) == [True]
        assert await store.commit(Batch(outbox_done=["b"])) == []
        assert await store.commit(Batch([InstanceWrite("s3")])) == [True]
        assert await pending_ids(store) == ["c"]

    async def test_a_consumed_message_does_not_come_back_after_new_writes(
        self, store: Store
    ) -> None:
        await store.commit(Batch([InstanceWrite("s1", outbox=[message("a")])]))
        await store.commit(Batch([InstanceWrite("s1", consumed=["a"], outbox=[message("b")])]))
        assert await pending_ids(store) == ["b"]


# -- CommandQueue -------------------------------------------------------------------------


class TestCommandQueue:
    async def test_enqueue_and_pending_commands_in_order(self, store: Store) -> None:
        before = await store.now()
        first = await store.enqueue("s1", "abort", {"reason": "customer", "by": "ops"})
        second = await store.enqueue("s2", "retry", {})
        third = await store.enqueue("s1", "resolve", {"step": "charge", "result": [1, None]})
        after = await store.now()
        assert first < second < third
        pending = await store.pending_commands(10)
        assert [(c.id, c.saga_id, c.kind, c.body) for c in pending] == [
            (first, "s1", "abort", {"reason": "customer", "by": "ops"}),
            (second, "s2", "retry", {}),
            (third, "s1", "resolve", {"step": "charge", "result": [1, None]}),
        ]
        assert all(c.state is CommandState.PENDING and c.error is None for c in pending)
        assert all(before <= c.created_at <= after for c in pending)
        assert [c.id for c in await store.pending_commands(2)] == [first, second]

    async def test_command_looks_one_up(self, store: Store) -> None:
        cid = await store.enqueue("s1", "abort", {"reason": "x"})
        got = await store.command(cid)
        assert got is not None
        assert (got.id, got.saga_id, got.kind, got.body, got.state) == (
            cid,
            "s1",
            "abort",
            {"reason": "x"},
            CommandState.PENDING,
        )
        assert await store.command(cid + 1000) is None

    async def test_results_via_batch_and_transition_settle_commands(self, store: Store) -> None:
        await store.commit(Batch([insert(make_instance("s1"))]))
        applied = await store.enqueue("s1", "abort", {})
        refused = await store.enqueue("s1", "retry", {})
        orphan = await store.enqueue("nope", "abort", {})
        waiting = await store.enqueue("s1", "resolve", {})
        await store.commit(
            Batch(
                [
                    InstanceWrite("s1", commands=[CommandResult(applied, CommandState.APPLIED)]),
                    InstanceWrite(
                        "s1",
                        commands=[
                            CommandResult(refused, CommandState.REFUSED, "retry: s1 is not stuck")
                        ],
                    ),
                ],
                commands=[CommandResult(orphan, CommandState.REFUSED, "no saga 'nope'")],
            )
        )
        assert [c.id for c in await store.pending_commands(10)] == [waiting]
        got = {cid: await store.command(cid) for cid in (applied, refused, orphan)}
        assert {cid: (c.state, c.error) for cid, c in got.items() if c is not None} == {
            applied: (CommandState.APPLIED, None),
            refused: (CommandState.REFUSED, "retry: s1 is not stuck"),
            orphan: (CommandState.REFUSED, "no saga 'nope'"),
        }


# -- DeadLetters --------------------------------------------------------------------------


class TestDeadLetters:
    async def test_dead_letters_from_batches_and_participants_newest_first(
        self, store: Store
    ) -> None:
        assert await store.dead_letters(10) == []
        await store.commit(
            Batch(
                dead_letters=[
                    DeadLetter("sagakit.replies", "malformed JSON: x", b"\xff{", at=1.0),
                    DeadLetter("sagakit.replies", "unknown saga 's9'", b"{}", at=2.0),
                ]
            )
        )
        await store.transaction(
            lambda tx: tx.dead_letter(DeadLetter("inventory", "no handler", b"[]", at=3.0))
        )
        letters = await store.dead_letters(10)
        assert [(d.source, d.reason, d.body) for d in letters] == [
            ("inventory", "no handler", b"[]"),
            ("sagakit.replies", "unknown saga 's9'", b"{}"),
            ("sagakit.replies", "malformed JSON: x", b"\xff{"),
        ]
        assert len({d.id for d in letters}) == 3
        assert all(d.at > 0 for d in letters)
        assert [d.reason for d in await store.dead_letters(1)] == ["no handler"]


# -- ParticipantStore ---------------------------------------------------------------------


class TestParticipantStore:
    @pytest.fixture(autouse=True)
    async def _business_table(self, store: Store, adapter: StoreAdapter) -> None:
        sql = adapter.sql("CREATE TABLE IF NOT EXISTS holds (sku TEXT PRIMARY KEY, qty INTEGER)")
        await store.transaction(lambda tx: tx.execute(sql))

    async def test_business_sql_inbox_and_outbox_commit_together(
        self, store: Store, adapter: StoreAdapter
    ) -> None:
        async def serve(tx: ParticipantTx) -> str:
            assert await tx.inbox_get("inventory", "s1:reserve:action") is None
            assert (
                await tx.execute(
                    adapter.sql("INSERT INTO holds (sku, qty) VALUES (?, ?)"), ("A", 2)
                )
                == []
            )
            await tx.inbox_put("inventory", "s1:reserve:action", b'{"reply": 1}')
            await tx.outbox_put(message("r1", source="inventory", destination="sagakit.replies"))
            return "served"

        assert await store.transaction(serve) == "served"

        async def read(tx: ParticipantTx) -> tuple[object, ...]:
            return (
                await tx.execute(adapter.sql("SELECT sku, qty FROM holds WHERE qty > ?"), (1,)),
                await tx.inbox_get("inventory", "s1:reserve:action"),
                await tx.inbox_get("payment", "s1:reserve:action"),
                await tx.inbox_get("inventory", "s1:reserve:compensation"),
            )

        assert await store.transaction(read) == ([("A", 2)], b'{"reply": 1}', None, None)
        assert await pending_ids(store, "inventory") == ["r1"]
        await store.transaction(lambda tx: tx.outbox_done(["r1"]))
        assert await pending_ids(store, "inventory") == []

    async def test_fn_raising_rolls_everything_back_and_the_error_propagates(
        self, store: Store, adapter: StoreAdapter
    ) -> None:
        class Boom(Exception):
            pass

        async def serve(tx: ParticipantTx) -> None:
            await tx.execute(adapter.sql("INSERT INTO holds (sku, qty) VALUES (?, ?)"), ("A", 1))
            await tx.inbox_put("inventory", "k", b"reply")
            await tx.outbox_put(message("r1", source="inventory"))
            await tx.dead_letter(DeadLetter("inventory", "why", b"x", at=1.0))
            # The writes took effect inside the transaction: the rollback has work to undo.
            assert await holds_and_inbox(tx) == ([(1,)], b"reply")
            raise Boom("handler bug")

        with pytest.raises(Boom, match="handler bug"):
            await store.transaction(serve)
        assert await store.transaction(holds_and_inbox) == ([(0,)], None)
        assert await pending_ids(store, "inventory") == []
        assert await store.dead_letters(10) == []

    async def test_a_second_inbox_put_for_a_key_fails_and_writes_nothing(
        self, store: Store, adapter: StoreAdapter
    ) -> None:
        await store.transaction(lambda tx: tx.inbox_put("inventory", "k", b"first"))

        async def again(tx: ParticipantTx) -> None:
            await tx.execute(adapter.sql("INSERT INTO holds (sku, qty) VALUES (?, ?)"), ("B", 1))
            await tx.inbox_put("inventory", "k", b"second")

        with pytest.raises(StorageError):
            await store.transaction(again)
        assert await store.transaction(holds_and_inbox) == ([(0,)], b"first")

    async def test_a_bad_business_statement_is_a_storage_error_and_rolls_back(
        self, store: Store, adapter: StoreAdapter
    ) -> None:
        async def bad(tx: ParticipantTx) -> None:
            await tx.inbox_put("inventory", "k", b"reply")
            await tx.execute("INSERT INTO no_such_table VALUES (1)")

        with pytest.raises(StorageError):
            await store.transaction(bad)
        assert await store.transaction(lambda tx: tx.inbox_get("inventory", "k")) is None

    async def test_reads_do_not_see_the_writes_of_an_open_transaction(
        self, store: Store, adapter: StoreAdapter
    ) -> None:
        """The relay's rescan (``pending``) runs while a participant's transaction is open: it
        must not pick up a reply that may still be rolled back."""
        if not adapter.isolated_reads:
            pytest.skip(
                f"{adapter.name}: reads share the writer's one connection (an in-memory "
                "database exists only there), so they see its uncommitted rows"
            )
        written, read = asyncio.Event(), asyncio.Event()

        async def serve(tx: ParticipantTx) -> None:
            await tx.outbox_put(message("r1", source="inventory"))
            await tx.dead_letter(DeadLetter("inventory", "why", b"x", at=1.0))
            written.set()
            await read.wait()  # the transaction stays open while the reads run

        serving = asyncio.create_task(store.transaction(serve))
        try:
            async with asyncio.timeout(5):
                await written.wait()
            assert await store.pending("inventory", 10) == []
            assert await store.dead_letters(10) == []
        finally:
            read.set()
            await serving
        assert await pending_ids(store, "inventory") == ["r1"]
        assert [d.reason for d in await store.dead_letters(10)] == ["why"]


async def holds_and_inbox(tx: ParticipantTx) -> tuple[object, ...]:
    """What a participant transaction sees: the number of holds and the inbox entry of "k"."""
    return (await tx.execute("SELECT count(*) FROM holds"), await tx.inbox_get("inventory", "k"))


# -- durability and opening ---------------------------------------------------------------


class TestLifecycle:
    async def test_close_can_be_called_twice(self, adapter: StoreAdapter, tmp_path: Path) -> None:
        opened = await adapter.open(tmp_path)
        await opened.close()
        await opened.close()


class TestDurability:
    @pytest.mark.parametrize("adapter", PERSISTENT_ADAPTERS)
    async def test_everything_survives_close_and_reopen(
        self, adapter: StoreAdapter, tmp_path: Path
    ) -> None:
        past = 1.0  # long due whatever the clock
        inst = make_instance("s1", key="k1")
        first = await adapter.open(tmp_path)
        try:
            await store_everything(first, inst, past)
            cid = await first.enqueue("s1", "abort", {"why": "test"})
        finally:
            await first.close()

        second = await adapter.open(tmp_path)
        try:
            assert await second.get("s1") == inst
            assert await second.find_by_key("order", "k1") == inst
            assert await second.history("s1") == [created("s1")]
            assert await second.due(10) == [timer("s1", "t", past)]
            assert [c.id for c in await second.pending_commands(10)] == [cid]
            assert [d.reason for d in await second.dead_letters(10)] == ["bad"]
            assert await second.transaction(lambda tx: tx.inbox_get("inventory", "k")) == b"r"
            # Insertion order continues across the restart.
            await second.commit(Batch([InstanceWrite("s1", outbox=[message("m3")])]))
            assert await pending_ids(second) == ["m1", "m2", "m3"]
        finally:
            await second.close()


async def store_everything(store: Store, inst: SagaInstance, due_at: float) -> None:
    await store.commit(
        Batch(
            [
                insert(
                    inst,
                    outbox=[message("m1"), message("m2")],
                    timer_ops=[set_timer(timer("s1", "t", due_at))],
                )
            ],
            dead_letters=[DeadLetter("x", "bad", b"?")],
        )
    )
    await store.transaction(lambda tx: tx.inbox_put("inventory", "k", b"r"))


class TestSqliteFile:
    async def test_a_second_owner_is_refused_while_the_first_is_open(self, tmp_path: Path) -> None:
        path = str(tmp_path / "owned.db")
        first = SqliteStore(path, owner=True)
        try:
            with pytest.raises(StoreLocked) as caught:
                SqliteStore(path, owner=True)
            text = str(caught.value)
            assert path in text
            assert f"pid {os.getpid()}" in text
            assert "one worker per SQLite file" in text
            # Readers (the CLI) open the file alongside the owner.
            reader = SqliteStore(path)
            await reader.close()
        finally:
            await first.close()
        second = SqliteStore(path, owner=True)
        await second.close()

    async def test_open_store_by_url_takes_the_same_lock(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'url.db'}"
        first = open_store(url, owner=True)
        try:
            with pytest.raises(StoreLocked):
                open_store(url, owner=True)
        finally:
            await first.close()

    def test_create_false_refuses_a_missing_file(self, tmp_path: Path) -> None:
        path = tmp_path / "missing.db"
        with pytest.raises(StorageError, match="not found"):
            SqliteStore(str(path), create=False)
        with pytest.raises(StorageError, match="not found"):
            open_store(f"sqlite:///{path}", create=False)
        assert not path.exists()

    def test_only_an_owner_or_create_true_makes_a_missing_file(self, tmp_path: Path) -> None:
        # A client on a mistyped path must not get a new, empty database where its starts
        # would wait for ever.
        path = tmp_path / "typo.db"
        with pytest.raises(StorageError, match="not found"):
            open_store(f"sqlite:///{path}")
        with pytest.raises(StorageError, match="not found"):
            SqliteStore(str(path))
        assert not path.exists()

    async def test_create_false_opens_an_existing_file(self, tmp_path: Path) -> None:
        path = str(tmp_path / "there.db")
        await SqliteStore(path, create=True).close()
        reader = SqliteStore(path, create=False)
        await reader.close()

    @pytest.mark.parametrize(
        "url",
        [
            "redis://localhost/0",
            "mysql://x",
            "sqlite://relative.db",
            "sqlite:///",
            "",
            "just-a-path.db",
        ],
    )
    def test_a_bad_url_is_a_storage_error(self, url: str) -> None:
        with pytest.raises(StorageError, match="URL"):
            open_store(url)

    def test_an_unopenable_file_is_a_storage_error(self, tmp_path: Path) -> None:
        (tmp_path / "a-file").write_text("not a folder")
        with pytest.raises(StorageError, match="cannot open"):
            SqliteStore(str(tmp_path / "a-file" / "saga.db"), create=True)

    async def test_a_missing_folder_is_created(self, tmp_path: Path) -> None:
        await SqliteStore(str(tmp_path / "new" / "folder" / "saga.db"), create=True).close()
        assert (tmp_path / "new" / "folder" / "saga.db").exists()

    async def test_a_file_that_is_not_a_database_is_a_storage_error(self, tmp_path: Path) -> None:
        path = tmp_path / "notes.db"
        path.write_bytes(b"these are not the pages you are looking for " * 100)
        with pytest.raises(StorageError, match="not a database"):
            SqliteStore(str(path), owner=True)
        # The failed open released its lock: the next owner gets the file.
        path.unlink()
        await SqliteStore(str(path), owner=True).close()

    async def test_a_transaction_cancelled_while_it_begins_leaves_the_store_usable(
        self, tmp_path: Path
    ) -> None:
        """A stopping relay cancels its participant transactions; one cancelled while its BEGIN
        runs (here: waits for SQLite's write lock) must not leave that BEGIN open behind it."""
        path = str(tmp_path / "cancel.db")
        store = SqliteStore(path, owner=True)
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # holds the write lock: the store's BEGIN waits
            begun = asyncio.create_task(
                store.transaction(lambda tx: tx.inbox_put("inventory", "k", b"r"))
            )
            await asyncio.sleep(0.2)  # its BEGIN is running on the store's thread by now
            begun.cancel()
            other.execute("ROLLBACK")  # the BEGIN goes through, after the cancellation
            with pytest.raises(asyncio.CancelledError):
                await begun
            assert await store.commit(Batch([insert(make_instance("s1"))])) == [True]
            assert await store.transaction(lambda tx: tx.inbox_get("inventory", "k")) is None
            assert await store.get("s1") == make_instance("s1")
        finally:
            other.close()
            await store.close()


class TestRetention:
    async def test_inbox_keys_of_live_sagas_outlive_their_age(self, store: Store) -> None:
        live = make_instance("s1", status=SagaStatus.STUCK)
        done = make_instance("s2", status=SagaStatus.COMPLETED)
        assert await store.commit(Batch([insert(live), insert(done)])) == [True, True]

        async def record(tx: ParticipantTx) -> None:
            await tx.inbox_put("inventory", "s1:reserve:action", b"r1")
            await tx.inbox_put("inventory", "s2:reserve:action", b"r2")

        await store.transaction(record)
        before = await store.now()
        while await store.now() <= before:  # noqa: ASYNC110 - waiting for the store's clock
            await asyncio.sleep(0.001)  # to move, so the rows are strictly older than age 0
        await store.purge_keys(0.0)

        async def keys(tx: ParticipantTx) -> tuple[bytes | None, bytes | None]:
            return (
                await tx.inbox_get("inventory", "s1:reserve:action"),
                await tx.inbox_get("inventory", "s2:reserve:action"),
            )

        assert await store.transaction(keys) == (b"r1", None)

    async def test_purge_retires_keys_and_spares_live_instances(self, store: Store) -> None:
        done = make_instance("s1", status=SagaStatus.COMPLETED, key="k1", updated_at=1.0)
        stuck = make_instance("s2", status=SagaStatus.STUCK, key="k2", updated_at=1.0)
        assert await store.commit(Batch([insert(done), insert(stuck)])) == [True, True]
        assert await store.finished_before(10.0, 100) == ["s1"]
        assert await store.purge(["s1", "s2"]) == 1
        assert await store.get("s1") is None and await store.get("s2") is not None
        retired = await store.retired_key("order", "k1")
        assert retired is not None and retired.saga_id == "s1"
        assert retired.input_digest == done.input_digest


class TestRetentionOfInboxKeys:
    """``sagakit purge`` (Client.purge) against a participant's inbox in the same database:
    purging finished instances and old keys never lets a late duplicate command run its action
    again, nor an action run after its compensation (Semantics 3 and 7)."""

    DAYS_40 = 40 * 86400.0

    @pytest.fixture
    async def bank(self, store: Store) -> AsyncIterator[tuple[ParticipantRunner, list[str]]]:
        done = make_instance("s1", status=SagaStatus.COMPLETED, updated_at=1.0)
        assert await store.commit(Batch([insert(done)])) == [True]
        bank = Participant("bank")
        runs: list[str] = []

        @bank.command("bank.charge")
        @bank.command("bank.refund")
        async def serve(tx: ParticipantTx, cmd: Command) -> object:
            runs.append(cmd.idempotency_key)
            return {"done": cmd.idempotency_key}

        transport = MemoryTransport()

        async def replies(body: bytes) -> None:
            return None

        await transport.subscribe("replies", replies)
        runner = ParticipantRunner(bank, store, transport)  # handle() is called directly
        try:
            yield runner, runs
        finally:
            await runner.stop()

    @staticmethod
    def command(phase: Phase, attempt: int = 1) -> bytes:
        return encode(
            Envelope(
                id=f"c-{phase.value}-{attempt}",
                kind=MessageKind.COMMAND,
                type="bank.charge" if phase is Phase.ACTION else "bank.refund",
                saga_id="s1",
                saga_type="order",
                definition_version=3,
                step="charge",
                phase=phase,
                attempt=attempt,
                idempotency_key=f"s1:charge:{phase.value}",
                correlation_id="o-1",
                timestamp=1.0,
                payload={"amount": 5},
                reply_to="replies",
            )
        )

    async def age_inbox(self, store: Store, adapter: StoreAdapter) -> None:
        """Make every inbox record 40 days old (the retention below keeps keys 1 day)."""
        sql = adapter.sql("UPDATE sagakit_inbox SET at = at - ?")
        await store.transaction(lambda tx: tx.execute(sql, (self.DAYS_40,)))

    async def purge(self, store: Store) -> None:
        purged, _ = await Client(store).purge(RetentionPolicy.of_seconds(1.0))
        assert purged == 1 and await store.get("s1") is None

    async def test_a_late_duplicate_command_never_runs_its_action_again(
        self, store: Store, adapter: StoreAdapter, bank: tuple[ParticipantRunner, list[str]]
    ) -> None:
        runner, runs = bank
        await runner.handle(self.command(Phase.ACTION))  # served 40 days ago...
        await self.age_inbox(store, adapter)
        # ... and presented again now: an operator retried the step, whose outcome was unknown,
        # with its key; the participant answered with its stored reply, the saga completed.
        await runner.handle(self.command(Phase.ACTION, 2))
        await self.purge(store)
        await runner.handle(self.command(Phase.ACTION, 2))  # a redelivered copy of the retry
        assert runs == ["s1:charge:action"]

    async def test_an_action_never_runs_after_its_compensation(
        self, store: Store, adapter: StoreAdapter, bank: tuple[ParticipantRunner, list[str]]
    ) -> None:
        runner, runs = bank
        await runner.handle(self.command(Phase.COMPENSATION))  # nothing to undo: a no-op
        await self.age_inbox(store, adapter)
        await runner.handle(self.command(Phase.COMPENSATION, 2))  # presented again now
        await self.purge(store)
        await runner.handle(self.command(Phase.ACTION))  # the action, late
        assert runs == []
        stored = await store.transaction(lambda tx: tx.inbox_get("bank", "s1:charge:action"))
        assert stored is not None
        refused = decode(stored)
        assert refused.outcome is Outcome.FAILURE
        assert refused.error == "refused: the action arrived after its compensation"

    async def test_a_touched_key_counts_its_age_from_the_touch(
        self, store: Store, adapter: StoreAdapter
    ) -> None:
        async def record(tx: ParticipantTx) -> None:
            await tx.inbox_put("bank", "s9:a:action", b"r1")
            await tx.inbox_put("bank", "s9:b:action", b"r2")

        await store.transaction(record)
        await self.age_inbox(store, adapter)
        await store.transaction(lambda tx: tx.inbox_touch("bank", "s9:a:action"))
        await store.purge_keys(86400.0)

        async def keys(tx: ParticipantTx) -> tuple[bytes | None, bytes | None]:
            return await tx.inbox_get("bank", "s9:a:action"), await tx.inbox_get(
                "bank", "s9:b:action"
            )

        assert await store.transaction(keys) == (b"r1", None)


class TestCommandCursor:
    async def test_pending_commands_after_a_cursor(self, store: Store) -> None:
        ids = [await store.enqueue(f"s{i}", "abort", {}) for i in range(3)]
        assert [c.id for c in await store.pending_commands(10, ids[0])] == ids[1:]

    async def test_an_answered_command_is_never_overwritten(self, store: Store) -> None:
        command = await store.enqueue("s1", "abort", {})
        await store.commit(Batch(commands=[CommandResult(command, CommandState.APPLIED)]))
        await store.commit(Batch(commands=[CommandResult(command, CommandState.REFUSED, "late")]))
        answered = await store.command(command)
        assert answered is not None and answered.state is CommandState.APPLIED


class TestLeases:
    """Ownership and fencing (the Leases port) on both stores. Leases are ended by writing the
    worker's row, never by waiting for one to run out."""

    pytestmark = pytest.mark.parametrize("adapter", PERSISTENT_ADAPTERS, indirect=True)

    async def test_a_claim_bumps_the_revision_and_fences_a_stale_commit(
        self, adapter: StoreAdapter, store: Store, tmp_path: Path
    ) -> None:
        await store.attach("w1", 30.0, [FP3])
        held = owned("s1", "w1")
        assert await store.commit(Batch([insert(held)])) == [True]
        await end_lease(store, "w1")

        async with next_worker(adapter, store, tmp_path) as second:
            await second.attach("w2", 30.0, [FP3])
            assert await second.claim(10, [replace(FP3, fingerprint="another-definition")]) == []
            [claim] = await second.claim(10, [FP3])
            assert claim.instance == replace(held, owner="w2", revision=2)
            assert await second.get("s1") == claim.instance
            assert await second.claim(10, [FP3]) == []  # its own already
            # The claim wrote who took the instance over, from whom and why.
            assert claim.takeover.kind is HistoryKind.TAKEOVER
            assert claim.takeover.detail == {"from": "w1", "to": "w2", "reason": "lease expired"}
            assert (await second.history("s1"))[-1] == claim.takeover

            # The worker that held revision 1 comes back: its commit fails the revision check
            # and writes none of its records.
            late = stale_worker(adapter, store, second)
            moved = replace(held, status=SagaStatus.COMPENSATING, revision=2)
            stale = update(moved, expected=1, outbox=[message("stale", saga_id="s1")])
            assert await late.commit(Batch([stale])) == [False]
            assert await second.get("s1") == claim.instance
            assert await pending_ids(second) == []

            # The new owner commits on top of the claimed revision.
            moved = replace(claim.instance, status=SagaStatus.COMPENSATING, revision=3)
            assert await second.commit(Batch([update(moved, expected=2)])) == [True]
            assert await second.get("s1") == moved

    async def test_only_unsettled_instances_of_the_given_definitions_are_claimed(
        self, adapter: StoreAdapter, store: Store, tmp_path: Path
    ) -> None:
        await store.attach("w1", 30.0, [FP3])
        settled = [
            owned(s, "w1", status=status)
            for s, status in [("done", SagaStatus.COMPLETED), ("undone", SagaStatus.FAILED)]
        ]
        unsettled = [
            owned(s, "w1", status=status)
            for s, status in [
                ("started", SagaStatus.STARTED),
                ("pending", SagaStatus.PENDING),
                ("compensating", SagaStatus.COMPENSATING),
                ("stuck", SagaStatus.STUCK),  # an operator's retry or resolve needs an owner
            ]
        ]
        other = replace(owned("other", "w1"), fingerprint="fp-other")
        await store.commit(Batch([insert(i) for i in [*settled, *unsettled, other]]))
        await end_lease(store, "w1")

        async with next_worker(adapter, store, tmp_path) as second:
            await second.attach("w2", 30.0, [FP3])
            first = await second.claim(3, [FP3])
            rest = await second.claim(10, [FP3])
            assert len(first) == 3
            claimed = sorted(c.instance.saga_id for c in [*first, *rest])
            assert claimed == sorted(i.saga_id for i in unsettled)
            for saga in [*settled, other]:
                assert await second.get(saga.saga_id) == saga  # owner and revision untouched

    async def test_heartbeat_fails_once_the_lease_has_run_out(
        self, adapter: StoreAdapter, store: Store
    ) -> None:
        await store.attach("w1", 30.0, [FP3])
        assert await store.heartbeat() is True
        await end_lease(store, "w1")
        if adapter.shared:
            # Others may have claimed its instances meanwhile: it must drop what it holds.
            assert await store.heartbeat() is False
        else:
            # The lock on the file is the lease: it cannot run out while its holder lives.
            assert await store.heartbeat() is True
        assert await store.heartbeat() is True  # renewed: the lease is live again

    async def test_detach_releases_the_workers_instances_to_another_at_once(
        self, adapter: StoreAdapter, store: Store, tmp_path: Path
    ) -> None:
        await store.attach("w1", 30.0, [FP3])
        held = owned("s1", "w1")
        await store.commit(Batch([insert(held)]))
        if adapter.shared:
            async with next_worker(adapter, store, tmp_path) as second:
                await second.attach("w2", 30.0, [FP3])
                assert await second.claim(10, [FP3]) == []  # w1's lease is live
                await store.detach()
                # Long before w1's lease (30 s) would have run out.
                claimed = await second.claim(10, [FP3])
        else:
            await store.detach()
            async with next_worker(adapter, store, tmp_path) as second:
                await second.attach("w2", 30.0, [FP3])
                claimed = await second.claim(10, [FP3])
        assert [(c.instance.saga_id, c.instance.owner) for c in claimed] == [("s1", "w2")]
        assert claimed[0].instance.revision > held.revision  # a stale commit of w1's is fenced
        assert claimed[0].takeover.detail == {"from": "w1", "to": "w2", "reason": "worker stopped"}

    async def test_an_instance_without_owner_is_claimed_from_no_one(
        self, adapter: StoreAdapter, store: Store
    ) -> None:
        await store.commit(Batch([insert(make_instance("s1"))]))  # owner None
        await store.attach("w1", 30.0, [FP3])
        [claim] = await store.claim(10, [FP3])
        assert claim.instance.owner == "w1"
        assert claim.takeover.detail == {"from": None, "to": "w1", "reason": "no owner"}
        assert (await store.history("s1"))[-1] == claim.takeover


def owned(saga_id: str, worker_id: str, *, status: SagaStatus = SagaStatus.PENDING) -> SagaInstance:
    return replace(make_instance(saga_id, status=status), owner=worker_id)


async def end_lease(store: Store, worker_id: str, ago: float = 60.0) -> None:
    """As if ``worker_id`` had stopped renewing its lease: it ran out ``ago`` seconds ago (a
    minute by default) by the store's clock."""
    ended = await store.now() - ago

    async def write(tx: ParticipantTx) -> None:
        await tx.execute(
            "UPDATE sagakit_workers SET lease_expires_at = ? WHERE worker_id = ?",
            (ended, worker_id),
        )

    await store.transaction(write)


@contextlib.asynccontextmanager
async def next_worker(adapter: StoreAdapter, first: Store, tmp_path: Path) -> AsyncIterator[Store]:
    """The store of a second worker on ``first``'s database. On PostgreSQL it is opened beside
    the first. On SQLite one worker owns the file, so the first goes first: its store is
    closed, as its process's death would close it."""
    if not adapter.shared:
        await first.close()
    second = await adapter.open(tmp_path)
    try:
        yield second
    finally:
        await second.close()


def stale_worker(adapter: StoreAdapter, first: Store, second: Store) -> Store:
    """Where the first worker's late commit arrives: its own store on PostgreSQL; on SQLite the
    file's (a store has no say in whose commit it is: the revision check is the fence)."""
    return first if adapter.shared else second


class TestLiveDefinitions:
    async def test_attached_workers_publish_their_definitions(self, store: Store) -> None:
        assert await store.live_fingerprints() == set()
        assert await store.live_definitions() == []
        f1 = DefinitionRef("order", 1, "v2:f1", "f1-legacy")
        f2 = DefinitionRef("refund", 2, "v2:f2")
        await store.attach("w1", 30.0, [f2, f1])
        # Legacy fingerprints too: their instances are claimed (and given the new one).
        assert await store.live_fingerprints() == {"v2:f1", "f1-legacy", "v2:f2"}
        assert sorted(await store.live_definitions(), key=str) == sorted([f1, f2], key=str)
        assert await store.heartbeat()
        await store.detach()
        assert await store.live_fingerprints() == set()
        assert await store.live_definitions() == []

    async def test_a_bare_fingerprint_an_older_sagakit_published_is_a_fingerprint_only(
        self, store: Store
    ) -> None:
        await store.attach("w1", 30.0, [DefinitionRef("order", 1, "v2:f1")])

        async def older(tx: ParticipantTx) -> None:
            await tx.execute("UPDATE sagakit_workers SET fingerprints = ?", ('["abc123"]',))

        await store.transaction(older)
        assert await store.live_fingerprints() == {"abc123"}
        assert await store.live_definitions() == []  # it names no saga type

    async def test_unsettled_definitions_of_some_types_each_once(self, store: Store) -> None:
        instances = [
            make_instance("a"),
            make_instance("b"),
            replace(make_instance("c"), fingerprint="fp-old"),
            make_instance("done", status=SagaStatus.COMPLETED),
            replace(make_instance("gone", status=SagaStatus.FAILED), fingerprint="fp-gone"),
            replace(make_instance("stuck", status=SagaStatus.STUCK), version=4),
            make_instance("other", saga_type="refund"),
        ]
        await store.commit(Batch([insert(i) for i in instances]))
        found = await store.unsettled_definitions(["order", "nothing"])
        assert sorted(found, key=str) == sorted(
            [FP3, replace(FP3, fingerprint="fp-old"), replace(FP3, version=4)], key=str
        )
        assert await store.unsettled_definitions([]) == []


class TestLegacyFingerprints:
    async def test_a_claim_gives_an_instance_of_a_legacy_fingerprint_the_new_one(
        self, store: Store
    ) -> None:
        old = [
            replace(make_instance("old"), fingerprint="v1-print", owner="w0"),
            # Another type or version with the same legacy fingerprint is another definition.
            replace(make_instance("other-type", saga_type="x"), fingerprint="v1-print"),
            replace(make_instance("other-version"), fingerprint="v1-print", version=2),
        ]
        current = replace(make_instance("new"), fingerprint="v2:new")
        await store.commit(Batch([insert(i) for i in [*old, current]]))
        await store.attach("w1", 30.0, [])
        definition = DefinitionRef("order", 3, "v2:new", "v1-print")
        claimed = [c.instance for c in await store.claim(10, [definition])]
        assert sorted((i.saga_id, i.fingerprint, i.owner) for i in claimed) == [
            ("new", "v2:new", "w1"),
            ("old", "v2:new", "w1"),
        ]
        got = await store.get("old")
        assert got is not None and got.fingerprint == "v2:new" and got.revision == 2
        assert got == replace(old[0], fingerprint="v2:new", owner="w1", revision=2)
        for untouched in old[1:]:
            assert await store.get(untouched.saga_id) == untouched


class TestStartQueue:
    @staticmethod
    def start(saga_type: str = "order", key: str | None = "k", n: int = 1) -> dict[str, JSON]:
        return {"saga_type": saga_type, "version": 1, "data": {"n": n}, "key": key}

    async def test_a_pending_start_is_found_by_type_and_key(self, store: Store) -> None:
        assert await store.queued_start("order", "k") is None
        await store.enqueue("x", "abort", {"saga_type": "order", "key": "k"})  # not a start
        await store.enqueue("s0", "start", self.start(key=None))
        first = await store.enqueue("s1", "start", self.start())
        await store.enqueue("s2", "start", self.start())
        await store.enqueue("s3", "start", self.start(saga_type="refund"))
        found = await store.queued_start("order", "k")
        assert found is not None and (found.id, found.saga_id) == (first, "s1")
        assert found.body == self.start()
        assert await store.queued_start("order", "other") is None

    async def test_queued_starts_are_listed_oldest_first(self, store: Store) -> None:
        ids = [await store.enqueue(f"s{i}", "start", self.start(key=None)) for i in range(3)]
        await store.enqueue("s1", "abort", {})
        await store.commit(Batch(commands=[CommandResult(ids[1], CommandState.APPLIED)]))
        assert [c.id for c in await store.queued_starts(10)] == [ids[0], ids[2]]
        assert [c.id for c in await store.queued_starts(1)] == [ids[0]]

    async def test_a_start_is_found_by_its_instance_id_in_any_state(self, store: Store) -> None:
        assert await store.start_command("s1") is None
        await store.enqueue("s1", "abort", {})
        first = await store.enqueue("s1", "start", self.start())
        await store.commit(
            Batch(commands=[CommandResult(first, CommandState.REFUSED, "IdempotencyConflict: x")])
        )
        found = await store.start_command("s1")
        assert found is not None and found.id == first
        assert (found.state, found.error) == (CommandState.REFUSED, "IdempotencyConflict: x")

    async def test_only_a_pending_start_is_cancelled(self, store: Store) -> None:
        start = await store.enqueue("s1", "start", self.start())
        abort = await store.enqueue("s1", "abort", {})
        assert await store.cancel_start(abort, "no") is False  # not a start
        assert await store.cancel_start(start, "aborted before it started") is True
        assert await store.cancel_start(start, "again") is False
        cancelled = await store.command(start)
        assert cancelled is not None
        assert (cancelled.state, cancelled.error) == (
            CommandState.REFUSED,
            "aborted before it started",
        )
        assert await store.queued_starts(10) == []
        assert await store.queued_start("order", "k") is None

    async def test_a_cancelled_start_creates_no_instance(self, store: Store) -> None:
        cancelled = await store.enqueue("s1", "start", self.start())
        kept = await store.enqueue("s2", "start", self.start(key="k2"))
        await store.cancel_start(cancelled, "aborted before it started")
        # A worker that read both before the cancel: its inserts carry their results.
        writes = [
            InstanceWrite(
                saga_id,
                replace(make_instance(saga_id, key=key), revision=1),
                commands=[CommandResult(command, CommandState.APPLIED)],
            )
            for saga_id, key, command in [("s1", "k", cancelled), ("s2", "k2", kept)]
        ]
        assert await store.commit(Batch(writes)) == [False, True]
        assert await store.get("s1") is None
        assert await store.get("s2") is not None
        applied = await store.command(kept)
        assert applied is not None and applied.state is CommandState.APPLIED
        refused = await store.command(cancelled)
        assert refused is not None and refused.error == "aborted before it started"
        # Once applied, it is no longer cancelled.
        assert await store.cancel_start(kept, "too late") is False


class TestCatalog:
    """What workers run, recorded for readers that run no user code (the Catalog port)."""

    async def test_definitions_are_recorded_by_name_version_and_fingerprint(
        self, store: Store
    ) -> None:
        assert await store.definitions() == []
        first = definition_record("order", 1, "fp-a")
        await store.record_definitions([first, definition_record("audit", 2, "fp-b")])
        found = await store.definitions()
        assert [(d.name, d.version) for d in found] == [("audit", 2), ("order", 1)]
        assert all(d.recorded_at > 0 for d in found)
        assert replace(found[1], recorded_at=0.0) == first  # every field round-trips

        # The same one again overwrites it; another fingerprint of the same name and version
        # (two deployments that disagree) is a record of its own.
        again = replace(first, deadline=99.0)
        await store.record_definitions([again, definition_record("order", 1, "fp-c")])
        orders = [d for d in await store.definitions() if d.name == "order"]
        assert sorted((d.fingerprint, d.deadline) for d in orders) == [
            ("fp-a", 99.0),
            ("fp-c", None),
        ]

    async def test_workers_show_their_lease_definitions_and_what_they_own(
        self, store: Store
    ) -> None:
        await store.attach("w1", 30.0, [FP3])
        live = [owned(s, "w1", status=SagaStatus.PENDING) for s in ("a", "b")]
        done = owned("c", "w1", status=SagaStatus.COMPLETED)
        await store.commit(Batch([insert(i) for i in [*live, done]]))
        now = await store.now()

        [worker] = await store.workers()
        assert worker.worker_id == "w1" and worker.alive and worker.state == "alive"
        assert worker.definitions == (FP3,)  # as it published them
        assert worker.owned == 2  # unfinished instances only
        assert worker.pid > 0 and worker.host
        assert worker.started_at <= now <= worker.lease_expires_at
        assert worker.stopped_at is None

        await store.detach()  # a clean stop releases the instances and keeps the row
        [worker] = await store.workers()
        assert (worker.alive, worker.state, worker.owned) == (False, "stopped", 0)
        assert worker.stopped_at is not None

    async def test_a_worker_whose_lease_ran_out_is_expired(self, store: Store) -> None:
        await store.attach("w1", 30.0, [FP3])
        await end_lease(store, "w1")
        [worker] = await store.workers()
        assert (worker.alive, worker.state) == (False, "expired")

    async def test_attach_forgets_workers_dead_for_a_day_that_own_nothing(
        self, store: Store
    ) -> None:
        await store.attach("gone", 30.0, [FP3])
        await store.attach("holding", 30.0, [FP3])
        await store.commit(Batch([insert(owned("s1", "holding"))]))
        await store.attach("recent", 30.0, [FP3])
        for worker_id in ("gone", "holding"):
            await end_lease(store, worker_id, ago=DEAD_WORKER_RETENTION + 3600)
        await end_lease(store, "recent", ago=3600)

        await store.attach("w4", 30.0, [FP3])
        # "holding" still owns an unfinished instance: its row stays until it is taken over.
        assert {w.worker_id for w in await store.workers()} == {"holding", "recent", "w4"}


def definition_record(name: str, version: int, fingerprint: str) -> DefinitionRecord:
    """A record that uses every field, so a lossy encoding shows."""
    policy = RetryPolicy(max_attempts=4, initial_delay=0.25, backoff=3.0, max_delay=9.0, jitter=0)
    return DefinitionRecord(
        name=name,
        version=version,
        fingerprint=fingerprint,
        steps=(
            StepRecord(
                "reserve",
                StepKind.COMPENSATABLE,
                HandlerRecord("local", function="shop.reserve"),
                HandlerRecord("local", function="shop.release"),
                timeout=5.0,
                compensation_timeout=7.5,
                retry=policy,
                compensation_retry=RetryPolicy(),
            ),
            StepRecord(
                "charge",
                StepKind.PIVOT,
                HandlerRecord("remote", participant="payments", command="card.charge"),
                None,
                timeout=30.0,
                compensation_timeout=30.0,
                retry=RetryPolicy(),
                compensation_retry=RetryPolicy(),
                custom_input=True,
            ),
        ),
        deadline=None,
        data_type="shop.Order",
        data_schema={"type": "object", "properties": {"sku": {"type": "string"}}},
    )
