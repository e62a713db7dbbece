"""A small order scenario run in a subprocess by the crash-injection tests.

Two orders: one completes, one is declined at payment and compensated. Starts are idempotent
(keyed by order id), so running the script again after a crash continues the same sagas.
Environment: SAGAKIT_CRASH_AT / SAGAKIT_CRASH_WHEN (see sagakit.testing.faults).
"""

from __future__ import annotations

import asyncio
import json
import sys

from sagakit import Worker, open_store
from sagakit.examples.orders import DECLINED_CARD, Order, app, create_ledgers, order_saga
from sagakit.ports import ORCHESTRATOR
from sagakit.testing.faults import FaultyStore, FaultyTransport, crash_plan_from_env
from sagakit.transport import MemoryTransport

ORDERS = [
    Order("order-ok", "SKU-1", 1, 1500, "tok_visa"),
    Order("order-declined", "SKU-2", 2, 2500, DECLINED_CARD),
]
SOURCES = [ORCHESTRATOR, *app.participants]


async def main(url: str) -> None:
    plan = crash_plan_from_env()
    inner = open_store(url, owner=True)
    store = FaultyStore(inner, plan)
    await store.transaction(create_ledgers)
    transport = FaultyTransport(MemoryTransport(), plan)
    # A worker started while its crashed predecessor's lease still runs cannot claim that
    # predecessor's sagas yet, and a reply delivered meanwhile is left to the owner's step
    # timeout (the in-process bus has no redelivery; a known limit, see CHANGELOG). The
    # restart waits the lease (0.5 s) out, as a supervisor's restart after a crash would.
    deadline = asyncio.get_running_loop().time() + 5
    while await inner.live_fingerprints() and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # polling the store: a lease's expiry sends no event
    # A short lease: on PostgreSQL a restarted worker takes over its dead predecessor's
    # sagas once that lease has expired.
    async with Worker(
        app, store, transport, rescan_interval=0.05, poll_interval=0.05, lease=0.5
    ) as worker:
        ids = []
        for order in ORDERS:
            handle = await worker.client.start(
                order_saga, order, key=order.order_id, correlation_id=order.order_id
            )
            ids.append(handle.saga_id)
        for saga_id in ids:
            await worker.wait_settled(saga_id, timeout=30)
        # Quiescence: every outbox row delivered and marked done.
        while any([await inner.pending(source, 1) for source in SOURCES]):  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # polling the store: there is no event to wait on
    await inner.close()
    print(json.dumps({"writes": plan.writes, "ids": ids}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
