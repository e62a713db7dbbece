"""``sagakit demo``: run the order saga N times in one process and check the ledgers.

Run again on a database where an earlier demo process was killed, it first finishes what that
process left (the worker recovers the outbox, timers and commands on start), and its summary
and ``ledger_ok`` cover the whole database.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sagakit.encoding import JSON
from sagakit.examples.orders import (
    DECLINED_CARD,
    Order,
    app,
    check_ledgers,
    create_ledgers,
    order_saga,
)
from sagakit.ports import InstanceQueries
from sagakit.state import SagaStatus
from sagakit.storage import open_store
from sagakit.worker import Worker


@dataclass(frozen=True)
class DemoProgress:
    """How far this run has got: its own sagas only, never those of earlier runs."""

    new: int
    settled: int
    by_status: Mapping[str, int]
    #: Unsettled instances left by an earlier run, once this run's own have settled.
    leftover: int = 0


async def run_demo(
    url: str,
    *,
    sagas: int = 100,
    fail_rate: float = 0.2,
    concurrency: int = 16,
    seed: int | None = None,
    on_open: Callable[[], None] | None = None,
    on_progress: Callable[[DemoProgress], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, JSON]:
    """Run ``sagas`` new order sagas and check the ledgers of every order in the database.

    ``on_open`` is called once the store is open and its worker lock held (so nothing is
    announced before a refusal); ``on_progress`` each time one of this run's sagas settles.
    """
    store = open_store(url, owner=True, create=True)
    try:
        await store.transaction(create_ledgers)
        if on_open is not None:
            on_open()
        began = clock()
        by_status: dict[str, int] = {}

        def report(leftover: int = 0) -> None:
            if on_progress is not None:
                settled = sum(by_status.values())
                on_progress(DemoProgress(sagas, settled, dict(by_status), leftover))

        async with Worker(app, store) as worker:
            rng = random.Random(seed)
            run = uuid.uuid4().hex[:8]
            gate = asyncio.Semaphore(max(1, concurrency))

            async def one(i: int) -> None:
                order = Order(
                    order_id=f"order-{run}-{i}",
                    sku=f"SKU-{i % 7}",
                    quantity=1 + i % 3,
                    amount_cents=1000 + (i * 37) % 9000,
                    card=DECLINED_CARD if rng.random() < fail_rate else "tok_visa",
                )
                async with gate:
                    handle = await worker.client.start(
                        order_saga, order, key=order.order_id, correlation_id=order.order_id
                    )
                    settled = await handle.result()
                status = settled.status.value
                by_status[status] = by_status.get(status, 0) + 1
                report()

            report()
            await asyncio.gather(*(one(i) for i in range(sagas)))
            await _wait_all_settled(store, report)
            seconds = clock() - began
        counts = await store.count_by_status()
        problems = await store.transaction(check_ledgers)
    finally:
        await store.close()
    total = sum(counts.values())
    settled = sum(n for s, n in counts.items() if s.settled)
    summary: dict[str, JSON] = {
        "started": total,
        "new": sagas,
        "completed": counts.get(SagaStatus.COMPLETED, 0),
        "failed": counts.get(SagaStatus.FAILED, 0),
        "stuck": counts.get(SagaStatus.STUCK, 0),
        "unsettled": total - settled,
        "seconds": round(seconds, 3),
        "sagas_per_second": round(sagas / seconds, 1) if seconds > 0 else 0.0,
        "ledger_ok": not problems,
        "ledger_problems": list(problems[:20]),
    }
    return summary


async def _wait_all_settled(store: InstanceQueries, report: Callable[[int], None]) -> None:
    # Instances left by an earlier, killed run are finished by the worker's recovery.
    while True:
        counts = await store.count_by_status()
        leftover = sum(n for s, n in counts.items() if not s.settled)
        if not leftover:
            return
        report(leftover)
        await asyncio.sleep(0.05)
