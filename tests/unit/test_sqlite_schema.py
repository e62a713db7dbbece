"""The SQLite schema: ``status_at`` moves with the status only, so a step that keeps the status
updates no index; a version-1 file (before ``status_at``) is upgraded by its owner or by
``sagakit migrate``, never under a running worker, to the schema a new file has."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from sagakit.cli import main
from sagakit.errors import StorageError, StoreLocked
from sagakit.ports import Batch, InstanceFilter, InstanceWrite
from sagakit.state import SagaInstance, SagaStatus, StepState
from sagakit.storage import sqlite
from sagakit.storage.sqlite import SCHEMA_VERSION, Q, SqliteStore
from sagakit.storage.sqlite_file import take_lock

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
        assert await store.commit(Batch([InstanceWrite("a", first)])) == [True]
        step = replace(first, updated_at=20.0, revision=2)
        assert await store.commit(Batch([InstanceWrite("a", step, 1)])) == [True]
        assert rows(path, "SELECT status_at, updated_at FROM sagakit_instances") == [(10.0, 20.0)]

        done = replace(step, status=SagaStatus.COMPLETED, updated_at=30.0, revision=3)
        assert await store.commit(Batch([InstanceWrite("a", done, 2)])) == [True]
        assert rows(path, "SELECT status, status_at FROM sagakit_instances") == [
            ("completed", 30.0)
        ]

        # At a stale revision neither update applies, whether or not the status changes.
        stale = replace(done, updated_at=40.0, revision=4)
        assert await store.commit(Batch([InstanceWrite("a", stale, 2)])) == [False]
        moved = replace(stale, status=SagaStatus.FAILED)
        assert await store.commit(Batch([InstanceWrite("a", moved, 2)])) == [False]
        assert rows(path, "SELECT status, status_at, revision FROM sagakit_instances") == [
            ("completed", 30.0, 3)
        ]
    finally:
        await store.close()


async def test_list_and_retention_go_by_the_time_of_the_status(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"), create=True, clock=lambda: 1000.0)
    try:
        a = make_instance("a", status=SagaStatus.PENDING, created_at=10.0, revision=1)
        b = make_instance("b", status=SagaStatus.PENDING, created_at=20.0, revision=1)
        await store.commit(Batch([InstanceWrite("a", a), InstanceWrite("b", b)]))
        a_step = replace(a, updated_at=50.0, revision=2)  # a step: a keeps its status
        await store.commit(Batch([InstanceWrite("a", a_step, 1)]))
        pending = await store.list(InstanceFilter(status=SagaStatus.PENDING))
        assert [i.saga_id for i in pending] == ["b", "a"]  # b entered pending last

        a_done = replace(a_step, status=SagaStatus.COMPLETED, updated_at=60.0, revision=3)
        b_done = replace(b, status=SagaStatus.COMPLETED, updated_at=70.0, revision=2)
        await store.commit(Batch([InstanceWrite("a", a_done, 2), InstanceWrite("b", b_done, 1)]))
        # A late update of a finished instance (a refused command) keeps its finishing time.
        a_late = replace(a_done, updated_at=990.0, revision=4)
        await store.commit(Batch([InstanceWrite("a", a_late, 3)]))
        assert await store.finished_before(1000.0 - 65.0, 10) == ["a"]
        assert await store.finished_before(1000.0 - 75.0, 10) == ["a", "b"]
    finally:
        await store.close()


async def test_a_step_that_keeps_the_status_names_no_indexed_column(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"), create=True)
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


V1_STATE = (
    '{"data": null, "steps": [], "reason": null, "stuck_reason": "r", "stuck_step": null,'
    ' "deadline_at": null, "deadline_passed": false, "point_of_no_return": null,'
    ' "input_digest": "d"}'
)


def version_1_file(path: Path) -> Path:
    with sqlite3.connect(path) as conn:
        conn.executescript(V1_SCHEMA)
        conn.execute(
            "INSERT INTO sagakit_instances (saga_id, saga_type, version, fingerprint, status,"
            " correlation_id, created_at, updated_at, revision, state)"
            " VALUES ('old', 'order', 1, 'fp', 'stuck', 'old', 5.0, 7.5, 3, ?)",
            (V1_STATE,),
        )
    conn.close()
    return path


def schema_of(path: Path) -> dict[str, object]:
    """What a file's schema is made of: each table's columns, each index's columns."""
    names = rows(path, "SELECT type, name FROM sqlite_master WHERE name LIKE 'sagakit%'")
    return {
        f"{kind} {name}": rows(
            path, f"PRAGMA {'table_info' if kind == 'table' else 'index_xinfo'}({name})"
        )
        for kind, name in names
    }


