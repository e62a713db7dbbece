"""``sagakit demo``: run the order saga N times in one process and check the ledgers.

Run again on a database where an earlier demo process was killed, it first finishes what that
process left (the worker recovers the outbox, timers and commands on start), and its summary
and ``ledger_ok`` cover the whole database.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid
from collections.abc import Callable
from typing import TextIO

from sagakit.encoding import JSON
from sagakit.examples.orders import (
    DECLINED_CARD,
    Order,
    app,
    check_ledgers,
    create_ledgers,
    order_saga,
)
from sagakit.state import SagaStatus
from sagakit.storage import open_store
from sagakit.worker import Worker


async def run_demo(
    url: str,
    *,
    sagas: int = 100,
    fail_rate: float = 0.2,
    concurrency: int = 16,
    seed: int | None = None,
    progress: TextIO | None = sys.stderr,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, JSON]:
    store = open_store(url, owner=True)
    try:
        await store.transaction(create_ledgers)
        began = clock()
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
                    await handle.result()

            reporter = asyncio.create_task(_report(store, progress, began, clock))
            try:
                await asyncio.gather(*(one(i) for i in range(sagas)))
                await _wait_all_settled(store)
            finally:
                reporter.cancel()
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


async def _wait_all_settled(store: object) -> None:
    # Instances left by an earlier, killed run are finished by the worker's recovery.
    count = store.count_by_status  # type: ignore[attr-defined]
    while True:
        counts = await count()
        if all(s.settled for s, n in counts.items() if n):
            return
        await asyncio.sleep(0.05)


async def _report(
    store: object, out: TextIO | None, began: float, clock: Callable[[], float]
) -> None:
    if out is None:
        return
    count = store.count_by_status  # type: ignore[attr-defined]
    while True:
        await asyncio.sleep(0.5)
        counts = await count()
        parts = ", ".join(f"{s.value} {n}" for s, n in sorted(counts.items()) if n)
        print(f"[{clock() - began:6.1f}s] {parts}", file=out, flush=True)
