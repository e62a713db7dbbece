"""The store's clock as seen from this worker (Semantics 13).

Due timers and expired leases are judged by the database's clock; a decision computed from
a skewed worker clock would move every deadline by the skew. The offset is measured when the
worker attaches and again at every lease renewal.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sagakit.ports import TimerQueue


class StoreClock:
    __slots__ = ("_local", "_offset")

    def __init__(self, local: Callable[[], float] = time.time) -> None:
        self._local = local
        self._offset = 0.0  # the store's clock minus ours

    def __call__(self) -> float:
        return self._local() + self._offset

    async def sync(self, store: TimerQueue) -> None:
        before = self._local()
        store_now = await store.now()
        self._offset = store_now - (before + self._local()) / 2