def is_version_1(path: Path) -> bool:
    version = rows(path, "SELECT value FROM sagakit_meta WHERE key = 'schema_version'")
    columns = {row[1] for row in rows(path, "PRAGMA table_info(sagakit_instances)")}
    return version == [("1",)] and "status_at" not in columns


async def test_a_version_1_file_is_upgraded_by_its_owner_to_a_new_file_s_schema(
    tmp_path: Path,
) -> None:
    path = version_1_file(tmp_path / "v1.db")
    store = SqliteStore(str(path), owner=True)
    try:
        assert await store.migrate() == [2]
        assert await store.migrate() == []
        assert rows(path, "SELECT value FROM sagakit_meta WHERE key = 'schema_version'") == [("2",)]
        assert rows(path, "SELECT status_at FROM sagakit_instances") == [(7.5,)]
        stuck = await store.list(InstanceFilter(status=SagaStatus.STUCK))
        assert [i.saga_id for i in stuck] == ["old"]
        # Written after the upgrade, through the store.
        fresh = make_instance("new", status=SagaStatus.PENDING, created_at=9.0, revision=1)
        assert await store.commit(Batch([InstanceWrite("new", fresh)])) == [True]
    finally:
        await store.close()
    new = SqliteStore(str(tmp_path / "new.db"), create=True)
    await new.close()
    assert schema_of(path) == schema_of(tmp_path / "new.db")
    # An older sagakit still writing the old layout fails rather than write without status_at.
    with pytest.raises(sqlite3.IntegrityError, match="status_at"), sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO sagakit_instances (saga_id, saga_type, version, fingerprint, status,"
            " correlation_id, created_at, updated_at, revision, state)"
            " VALUES ('late', 'order', 1, 'fp', 'pending', 'late', 1, 1, 1, '{}')"
        )
    reopened = SqliteStore(str(path), owner=True)
    try:
        assert await reopened.migrate() == []
    finally:
        await reopened.close()


async def test_a_reader_refuses_a_version_1_file_and_leaves_it_as_it_is(tmp_path: Path) -> None:
    path = version_1_file(tmp_path / "v1.db")
    with pytest.raises(StorageError, match="sagakit migrate"):
        SqliteStore(str(path), create=False)
    assert is_version_1(path)


async def test_no_upgrade_under_a_running_worker(tmp_path: Path) -> None:
    path = version_1_file(tmp_path / "v1.db")
    older_worker = take_lock(str(path))  # an older sagakit's worker holds the file
    try:
        with pytest.raises(StoreLocked):
            SqliteStore(str(path), upgrade=True)
    finally:
        older_worker.close()
    assert is_version_1(path)


async def test_a_file_of_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "next.db"
    await SqliteStore(str(path), create=True).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"UPDATE sagakit_meta SET value = '{SCHEMA_VERSION + 1}'")
    conn.close()
    for upgrade in (False, True):
        with pytest.raises(StorageError, match="newer than this sagakit"):
            SqliteStore(str(path), owner=upgrade)


def test_sagakit_migrate_upgrades_a_version_1_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = version_1_file(tmp_path / "v1.db")
    url = f"sqlite:///{path}"
    assert main(["migrate", "--db", url]) == 0
    assert capsys.readouterr().out.strip() == f"applied migration(s) 2 to {url}"
    assert main(["migrate", "--db", url]) == 0
    assert capsys.readouterr().out.strip() == f"{url} is up to date"


def test_the_schema_file_writes_the_version_the_code_knows() -> None:
    schema = (Path(sqlite.__file__).parent / "sql" / "sqlite" / "schema.sql").read_text()
    assert f"('schema_version', '{SCHEMA_VERSION}')" in schema
    upgrades = sorted((Path(sqlite.__file__).parent / "sql" / "sqlite").glob("upgrade_*.sql"))
    assert [p.name for p in upgrades] == [f"upgrade_{n}.sql" for n in range(2, SCHEMA_VERSION + 1)]
