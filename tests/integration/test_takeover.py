"""Three worker processes on one PostgreSQL run 1,000 order sagas with 20 % declined cards.
One is SIGKILLed mid-run; another is SIGSTOPped past its lease (the others take its sagas
over) and then SIGCONTed: it must not overwrite what they did meanwhile. Every saga ends as
its card says, the ledgers hold, and no effect is applied twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sagakit import Client, SagaStatus
from sagakit.examples.orders import DECLINED_CARD, Order, check_ledgers, order_saga
from sagakit.state import HistoryKind
from sagakit.storage.postgres import PostgresStore
from sagakit.testing import check_invariants

pytestmark = pytest.mark.slow

SAGAS = 1000
LEASE = 2.0


def start_worker(url: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sagakit",
                "worker",
                "--app",
                "sagakit.examples.orders:app",
                "--db",
                url,
                "--lease",
                str(LEASE),
                "--log-level",
                "WARNING",
            ],
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )


async def wait_for(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_kill_and_pause_workers_under_load(pg_url: str, tmp_path: Path) -> None:
    store = PostgresStore(pg_url, owner=True)
    await store.migrate()
    workers = [start_worker(pg_url, tmp_path / f"worker{i}.log") for i in range(3)]
    try:

        async def running() -> bool:
            return all(b"running" in (tmp_path / f"worker{i}.log").read_bytes() for i in range(3))

        await wait_for(running, 30, "three workers to start")
        client = Client(store)
        declined = set()
        for i in range(SAGAS):
            card = DECLINED_CARD if i % 5 == 0 else "tok_visa"
            if card == DECLINED_CARD:
                declined.add(f"order-{i}")
            order = Order(f"order-{i}", f"SKU-{i % 7}", 1 + i % 3, 1000 + i, card)
            await client.start(order_saga, order, key=order.order_id, correlation_id=order.order_id)

        async def settled_count() -> int:
            counts = await store.count_by_status()
            return sum(n for s, n in counts.items() if s.settled)

        async def some_progress() -> bool:
            return await settled_count() >= SAGAS * 0.2

        await wait_for(some_progress, 60, "20 % of the sagas to settle")
        workers[0].send_signal(signal.SIGKILL)  # dies mid-run
        workers[0].wait(timeout=10)
        os.kill(workers[1].pid, signal.SIGSTOP)  # paused past its lease
        paused_at = time.monotonic()

        async def taken_over() -> bool:
            return time.monotonic() - paused_at > LEASE * 2.5

        await wait_for(taken_over, 30, "the pause to outlast the lease")
        os.kill(workers[1].pid, signal.SIGCONT)

        async def all_settled() -> bool:
            return await settled_count() == SAGAS

        await wait_for(all_settled, 240, "every saga to settle")
        problems = await store.transaction(check_ledgers)
        counts = await store.count_by_status()
        wrong: list[str] = []
        takeovers: list[str] = []
        for i in range(SAGAS):
            found = await store.find_by_key(order_saga.name, f"order-{i}")
            assert found is not None
            expected = SagaStatus.FAILED if f"order-{i}" in declined else SagaStatus.COMPLETED
            if found.status is not expected:
                wrong.append(f"order-{i}: {found.status.value} ({found.status_reason})")
            history = await store.history(found.saga_id)
            wrong += [f"order-{i}: {v}" for v in check_invariants(found, order_saga, history)]
            takeovers += [
                str(e.detail["reason"]) for e in history if e.kind is HistoryKind.TAKEOVER
            ]
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in workers:
            proc.wait(timeout=30)
        await store.close()
    assert not problems, problems[:10]
    assert counts.get(SagaStatus.STUCK, 0) == 0
    assert not wrong, wrong[:10]
    # The history says which worker took what over, and why: the killed worker's sagas
    # and the paused one's were taken over once their lease had expired.
    assert "lease expired" in takeovers
    assert workers[1].returncode == 0  # the paused worker came back and stopped cleanly
    assert workers[2].returncode == 0
