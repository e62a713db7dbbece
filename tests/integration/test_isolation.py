"""One bad item never fails its neighbours (issue 10, §3), on SQLite and PostgreSQL.

A store that refuses the write of one instance (here: any state holding a marker value, as a
real store refuses a value no check caught) must not fail the batch it came in: the others
commit in the same batch or the next, the culprit ends with its reason, no future is left
unanswered and no retry loop spins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from sagakit import (
    App,
    Command,
    Participant,
    ParticipantTx,
    Saga,
    SagaStatus,
    StepContext,
    StorageError,
    Worker,
    open_store,
)
from sagakit.errors import StoreRefused
from sagakit.ports import Batch, Store
from sagakit.state import HistoryKind, SagaInstance, StepStatus
from sagakit.storage.rows import state_text
from sagakit.worker import committer as committer_module

MARKER = "refused-by-the-store"


class RefusingStore:
    """A real store that refuses every commit carrying ``MARKER`` in a state or message, as
    the adapters report a value their database refuses (a data error), while it takes
    everything else."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.refusals = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def commit(self, batch: Batch) -> list[bool]:
        for transition in batch.transitions:
            texts = [transition.state or ""] + [m.body.decode() for m in transition.outbox]
            if any(MARKER in text for text in texts):
                self.refusals += 1
                raise StoreRefused("value refused by its column type")
        return await self._inner.commit(batch)


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'isolation.db'}"
    make: Callable[[], str] = request.getfixturevalue("pg_schemas")
    return make()


def gated_saga(gate: asyncio.Event, compensated: list[str]) -> Saga[Any]:
    async def reserve(ctx: StepContext[Any]) -> object:
        await gate.wait()  # every saga answers at once: their answers share one batch
        if ctx.data["poison"]:
            return {"note": MARKER}
        return {"ok": ctx.data["n"]}

    async def release(ctx: StepContext[Any]) -> None:
        compensated.append(str(ctx.data["n"]))

    async def ship(ctx: StepContext[Any]) -> str:
        return "shipped"

    saga: Saga[Any] = Saga("isolated")
    saga.local("reserve", reserve, compensation=release)
    saga.local("ship", ship, compensation=release)
    return saga


async def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - polls the worker's state, nothing to await
            await asyncio.sleep(0.01)


async def test_a_refused_local_answer_fails_its_saga_alone(url: str) -> None:
    gate = asyncio.Event()
    compensated: list[str] = []
    saga = gated_saga(gate, compensated)
    store = RefusingStore(open_store(url, owner=True))
    try:
        async with Worker(App(sagas=[saga]), cast(Store, store)) as worker:
            handles = [
                await worker.client.start(saga, {"n": n, "poison": n == 7}) for n in range(20)
            ]
            await wait_for(lambda: worker.local_runs == 20)  # all twenty wait at the gate
            commits = worker.commits
            gate.set()
            results = [await h.result(timeout=20) for h in handles]
            assert worker.local_runs == 0  # no run left retrying its answer
            # The batch was committed in parts, not once per saga nor retried in a loop.
            assert worker.commits - commits < 40
            history = await worker.client.history(handles[7].saga_id)
    finally:
        await store.close()
    poisoned = results[7]
    assert poisoned.status is SagaStatus.FAILED
    assert poisoned.steps[0].status is StepStatus.COMPENSATED
    assert "could not be stored" in (poisoned.steps[0].error or "")
    assert "value refused by its column type" in (poisoned.steps[0].error or "")
    assert compensated == ["7"]  # its outcome was unknown: compensated, with its key
    assert all(r.status is SagaStatus.COMPLETED for n, r in enumerate(results) if n != 7)
    assert store.refusals >= 1
    replies = [h for h in history if h.kind is HistoryKind.REPLY]
    assert all(h.detail.get("result") is None for h in replies)


