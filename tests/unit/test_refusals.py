"""The search for the one write a store refuses (worker/refusals.py), without a store."""

from __future__ import annotations

import asyncio
import math

from sagakit.definition import Phase
from sagakit.encoding import printable
from sagakit.errors import StorageError, StoreRefused
from sagakit.ports import Batch, CommandResult, CommandState, DeadLetter
from sagakit.transitions import Outcome, Reply
from sagakit.worker.items import Item, Work
from sagakit.worker.refusals import Unit, bisect, refuse


def works(n: int) -> list[Work]:
    return [Work(f"s{i}", None, None, False) for i in range(n)]


class FakeStore:
    def __init__(self, refused: set[str], *, down_after: int = 1000) -> None:
        self.refused = refused
        self.down_after = down_after
        self.commits: list[list[str]] = []

    async def commit(self, batch: Batch) -> list[bool]:
        ids = [t.saga_id for t in batch.transitions]
        if len(self.commits) >= self.down_after:
            raise StorageError("connection lost")
        if any(i in self.refused for i in ids) or ("side" in self.refused and batch.outbox_done):
            raise StoreRefused("refused")
        self.commits.append(ids)
        return [True] * len(ids)


async def test_one_culprit_among_many_is_found_in_a_logarithmic_number_of_commits() -> None:
    units: list[Unit] = [*works(64)]
    store = FakeStore({"s37"})
    written, refused, down = await bisect(store.commit, units, StoreRefused("first"))
    assert down is None
    assert [u.saga_id for u, _ in refused if isinstance(u, Work)] == ["s37"]
    assert len(written) == 63
    assert sum(len(c) for c in store.commits) == 63  # every other write committed once
    assert len(store.commits) <= 2 * math.ceil(math.log2(64))


async def test_every_culprit_is_found_and_the_records_of_no_instance_are_a_part() -> None:
    side = Batch(outbox_done=["m1"])
    units: list[Unit] = [*works(10), side]
    store = FakeStore({"s0", "s9", "side"})
    written, refused, down = await bisect(store.commit, units, StoreRefused("x"))
    assert down is None
    found = {u.saga_id if isinstance(u, Work) else "side" for u, _ in refused}
    assert found == {"s0", "s9", "side"}
    assert len(written) == 8


async def test_a_store_that_stops_answering_ends_the_search() -> None:
    store = FakeStore({"s1"}, down_after=1)
    written, refused, down = await bisect(store.commit, [*works(4)], StoreRefused("x"))
    assert refused == []  # a store that is down refuses nothing: its items are retried
    assert isinstance(down, StorageError) and not isinstance(down, StoreRefused)
    assert len(written) == 2


def test_a_refused_local_answer_becomes_a_non_retryable_error_once() -> None:
    loop = asyncio.new_event_loop()
    try:
        work = works(1)[0]
        future = loop.create_future()
        reply = Reply("pay", Phase.ACTION, 1, Outcome.SUCCESS, "r")
        work.items.append(Item("s0", event=reply, future=future))
        side = Batch()
        again = refuse(work, StorageError("bad \ud800 value\x00"), 0.0, side)
        assert len(again) == 1 and again[0].rewritten == 1 and again[0].future is future
        error = again[0].event
        assert isinstance(error, Reply) and error.outcome is Outcome.ERROR
        assert error.retryable is False
        assert "\\ud800" in (error.error or "") and "\x00" not in (error.error or "")
        assert side.dead_letters == []  # a local answer has no message to dead-letter
        assert not future.done()

        # Refused again: a bare error; a third time, the source is told, never a loop.
        work.items[:] = again
        second = refuse(work, StorageError("again"), 0.0, side)
        assert second[0].rewritten == 2
        assert second[0].event.error == "its answer could not be stored"  # type: ignore[union-attr]
        work.items[:] = second
        assert refuse(work, StorageError("again"), 0.0, side) == []
        assert isinstance(future.exception(), StoreRefused)
    finally:
        loop.close()


def test_a_refused_reply_is_dead_lettered_and_its_attempt_ends_unknown() -> None:
    work = works(1)[0]
    reply = Reply("pay", Phase.ACTION, 2, Outcome.SUCCESS, "r")
    work.items.append(Item("s0", event=reply, body=b"{}", source="sagakit.replies"))
    side = Batch()
    again = refuse(work, StorageError("nope"), 5.0, side)
    assert [d.reason for d in side.dead_letters] == [
        "the store refused this reply: StorageError: nope"
    ]
    assert side.dead_letters[0] == DeadLetter(
        "sagakit.replies", side.dead_letters[0].reason, b"{}", at=5.0
    )
    error = again[0].event
    assert isinstance(error, Reply) and error.retryable and error.attempt == 2


def test_a_refused_command_is_refused_with_the_reason_and_several_items_go_one_by_one() -> None:
    work = works(1)[0]
    work.items.append(Item("s0", command_id=9))
    side = Batch()
    assert refuse(work, StorageError("no"), 0.0, side) == []
    assert side.commands[0].id == 9
    assert side.commands[0].state is CommandState.REFUSED
    assert isinstance(side.commands[0], CommandResult)

    crowded = works(1)[0]
    crowded.items.extend([Item("s0", command_id=1), Item("s0", command_id=2)])
    again = refuse(crowded, StorageError("no"), 0.0, Batch())
    assert [i.command_id for i in again] == [1, 2] and all(i.alone for i in again)


def test_printable_text_holds_no_surrogate_and_no_nul() -> None:
    text = printable("caf\ud800 \x00 ok é")
    text.encode("utf-8")  # would raise on a lone surrogate
    assert "\x00" not in text and text.endswith("ok é")
