"""Timeouts of local step runs: one loop timer per tenth of a second, not one per run.

``asyncio.timeout`` arms and cancels a timer handle for every run; with thousands of local
steps a second that was as costly as the task that runs the step. Here runs whose deadlines
fall in the same tenth of a second share one timer, and a run that ends in time only leaves
its slot's set. A run is cancelled at most ``GRANULARITY`` seconds after its deadline.
"""

from __future__ import annotations

import asyncio
import math

GRANULARITY = 0.1
#: The slot of a run without a deadline (its timeout is infinite).
NO_DEADLINE = -1


class LocalTimeouts:
    """Cancels the tasks whose run outlived its timeout.

    ::

        slot = timeouts.start(task, timeout)
        try:
            await run()
        except asyncio.CancelledError:
            if timeouts.finish(task, slot):
                ...  # timed out: the cancellation was ours, uncancel() the task
            raise
        timeouts.finish(task, slot)
    """

    def __init__(self) -> None:
        self._slots: dict[int, set[asyncio.Task[object]]] = {}
        self._expired: set[asyncio.Task[object]] = set()

    def start(self, task: asyncio.Task[object], timeout: float) -> int:
        if not math.isfinite(timeout):
            return NO_DEADLINE  # an infinite timeout: nothing to arm
        loop = asyncio.get_running_loop()
        slot = math.ceil((loop.time() + timeout) / GRANULARITY)
        tasks = self._slots.get(slot)
        if tasks is None:
            tasks = self._slots[slot] = set()
            loop.call_at(slot * GRANULARITY, self._expire, slot)
        tasks.add(task)
        return slot

    def finish(self, task: asyncio.Task[object], slot: int) -> bool:
        """End ``task``'s run; True when its deadline had passed and it was cancelled for it."""
        tasks = self._slots.get(slot)
        if tasks is not None:
            tasks.discard(task)
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    def _expire(self, slot: int) -> None:
        for task in self._slots.pop(slot, ()):
            self._expired.add(task)
            task.cancel()

    def __len__(self) -> int:
        """Runs in progress (for tests)."""
        return sum(len(tasks) for tasks in self._slots.values())
