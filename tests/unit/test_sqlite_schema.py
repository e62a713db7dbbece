"""The SQLite schema: ``status_at`` moves with the status only, so a step that keeps the status
updates no index; a version-1 file (before ``status_at``) is upgraded when it is opened."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

from sagakit.ports import Batch, InstanceFilter, Transition
from sagakit.state import SagaInstance, SagaStatus, StepState
from sagakit.storage.sqlite import Q, SqliteStore

V1_SCHEMA = (Path(__file__).parent / "data" / "sqlite_schema_v1.sql").read_text()


def make_instance(
    saga_id: str, *, status: SagaStatus, created_at: float, revision: int
) -> SagaInstance:
    return SagaInstance(
        saga_id=saga_id,
        saga_type="order",
        version=1,
        fingerprint="fp",
        status=status,
        data={"n": 1},
        steps=(StepState("reserve"),),
        correlation_id=saga_id,
        created_at=created_at,
        updated_at=created_at,
        revision=revision,
    )


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


async def test_status_at_moves_with_the_status_only(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(str(path), owner=True)
    try:
        first = make_instance("a", status=SagaStatus.PENDING, created_at=10.0, revision=1)
        assert await store.commit(Batch([Transition("a", first)])) == [True]
        step = replace(first, updated_at=20.0, revision=2)
        assert await store.commit(Batch([Transition("a", step, 1)])) == [True]
        assert rows(path, "SELECT status_at, updated_at FROM sagakit_instances") == [(10.0, 20.0)]

        done = replace(step, status=SagaStatus.COMPLETED, updated_at=30.0, revision=3)
        assert await store.commit(Batch([Transition("a", done, 2)])) == [True]
        assert rows(path, "SELECT status, status_at FROM sagakit_instances") == [
            ("completed", 30.0)
        ]

        # At a stale revision neither update applies, whether or not the status changes.
        stale = replace(done, updated_at=40.0, revision=4)
        assert await store.commit(Batch([Transition("a", stale, 2)])) == [False]
        moved = replace(stale, status=SagaStatus.FAILED)
        assert await store.commit(Batch([Transition("a", moved, 2)])) == [False]
        assert rows(path, "SELECT status, status_at, revision FROM sagakit_instances") == [
            ("completed", 30.0, 3)
        ]
    finally:
        await store.close()


async def test_a_step_that_keeps_the_status_names_no_indexed_column(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    try:
        update = Q["update_instance_in_status"]
        assigned = update.split(" SET ", 1)[1].split(" WHERE ", 1)[0]
        columns = {part.split("=")[0].strip() for part in assigned.split(",")}
        indexed = {
            row[2]
            for (name,) in rows(
                Path(store.path),
                "SELECT name FROM sqlite_master WHERE type = 'index' "
                "AND tbl_name = 'sagakit_instances'",
            )
            for row in rows(Path(store.path), f"PRAGMA index_info({name})")
        }
        assert columns == {"updated_at", "revision", "state"}
        assert not columns & indexed
    finally:
        await store.close()


async def test_a_version_1_file_is_upgraded_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(V1_SCHEMA)
        conn.execute(
            "INSERT INTO sagakit_instances (saga_id, saga_type, version, fingerprint, status,"
            " correlation_id, created_at, updated_at, revision, state)"
            " VALUES ('old', 'order', 1, 'fp', 'stuck', 'old', 5.0, 7.5, 3, ?)",
            (
                '{"data": null, "steps": [], "reason": null, "stuck_reason": "r",'
                ' "stuck_step": null, "deadline_at": null, "deadline_passed": false,'
                ' "point_of_no_return": null, "input_digest": "d"}',
            ),
        )
    store = SqliteStore(str(path))
    try:
        assert rows(path, "SELECT value FROM sagakit_meta WHERE key = 'schema_version'") == [("2",)]
        assert rows(path, "SELECT status_at FROM sagakit_instances") == [(7.5,)]
        index = dict(rows(path, "SELECT name, sql FROM sqlite_master WHERE type = 'index'"))
        assert "status_at" in str(index["sagakit_instances_status"])
        assert "status_at" in str(index["sagakit_instances_type"])
        stuck = await store.list(InstanceFilter(status=SagaStatus.STUCK))
        assert [i.saga_id for i in stuck] == ["old"]
    finally:
        await store.close()
    # Opened again, the file is left as it is.
    again = SqliteStore(str(path))
    await again.close()
    assert rows(path, "SELECT status_at FROM sagakit_instances") == [(7.5,)]
