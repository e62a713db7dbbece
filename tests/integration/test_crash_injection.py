"""Deterministic crash injection: die at every durable write of a small scenario, restart,
and check that every saga settles as it should with the invariants and ledgers intact."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from sagakit import SagaStatus, open_store
from sagakit.examples.orders import app, check_ledgers
from sagakit.state import HistoryKind
from sagakit.testing import check_invariants
from sagakit.testing.faults import CRASH_EXIT_CODE

SCENARIO = Path(__file__).with_name("crash_scenario.py")
EXPECTED = {"order-ok": SagaStatus.COMPLETED, "order-declined": SagaStatus.FAILED}

pytestmark = pytest.mark.slow


def run_scenario(url: str, crash_at: int | None, when: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAKIT_CRASH")}
    if crash_at is not None:
        env["SAGAKIT_CRASH_AT"] = str(crash_at)
        env["SAGAKIT_CRASH_WHEN"] = when
    return subprocess.run(
        [sys.executable, str(SCENARIO), url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def verify(url: str) -> list[str]:
    store = open_store(url, create=False)
    problems: list[str] = []
    try:
        for order_id, expected in EXPECTED.items():
            found = await store.find_by_key("order_fulfillment", order_id)
            if found is None:
                problems.append(f"{order_id}: no instance")
                continue
            if found.status is not expected:
                problems.append(f"{order_id}: {found.status.value}, expected {expected.value}")
            definition = app.definition(found.saga_type, found.version)
            assert definition is not None
            history = await store.history(found.saga_id)
            problems += [f"{order_id}: {v}" for v in check_invariants(found, definition, history)]
            # Recovery redelivers what was committed at once: no step should have to wait
            # for its timeout to get an answer that a participant had already committed.
            timed_out = [h.step for h in history if h.kind is HistoryKind.TIMED_OUT]
            if timed_out:
                problems.append(f"{order_id}: waited for a timeout on {timed_out}")
        problems += await store.transaction(check_ledgers)
        if await store.next_due() is not None:
            problems.append("timers left behind")
    finally:
        await store.close()
    return problems


@pytest.fixture(params=["sqlite", "postgres"])
def new_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    """A fresh database URL per run of the scenario, on each store."""
    if request.param == "sqlite":
        return lambda name: f"sqlite:///{tmp_path}/{name}.db"
    make = request.getfixturevalue("pg_schemas")
    return lambda name: make()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("when", ["before", "after"])
def test_crash_at_every_durable_write(new_url: Callable[[str], str], when: str) -> None:
    clean = run_scenario(new_url("clean"), None, when)
    assert clean.returncode == 0, clean.stderr
    writes = json.loads(clean.stdout)["writes"]
    assert writes > 20  # the scenario really has many durable writes to crash at
    crashed_at = []
    for k in range(1, writes + 10):
        url = new_url(f"crash-{when}-{k}")
        first = run_scenario(url, k, when)
        if first.returncode == 0:
            break  # the run needed fewer writes than k this time
        assert first.returncode == CRASH_EXIT_CODE, first.stderr
        crashed_at.append(k)
        second = run_scenario(url, None, when)
        assert second.returncode == 0, f"recovery after crash {when} write {k}: {second.stderr}"
        problems = asyncio.run(verify(url))
        assert not problems, f"crash {when} write {k}: {problems}"
    assert len(crashed_at) >= writes - 5
