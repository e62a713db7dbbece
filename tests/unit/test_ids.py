"""Saga and message identifiers are UUID version 7: time-ordered, unique, 32 hex digits."""

from __future__ import annotations

import doctest
import time
import uuid
from pathlib import Path

from sagakit import App, Client, Saga, SqliteStore, StepContext, Worker, ids
from sagakit.ids import new_id


def test_layout_is_uuid_version_7() -> None:
    for _ in range(1000):
        value = new_id()
        assert len(value) == 32
        parsed = uuid.UUID(hex=value)
        assert parsed.hex == value
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122


def test_the_first_48_bits_are_the_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    value = new_id()
    after = time.time_ns() // 1_000_000
    assert before <= int(value[:12], 16) <= after


def next_millisecond(made: str) -> None:
    """Wait for the millisecond after the one ``made`` was made in (a busy wait of at most
    one millisecond): ids within one millisecond are unordered."""
    millis = int(made[:12], 16)
    while time.time_ns() // 1_000_000 <= millis:
        pass


def test_later_ids_sort_after_earlier_ones() -> None:
    first = new_id()
    next_millisecond(first)
    assert new_id() > first


def test_ids_are_unique() -> None:
    made = [new_id() for _ in range(50_000)]
    assert len(set(made)) == len(made)


def test_docstring_example() -> None:
    assert doctest.testmod(ids).failed == 0


async def test_saga_ids_are_time_ordered(tmp_path: Path) -> None:
    async def step(ctx: StepContext[object]) -> None:
        return None

    saga: Saga[object] = Saga("ids").local("only", step, compensation=step)
    store = SqliteStore(str(tmp_path / "ids.db"), owner=True)
    try:
        async with Worker(App(sagas=[saga]), store) as worker:
            through_worker = (await worker.client.start(saga, {})).saga_id
            queued = (await Client(store).start(saga, {})).saga_id  # a start command
            next_millisecond(through_worker)
            later = (await worker.client.start(saga, {})).saga_id
    finally:
        await store.close()
    for saga_id in (through_worker, queued, later):
        assert uuid.UUID(hex=saga_id).version == 7
    assert through_worker < later
