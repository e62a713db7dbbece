"""Idempotent starts (B7, Semantics 15): resolve_start(), the one rule the worker and the
client share, and the client's queued start held to it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sagakit import App, Client, IdempotencyConflict, Saga, SqliteStore, StepContext, Worker
from sagakit.encoding import digest_of
from sagakit.errors import SagakitError
from sagakit.ports import RetiredKey
from sagakit.starts import new_instance, resolve_start
from sagakit.state import SagaInstance


async def _noop(ctx: StepContext[Any]) -> None:
    return None


SAGA: Saga[Any] = Saga("keyed").local("only", _noop, compensation=_noop)
DEFINITION = SAGA.build()


def holder(saga_id: str, data: Any) -> SagaInstance:
    return new_instance(
        DEFINITION,
        saga_id=saga_id,
        data=data,
        correlation_id=None,
        idempotency_key="k",
        input_digest=digest_of(data),
        now=0.0,
    )


def test_a_free_key_creates_an_instance() -> None:
    assert resolve_start("k", digest_of({"x": 1})) is None


def test_the_same_input_resolves_to_the_instance_that_holds_the_key() -> None:
    existing = holder("s1", {"x": 1})
    assert resolve_start("k", digest_of({"x": 1}), existing=existing) == "s1"


def test_other_input_is_a_conflict_returned_not_raised() -> None:
    existing = holder("s1", {"x": 1})
    conflict = resolve_start("k", digest_of({"x": 2}), existing=existing)
    assert isinstance(conflict, IdempotencyConflict) and isinstance(conflict, SagakitError)
    assert str(conflict) == "idempotency key 'k' was used by saga s1 with different input"


def test_a_purged_instance_s_key_still_holds() -> None:
    retired = RetiredKey("s0", digest_of({"x": 1}))
    assert resolve_start("k", digest_of({"x": 1}), retired=retired) == "s0"
    conflict = resolve_start("k", digest_of({"x": 2}), retired=retired)
    assert str(conflict) == (
        "idempotency key 'k' was used by saga s0 (since purged) with different input"
    )


async def test_a_queued_start_with_a_used_key_and_other_input_is_refused(tmp_path: Path) -> None:
    """Without a worker in its process, the client answers a start whose key is already held
    by an instance itself: it used to return that instance whatever the input."""
    db = str(tmp_path / "saga.db")
    owner = SqliteStore(db, owner=True)
    try:
        async with Worker(App(sagas=[SAGA]), owner) as worker:
            first = await worker.client.start(SAGA, {"x": 1}, key="k")
            await first.result(timeout=5)
    finally:
        await owner.close()
    reader = SqliteStore(db)
    try:
        client = Client(reader)
        again = await client.start(SAGA, {"x": 1}, key="k")
        assert again.saga_id == first.saga_id
        with pytest.raises(IdempotencyConflict, match="with different input"):
            await client.start(SAGA, {"x": 2}, key="k")
        assert await reader.pending_commands(10) == []  # nothing was queued
    finally:
        await reader.close()
