"""A value that breaks the rules (docs/concepts.md, "Values sagakit accepts") is stopped where
it enters, on both stores: a surrogate, an over-deep and an over-size value by each way in,
while the sagas around it go on.

Before these checks, a local step returning "caf\\ud800" left its saga pending forever: the
encoder let it through and the store refused the whole commit batch it was in.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sagakit import (
    App,
    Client,
    EncodingError,
    MemoryTransport,
    RetryPolicy,
    Saga,
    SagaStatus,
    StepContext,
    StepStatus,
    Worker,
)
from sagakit.definition import Phase
from sagakit.encoding import JSON, MAX_DEPTH, MAX_NAME_LENGTH, MAX_VALUE_BYTES
from sagakit.messages import Envelope, MessageKind, decode, to_dict
from sagakit.ports import Store
from sagakit.storage import PostgresStore, SqliteStore
from sagakit.transitions import Outcome

ONCE = RetryPolicy(max_attempts=1, initial_delay=0.01, jitter=0.0)


def nested(depth: int) -> JSON:
    value: JSON = 1
    for _ in range(depth):
        value = [value]
    return value


#: A bad value of each kind, and what the reason must say about it.
BAD: dict[str, tuple[JSON, str]] = {
    "surrogate": ({"name": "caf\ud800"}, ".name: lone surrogate '\\ud800'"),
    "deep": (
        {"tree": nested(MAX_DEPTH + 6)},
        ".tree" + "[0]" * (MAX_DEPTH - 1) + ": nested deeper than 64 levels",
    ),
    "huge": (
        {"blob": "x" * MAX_VALUE_BYTES},
        f": 262,155 bytes of JSON exceeds the limit of {MAX_VALUE_BYTES:,}",
    ),
}


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    store = SqliteStore(str(tmp_path / "values.db"), owner=True)
    yield store
    await store.close()


@pytest.fixture
async def postgres_store(pg_url: str) -> AsyncIterator[Store]:
    store = PostgresStore(pg_url, owner=True)
    yield store
    await store.close()


@pytest.fixture(params=["sqlite_store", "postgres_store"])
def store(request: pytest.FixtureRequest) -> Store:
    found: Store = request.getfixturevalue(request.param)
    return found


# -- a local step's result ----------------------------------------------------------------


def producing_saga() -> Saga[Any]:
    saga: Saga[Any] = Saga("produce")
    undone: list[str] = []

    async def produce(ctx: StepContext[Any]) -> JSON:
        kind = ctx.data["kind"]
        return {"ok": kind} if kind == "ok" else BAD[kind][0]

    async def undo(ctx: StepContext[Any]) -> None:
        undone.append(ctx.data["kind"])

    async def after(ctx: StepContext[Any]) -> str:
        return "after"

    saga.local("produce", produce, compensation=undo, retry=ONCE)
    saga.local("after", after, compensation=undo, retry=ONCE)
    return saga


async def test_a_local_step_returning_a_bad_value_fails_its_saga_and_no_other(
    store: Store,
) -> None:
    saga = producing_saga()
    kinds = ["ok"] * 20 + list(BAD) + ["ok"] * 20
    async with Worker(App(sagas=[saga]), store) as worker:
        runs = [worker.client.run(saga, {"kind": kind}, timeout=20) for kind in kinds]
        instances = await asyncio.gather(*runs)
        second = await worker.client.run(saga, {"kind": "ok"}, timeout=20)
    assert second.status is SagaStatus.COMPLETED
    for kind, instance in zip(kinds, instances, strict=True):
        if kind == "ok":
            assert instance.status is SagaStatus.COMPLETED, instance
            assert instance.step("produce").result == {"ok": "ok"}
            continue
        assert instance.status is SagaStatus.FAILED, (kind, instance)
        step = instance.step("produce")
        assert step.status is StepStatus.COMPENSATED
        assert step.attempts == 1  # not retried: it would return the same value again
        expected = "result of produce" + BAD[kind][1]
        assert step.error is not None and expected in step.error, (kind, step.error)
        assert instance.reason is not None and expected in instance.reason, instance.reason


# -- saga input ---------------------------------------------------------------------------

BAD_INPUTS: list[tuple[object, str]] = [
    ({"items": [{}, {"name": "caf\ud800"}]}, "saga data.items[1].name: lone surrogate '\\ud800'"),
    ({"note": "a\x00b"}, "saga data.note: NUL character '\\x00'"),
    ({"tree": nested(MAX_DEPTH + 1)}, "nested deeper than 64 levels"),
    ({"blob": "x" * MAX_VALUE_BYTES}, "saga data: 262,155 bytes of JSON exceeds the limit"),
    ({"n": 2**63}, "saga data.n: the integer 9223372036854775808 does not fit in 64 bits"),
    ({"x": float("nan")}, "saga data.x: nan is not a finite number"),
    ({"k": {3: "x"}}, "saga data.k: dict key 3 is not a string"),
]


@pytest.mark.parametrize(("data", "reason"), BAD_INPUTS, ids=lambda v: str(v)[:20])
async def test_bad_saga_input_is_refused_to_the_caller_with_a_worker(
    store: Store, data: object, reason: str
) -> None:
    saga = producing_saga()
    async with Worker(App(sagas=[saga]), store) as worker:
        with pytest.raises(EncodingError, match=r"^saga data") as caught:
            await worker.client.start(saga, data)
        ok = await worker.client.run(saga, {"kind": "ok"}, timeout=20)
    assert reason in str(caught.value)
    assert ok.status is SagaStatus.COMPLETED
    assert len(await Client(store).list()) == 1


@pytest.mark.parametrize(("data", "reason"), BAD_INPUTS, ids=lambda v: str(v)[:20])
async def test_bad_saga_input_is_refused_before_a_start_is_queued(
    store: Store, data: object, reason: str
) -> None:
    client = Client(store)
    with pytest.raises(EncodingError, match=r"^saga data") as caught:
        await client.start(producing_saga(), data, key="k-1")
    assert reason in str(caught.value)
    assert await store.pending_commands(10) == []


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"key": "k\x00"}, "idempotency key: NUL character '\\x00'"),
        ({"key": "k\udc80"}, "idempotency key: lone surrogate '\\udc80'"),
        ({"key": "k" * (MAX_NAME_LENGTH + 1)}, "idempotency key: longer than 512 characters"),
        ({"key": ""}, "idempotency key: empty"),
        ({"correlation_id": "order\x00"}, "correlation id: NUL character '\\x00'"),
    ],
)
async def test_a_bad_key_or_correlation_id_is_refused_to_the_caller(
    store: Store, options: dict[str, Any], reason: str
) -> None:
    saga = producing_saga()
    with pytest.raises(EncodingError) as caught:
        await Client(store).start(saga, {"kind": "ok"}, **options)
    assert str(caught.value).startswith(reason)
    assert await store.pending_commands(10) == []
    async with Worker(App(sagas=[saga]), store) as worker:
        with pytest.raises(EncodingError) as caught:
            await worker.client.start(saga, {"kind": "ok"}, **options)
    assert str(caught.value).startswith(reason)
    assert await Client(store).list() == []


# -- operator data ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (("abort", "why\x00"), "reason: NUL character '\\x00'"),
        (("abort", "why \ud800"), "reason: lone surrogate '\\ud800'"),
        (("abort", "x" * MAX_VALUE_BYTES), "reason: 262,146 bytes of JSON exceeds the limit"),
        (("retry", "why", {"by": "ops\x00"}), "by: NUL character '\\x00'"),
        (("resolve", "why", {"step": "produce\ud800"}), "step: lone surrogate '\\ud800'"),
    ],
)
async def test_bad_operator_data_is_refused_before_it_is_queued(
    store: Store, command: tuple[Any, ...], reason: str
) -> None:
    saga = producing_saga()
    async with Worker(App(sagas=[saga]), store) as worker:
        done = await worker.client.run(saga, {"kind": "ok"}, timeout=20)
    client = Client(store)
    kind, why, *extra = command
    options: dict[str, str] = extra[0] if extra else {}
    with pytest.raises(EncodingError) as caught:
        if kind == "resolve":
            await client.resolve(done.saga_id, options["step"], why)
        else:
            await getattr(client, kind)(done.saga_id, why, **options)
    assert str(caught.value).startswith(reason)
    assert await store.pending_commands(10) == []
    for bad_id in ("s\x00", "s\ud800"):
        with pytest.raises(EncodingError, match=r"^saga id: "):
            await client.abort(bad_id, "why")


# -- a participant's reply ----------------------------------------------------------------

#: Reply changes that break the rules, and what the dead letter's reason says.
BAD_REPLIES: dict[str, tuple[dict[str, Any], str]] = {
    "nul": ({"payload": {"note": "a\x00"}}, "payload.note: NUL character '\\x00'"),
    "deep": ({"payload": nested(MAX_DEPTH + 1)}, "nested deeper than 64 levels"),
    "integer": ({"payload": {"n": 2**63}}, "payload.n: the integer 9223372036854775808"),
    "huge": ({"payload": "x" * MAX_VALUE_BYTES}, "payload: 262,146 bytes of JSON exceeds"),
    "error": ({"outcome": Outcome.FAILURE, "error": "no\x00"}, "field 'error': NUL character"),
}


def paying_saga(timeout: float) -> Saga[Any]:
    return Saga("pay").remote(
        "debit",
        participant="bank",
        command="debit",
        compensation="credit",
        timeout=timeout,
        retry=ONCE,
    )


async def bad_bank(transport: MemoryTransport) -> list[Envelope]:
    """A participant that answers each action with the bad reply its data names (built by
    hand: the Participant helper checks its own replies) and each compensation properly."""
    seen: list[Envelope] = []

    async def handle(body: bytes) -> None:
        command = decode(body)
        seen.append(command)
        reply = replace(
            command,
            id=f"r-{command.id}",
            kind=MessageKind.REPLY,
            causation_id=command.id,
            reply_to=None,
            outcome=Outcome.SUCCESS,
            payload=None,
        )
        if command.phase is Phase.ACTION:
            changes, _ = BAD_REPLIES[command.payload["bad"]]  # type: ignore[call-overload,index]
            reply = replace(reply, **changes)
        assert command.reply_to is not None
        await transport.publish(command.reply_to, raw_encode(reply))

    await transport.subscribe("bank", handle)
    return seen


def raw_encode(env: Envelope) -> bytes:
    """Bytes of ``env`` past encode's own checks, as another language's participant may send."""
    import json

    return json.dumps(to_dict(env), ensure_ascii=True).encode()


async def test_a_reply_that_breaks_the_rules_is_dead_lettered_and_acknowledged(
    store: Store,
) -> None:
    saga = paying_saga(timeout=0.5)
    transport = MemoryTransport()
    await bad_bank(transport)
    async with Worker(App(sagas=[saga]), store, transport) as worker:
        runs = [worker.client.run(saga, {"bad": bad}, timeout=20) for bad in BAD_REPLIES]
        instances = await asyncio.gather(*runs)
        letters = await worker.client.dead_letters()
    # Each ends (by its timeout here) and is compensated; none stalls the others.
    assert [i.status for i in instances] == [SagaStatus.FAILED] * len(BAD_REPLIES)
    reasons = sorted(letter.reason for letter in letters)
    assert len(reasons) == len(BAD_REPLIES), reasons
    for _, reason in BAD_REPLIES.values():
        assert any(reason in r for r in reasons), (reason, reasons)


async def test_a_reply_that_breaks_the_rules_ends_its_attempt_at_once(store: Store) -> None:
    """Issue 10 §2: the attempt the bad reply answers ends at once as an unknown outcome with
    the reason recorded, rather than waiting for its timeout (a minute here)."""
    saga = paying_saga(timeout=60)
    transport = MemoryTransport()
    await bad_bank(transport)
    async with Worker(App(sagas=[saga]), store, transport) as worker:
        runs = [worker.client.run(saga, {"bad": bad}, timeout=5) for bad in BAD_REPLIES]
        instances = await asyncio.gather(*runs)
    for (_, reason), instance in zip(BAD_REPLIES.values(), instances, strict=True):
        assert instance.status is SagaStatus.FAILED
        step = instance.step("debit")
        assert step.status is StepStatus.COMPENSATED and not step.outcome_known
        assert step.error is not None and reason in step.error


# -- a local step's error text ------------------------------------------------------------


async def test_a_local_step_failing_with_a_bad_message_fails_its_saga(store: Store) -> None:
    """An exception's text is a value too: a surrogate in it must not reach the store raw."""
    from sagakit import StepFailed

    saga: Saga[Any] = Saga("message")

    async def refuse(ctx: StepContext[Any]) -> None:
        raise StepFailed("caf\ud800 refused")

    saga.local("refuse", refuse, retry=ONCE, kind="pivot")
    async with Worker(App(sagas=[saga]), store) as worker:
        instance = await worker.client.run(saga, {}, timeout=5)
    assert instance.status is SagaStatus.FAILED
    assert instance.reason is not None and "caf\\ud800 refused" in instance.reason
