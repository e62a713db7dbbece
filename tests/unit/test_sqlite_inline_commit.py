"""Which thread a SQLite commit runs on (SqliteStore.commit): a small batch on the event loop's
while commits are fast, anything else on the writer thread."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from sagakit.ports import Batch, InstanceWrite
from sagakit.storage import sqlite
from sagakit.storage.sqlite import INLINE_BATCH, INLINE_SECONDS, SqliteStore


async def committed_on(store: SqliteStore, batch: Batch, monkeypatch: pytest.MonkeyPatch) -> str:
    threads: list[str] = []
    real = SqliteStore._commit

    def spy(self: SqliteStore, b: Batch) -> list[bool]:
        threads.append(threading.current_thread().name)
        return real(self, b)

    monkeypatch.setattr(sqlite.SqliteStore, "_commit", spy)
    await store.commit(batch)
    return "loop" if threads == [threading.main_thread().name] else "writer"


def side_only(count: int) -> Batch:
    return Batch([InstanceWrite(f"s{i}") for i in range(count)])


async def test_a_small_batch_commits_on_the_loop_while_commits_are_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStore(str(tmp_path / "a.db"), create=True)
    try:
        assert await committed_on(store, side_only(INLINE_BATCH), monkeypatch) == "loop"
        assert await committed_on(store, side_only(INLINE_BATCH + 1), monkeypatch) == "writer"
    finally:
        await store.close()


async def test_after_a_slow_commit_batches_go_to_the_writer_until_it_is_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStore(str(tmp_path / "a.db"), create=True)
    try:
        store._commit_time = INLINE_SECONDS * 2  # as a slow fsync leaves it
        assert await committed_on(store, side_only(1), monkeypatch) == "writer"
        for _ in range(20):  # each fast commit shrinks the remembered time by a tenth
            await store.commit(side_only(1))
        assert await committed_on(store, side_only(1), monkeypatch) == "loop"
    finally:
        await store.close()


async def test_an_in_memory_database_always_commits_on_its_one_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = SqliteStore(":memory:")
    try:
        assert await committed_on(store, side_only(1), monkeypatch) == "writer"
    finally:
        await store.close()
