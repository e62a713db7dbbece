"""sagakit.runtime: the loop sagakit's processes run on, and a worker on uvloop."""

from __future__ import annotations

import asyncio
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

    with pytest.raises(ValueError, match="SAGAKIT_LOOP='trio'"):
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
