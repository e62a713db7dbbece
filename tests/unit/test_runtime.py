"""sagakit.runtime: the loop sagakit's processes run on, and a worker on uvloop."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from sagakit import App, Saga, SagaStatus, SqliteStore, StepContext, StepFailed, Worker, runtime


def test_the_loop_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(runtime.ENV_LOOP, raising=False)
    assert runtime.loop_name() == "uvloop"  # installed with sagakit on this platform
    monkeypatch.setenv(runtime.ENV_LOOP, "asyncio")
    assert runtime.loop_name() == "asyncio"
    monkeypatch.setenv(runtime.ENV_LOOP, "UVLOOP")
    assert runtime.loop_name() == "uvloop"


def test_an_unknown_loop_is_refused_and_nothing_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runtime.ENV_LOOP, "trio")
    ran = []

    async def main() -> None:
        ran.append(True)

    with pytest.raises(runtime.LoopChoiceError, match=r"SAGAKIT_LOOP='trio'"):
        runtime.run(main())
    assert not ran


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_saga_runs_and_compensates_on_either_loop(
    loop: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(runtime.ENV_LOOP, loop)
    effects: list[str] = []

    async def reserve(ctx: StepContext[Any]) -> str:
        effects.append("reserve")
        await asyncio.sleep(0)  # a step that really suspends
        return "r-1"

    async def release(ctx: StepContext[Any]) -> None:
        effects.append(f"release {ctx.result}")

    async def charge(ctx: StepContext[Any]) -> None:
        raise StepFailed("card declined")

    async def refund(ctx: StepContext[Any]) -> None:
        effects.append("refund")

    saga: Saga[Any] = Saga("on_a_loop")
    saga.local("reserve", reserve, compensation=release)
    saga.local("charge", charge, compensation=refund, timeout=5)

    async def main() -> tuple[str, SagaStatus]:
        store = SqliteStore(str(tmp_path / "loop.db"), owner=True)
        try:
            async with Worker(App(sagas=[saga]), store) as worker:
                instance = await worker.client.run(saga, {"order": 1}, timeout=10)
                return type(asyncio.get_running_loop()).__module__, instance.status
        finally:
            await store.close()

    module, status = runtime.run(main())
    assert module.startswith(loop)
    assert status is SagaStatus.FAILED
    assert effects == ["reserve", "release r-1"]


def test_the_cli_reports_an_unknown_loop_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from sagakit.cli import main

    monkeypatch.setenv(runtime.ENV_LOOP, "bogus")
    assert main(["migrate", "--db", f"sqlite:///{tmp_path}/x.db"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sagakit: error: SAGAKIT_LOOP='bogus'")
    assert "Traceback" not in err


async def test_a_local_step_without_a_timeout_bound_runs(tmp_path: Path) -> None:
    async def forever_allowed(ctx: StepContext[Any]) -> str:
        await asyncio.sleep(0)
        return "done"

    async def undo(ctx: StepContext[Any]) -> None:
        return None

    saga: Saga[Any] = Saga("unbounded")
    saga.local("only", forever_allowed, compensation=undo, timeout=math.inf)
    store = SqliteStore(str(tmp_path / "inf.db"), owner=True)
    try:
        async with Worker(App(sagas=[saga]), store) as worker:
            instance = await worker.client.run(saga, {}, timeout=10)
    finally:
        await store.close()
    assert instance.status is SagaStatus.COMPLETED
    assert instance.steps[0].result == "done"


async def test_a_batch_limit_below_one_is_refused(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "mb.db"), owner=True)
    try:
        with pytest.raises(ValueError, match="max_batch"):
            Worker(App(sagas=[]), store, max_batch=0)
    finally:
        await store.close()
