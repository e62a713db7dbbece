"""Local step timeouts: local runs are cancelled once their timeout passes, and only then."""

from __future__ import annotations

import asyncio
import math

import pytest

from sagakit.worker.local_timeouts import GRANULARITY, NO_DEADLINE, LocalTimeouts


async def _run(timeouts: LocalTimeouts, timeout: float, work: asyncio.Event) -> str:
    task = asyncio.current_task()
    assert task is not None
    slot = timeouts.start(task, timeout)
    try:
        await work.wait()
    except asyncio.CancelledError:
        if timeouts.finish(task, slot):
            task.uncancel()
            return "timed out"
        raise
    assert not timeouts.finish(task, slot)
    return "done"


async def test_a_run_past_its_timeout_is_cancelled_and_told_so() -> None:
    timeouts = LocalTimeouts()
    loop = asyncio.get_running_loop()
    began = loop.time()
    result = await asyncio.wait_for(_run(timeouts, 0.05, asyncio.Event()), timeout=5)
    assert result == "timed out"
    waited = loop.time() - began
    assert 0.05 <= waited < 5
    assert len(timeouts) == 0


async def test_a_run_that_ends_in_time_is_left_alone() -> None:
    timeouts = LocalTimeouts()
    work = asyncio.Event()
    task = asyncio.create_task(_run(timeouts, 0.2, work))
    await asyncio.sleep(0)
    assert len(timeouts) == 1
    work.set()
    assert await task == "done"
    assert len(timeouts) == 0
    # The slot's timer still fires later and finds nothing to cancel.
    await asyncio.sleep(0.2 + 2 * GRANULARITY)
    assert not task.cancelled()


async def test_runs_with_timeouts_in_the_same_tenth_share_one_timer() -> None:
    timeouts = LocalTimeouts()
    loop = asyncio.get_running_loop()
    scheduled = len(loop._scheduled)  # type: ignore[attr-defined]
    work = asyncio.Event()
    tasks = [asyncio.create_task(_run(timeouts, 30, work)) for _ in range(50)]
    await asyncio.sleep(0)
    assert len(timeouts) == 50
    assert len(loop._scheduled) - scheduled <= 2  # type: ignore[attr-defined]
    work.set()
    assert await asyncio.gather(*tasks) == ["done"] * 50
    assert len(timeouts) == 0


async def test_a_cancellation_that_is_not_the_deadline_propagates() -> None:
    timeouts = LocalTimeouts()
    task = asyncio.create_task(_run(timeouts, 30, asyncio.Event()))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not timeouts.finish(task, 0)


async def test_an_infinite_timeout_arms_nothing_and_never_fires() -> None:
    timeouts = LocalTimeouts()
    task = asyncio.current_task()
    assert task is not None
    assert timeouts.start(task, math.inf) == NO_DEADLINE
    assert len(timeouts) == 0
    assert not timeouts.finish(task, NO_DEADLINE)