async def test_a_refused_start_is_refused_to_its_caller_and_others_start(url: str) -> None:
    async def step(ctx: StepContext[Any]) -> str:
        return "done"

    saga: Saga[Any] = Saga("started")
    saga.local("only", step, compensation=step)
    store = RefusingStore(open_store(url, owner=True))
    try:
        async with Worker(App(sagas=[saga]), cast(Store, store)) as worker:
            starts = [
                worker.client.start(saga, {"n": n, "note": MARKER if n == 3 else ""}, key=f"k{n}")
                for n in range(10)
            ]
            outcomes = await asyncio.gather(*starts, return_exceptions=True)
            refused = outcomes[3]
            assert isinstance(refused, StorageError)
            assert "refused" in str(refused)
            for n, outcome in enumerate(outcomes):
                if n != 3:
                    assert not isinstance(outcome, BaseException), outcome
                    instance = await outcome.result(timeout=20)
                    assert instance.status is SagaStatus.COMPLETED
            # Nothing of the refused start was kept: the same key starts cleanly afterwards.
            again = await worker.client.start(saga, {"n": 3, "note": ""}, key="k3x")
            assert (await again.result(timeout=20)).status is SagaStatus.COMPLETED
    finally:
        await store.close()


async def test_a_refused_participant_reply_is_dead_lettered_and_its_attempt_ends(
    url: str,
) -> None:
    shop = Participant("shop")

    @shop.command("reserve")
    async def reserve(tx: ParticipantTx, cmd: Command) -> object:
        return {"note": MARKER} if cast(dict[str, Any], cmd.payload)["poison"] else {"ok": True}

    @shop.command("release")
    async def release(tx: ParticipantTx, cmd: Command) -> None:
        return None

    saga: Saga[Any] = Saga("remote_isolated")
    saga.remote("reserve", participant="shop", command="reserve", compensation="release")
    store = RefusingStore(open_store(url, owner=True))
    try:
        app = App(sagas=[saga], participants=[shop])
        async with Worker(app, cast(Store, store)) as worker:
            good = await worker.client.start(saga, {"poison": False})
            bad = await worker.client.start(saga, {"poison": True})
            bad_instance = await bad.result(timeout=30)
            good_instance = await good.result(timeout=30)
            letters = await worker.client.dead_letters()
    finally:
        await store.close()
    assert good_instance.status is SagaStatus.COMPLETED
    # Each attempt's reply is refused: the attempts end as unknown at once (not at their
    # timeout), the policy is spent, and the step is compensated.
    assert bad_instance.status is SagaStatus.FAILED
    assert "could not be stored" in (bad_instance.steps[0].error or "")
    assert any("refused this reply" in letter.reason for letter in letters)


async def test_an_item_that_cannot_be_encoded_while_its_batch_is_prepared_fails_alone(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The last line of defence before a commit: a state the encoder refuses (no value check
    # lets one through today, so the encoder is made to refuse one) takes only its own saga
    # out of the batch being prepared; nothing it staged is left behind.
    real = state_text

    def refusing(instance: SagaInstance) -> str:
        text = real(instance)
        if MARKER in text:
            raise TypeError("cannot encode this state")
        return text

    monkeypatch.setattr(committer_module, "state_text", refusing)
    gate = asyncio.Event()
    compensated: list[str] = []
    saga = gated_saga(gate, compensated)
    store = open_store(url, owner=True)
    try:
        async with Worker(App(sagas=[saga]), store) as worker:
            handles = [
                await worker.client.start(saga, {"n": n, "poison": n == 4}) for n in range(12)
            ]
            await wait_for(lambda: worker.local_runs == 12)
            gate.set()
            results = [await h.result(timeout=20) for h in handles]
            assert worker.local_runs == 0
            assert worker.committer.staged(handles[4].saga_id) is None
    finally:
        await store.close()
    assert results[4].status is SagaStatus.FAILED
    assert "cannot encode this state" in (results[4].steps[0].error or "")
    assert compensated == ["4"]
    assert all(r.status is SagaStatus.COMPLETED for n, r in enumerate(results) if n != 4)
