"""Deadlines: local runs are cancelled once their timeout passes, and only then."""

from __future__ import annotations

import asyncio
import math

import pytest

from sagakit.deadlines import GRANULARITY, NO_DEADLINE, Deadlines


async def _run(deadlines: Deadlines, timeout: float, work: asyncio.Event) -> str:
    task = asyncio.current_task()
    assert task is not None
    slot = deadlines.start(task, timeout)
    try:
        await work.wait()
    except asyncio.CancelledError:
        if deadlines.finish(task, slot):
            task.uncancel()
            return "timed out"
        raise
    assert not deadlines.finish(task, slot)
    return "done"


async def test_a_run_past_its_timeout_is_cancelled_and_told_so() -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    began = loop.time()
    result = await asyncio.wait_for(_run(deadlines, 0.05, asyncio.Event()), timeout=5)
    assert result == "timed out"
    waited = loop.time() - began
    assert 0.05 <= waited < 5
    assert len(deadlines) == 0


async def test_a_run_that_ends_in_time_is_left_alone() -> None:
    deadlines = Deadlines()
    work = asyncio.Event()
    task = asyncio.create_task(_run(deadlines, 0.2, work))
    await asyncio.sleep(0)
    assert len(deadlines) == 1
    work.set()
    assert await task == "done"
    assert len(deadlines) == 0
    # The slot's timer still fires later and finds nothing to cancel.
    await asyncio.sleep(0.2 + 2 * GRANULARITY)
    assert not task.cancelled()


async def test_runs_with_deadlines_in_the_same_tenth_share_one_timer() -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    scheduled = len(loop._scheduled)  # type: ignore[attr-defined]
    work = asyncio.Event()
    tasks = [asyncio.create_task(_run(deadlines, 30, work)) for _ in range(50)]
    await asyncio.sleep(0)
    assert len(deadlines) == 50
    assert len(loop._scheduled) - scheduled <= 2  # type: ignore[attr-defined]
    work.set()
    assert await asyncio.gather(*tasks) == ["done"] * 50
    assert len(deadlines) == 0


async def test_a_cancellation_that_is_not_the_deadline_propagates() -> None:
    deadlines = Deadlines()
    task = asyncio.create_task(_run(deadlines, 30, asyncio.Event()))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not deadlines.finish(task, 0)


async def test_an_infinite_timeout_arms_nothing_and_never_fires() -> None:
    deadlines = Deadlines()
    task = asyncio.current_task()
    assert task is not None
    assert deadlines.start(task, math.inf) == NO_DEADLINE
    assert len(deadlines) == 0
    assert not deadlines.finish(task, NO_DEADLINE)
