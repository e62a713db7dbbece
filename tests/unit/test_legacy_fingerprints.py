"""A database written by sagakit at commit f314044, whose instances carry fingerprints v1
(tests/unit/data/sagakit_f314044.db, made by write_f314044_fixture.py): today's worker, with
the same definitions, claims those instances, gives them fingerprints v2 and finishes them,
the queued start included. A worker whose definition changed under the same name and version
refuses to start rather than strand them."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from sagakit import (
    App,
    Command,
    DefinitionError,
    Participant,
    ParticipantTx,
    Saga,
    SagaStatus,
    SqliteStore,
    StepContext,
    Worker,
)
from sagakit.definition import legacy_fingerprint_of
from sagakit.ports import InstanceFilter

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "sagakit_f314044.db"
#: What f314044 wrote for legacy_app's two sagas.
V1 = {"legacy-local": "a6dc74dd2ae9c53e", "legacy-remote": "c6aa26faf35635d4"}


def legacy_app() -> ModuleType:
    """data/legacy_app.py under the module name it had when the fixture was written (a v1
    fingerprint names each local step's module)."""
    name = "sagakit_legacy_app"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, DATA / "legacy_app.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def sagas() -> list[Saga[Any]]:
    found: list[Saga[Any]] = legacy_app().sagas()
    return found


def participants(calls: list[str]) -> list[Participant]:
    mailer, stock = Participant("mailer"), Participant("stock")

    async def handle(tx: ParticipantTx, cmd: Command) -> dict[str, str]:
        calls.append(f"{cmd.step}:{cmd.phase.value}")
        return {"done": cmd.step}

    mailer.command("mail.send")(handle)
    for command in ("stock.reserve", "stock.release", "stock.ship"):
        stock.command(command)(handle)
    return [mailer, stock]


@pytest.fixture
def legacy_db(tmp_path: Path) -> str:
    path = tmp_path / "legacy.db"
    shutil.copyfile(FIXTURE, path)
    return str(path)


def rows(path: str, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        found = conn.execute(sql).fetchall()
    conn.close()
    return found


async def until_all_settled(store: SqliteStore, ids: list[str], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        found = [await store.get(i) for i in ids]
        if all(i is not None and i.status.settled for i in found):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not settled in time: {found}")
        await asyncio.sleep(0.02)


def test_the_fixture_is_what_f314044_wrote(legacy_db: str) -> None:
    assert sorted(
        rows(legacy_db, "SELECT saga_type, fingerprint, status FROM sagakit_instances")
    ) == [
        ("legacy-local", V1["legacy-local"], "pending"),
        ("legacy-remote", V1["legacy-remote"], "pending"),
    ]
    [(kind, body, state)] = rows(legacy_db, "SELECT kind, body, state FROM sagakit_commands")
    assert (kind, state) == ("start", "pending") and "fingerprint" not in body
    assert rows(legacy_db, "SELECT value FROM sagakit_meta") == [("2",)]
    # The v1 fingerprint is computed as it was then.
    for saga in sagas():
        definition = saga.build()
        assert definition.legacy_fingerprint == V1[definition.name]
        assert legacy_fingerprint_of(definition.steps) == definition.legacy_fingerprint


async def test_a_worker_of_today_finishes_what_f314044_left_running(legacy_db: str) -> None:
    local, remote = (s.build() for s in sagas())
    calls: list[str] = []
    store = SqliteStore(legacy_db, owner=True)
    try:
        running = [i.saga_id for i in await store.list(InstanceFilter())]
        queued = [c.saga_id for c in await store.queued_starts(10)]
        assert len(running) == 2 and len(queued) == 1
        app = App(sagas=[local, remote], participants=participants(calls))
        async with Worker(app, store, poll_interval=0.02):
            await until_all_settled(store, [*running, *queued])
        done = await store.list(InstanceFilter())
    finally:
        await store.close()
    assert sorted((i.saga_type, i.status, i.fingerprint) for i in done) == [
        ("legacy-local", SagaStatus.COMPLETED, local.fingerprint),
        ("legacy-remote", SagaStatus.COMPLETED, remote.fingerprint),
        ("legacy-remote", SagaStatus.COMPLETED, remote.fingerprint),
    ]
    held = next(i for i in done if i.saga_type == "legacy-local")
    assert held.results()["hold"] == {"held": {"order": "o-1"}}  # run again after the restart
    assert sorted(calls) == sorted(["notify:action", *["reserve:action", "ship:action"] * 2])
    assert {i.idempotency_key for i in done} == {"k-local", "k-queued", None}


async def test_a_changed_definition_refuses_to_start_and_leaves_them_as_they_are(
    legacy_db: str,
) -> None:
    before = rows(legacy_db, "SELECT * FROM sagakit_instances ORDER BY saga_id")

    async def hold(ctx: StepContext[Any]) -> None:  # another function: another v1 fingerprint
        return None

    local: Saga[Any] = (
        Saga("legacy-local", version=1)
        .local("hold", hold, compensation=hold)
        .remote("notify", participant="mailer", command="mail.send", kind="retriable")
    )
    store = SqliteStore(legacy_db, owner=True)
    try:
        with pytest.raises(DefinitionError, match=r"'legacy-local' v1 .* unfinished instances"):
            await Worker(App(sagas=[local]), store).start()
        assert await store.live_definitions() == []  # it did not stay registered
    finally:
        await store.close()
    assert rows(legacy_db, "SELECT * FROM sagakit_instances ORDER BY saga_id") == before
