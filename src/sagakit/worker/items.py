"""What the worker's roles hand each other: the committer's items, its queue, its batches.

Every source (replies, timers, operator commands, local step runs, starts) puts an
:class:`Item` on the one :class:`Inbox`; the committer takes what waits, decides each item
against its instance (a :class:`Work` per instance) and commits them as one batch.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import Protocol

from sagakit.definition import Phase, SagaDefinition
from sagakit.encoding import JSON, digest_of
from sagakit.ports import Batch, DeadLetter, InstanceWrite, Timer
from sagakit.state import SagaInstance
from sagakit.transitions import Dispatch, Event


@dataclass(frozen=True)
class Start:
    definition: SagaDefinition
    data: JSON
    key: str | None
    correlation_id: str | None
    digest: str
    #: The fingerprint of the definition the starter holds: a start whose definition differs
    #: from the worker's under the same name and version is refused (None: not said, as
    #: by a start an older sagakit queued).
    fingerprint: str | None = None


class Answer(Protocol):
    """How the committer tells an item's source what became of it: a future, or a local
    step's answer object (see ``local_steps.LocalAnswer``)."""

    def done(self) -> bool: ...

    def set_result(self, result: object, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


@dataclass
class Item:
    saga_id: str
    event: Event | None = None
    start: Start | None = None
    timer: Timer | None = None
    command_id: int | None = None
    body: bytes | None = None
    #: The id of the message ``body`` holds: the causation id of the commands it leads to.
    message_id: str | None = None
    source: str = ""
    dead_letter: DeadLetter | None = None
    future: Answer | None = None
    result: object = None  # what the future is answered with (a start: the saga id)
    #: Decided in a batch of its own instance's items alone: one of the items it came with
    #: made the store refuse their write, and which one is found by deciding them one by one.
    alone: bool = False
    #: How often this answer was rewritten after the store refused it: first into an error
    #: carrying the reason, then (the reason itself may hold what was refused) into a bare
    #: error; refused a third time, it is dropped and reported.
    rewritten: int = 0


#: A local run: saga id, step, phase, attempt. One run each.
LocalKey = tuple[str, str, Phase, int]


class Work:
    """One instance's share of a batch."""

    __slots__ = (
        "changed",
        "dead_letters",
        "expected",
        "instance",
        "items",
        "local_runs",
        "on_staged",
        "saga_id",
        "transition",
    )

    def __init__(
        self, saga_id: str, instance: SagaInstance | None, expected: int | None, on_staged: bool
    ) -> None:
        self.saga_id = saga_id
        self.instance = instance
        self.expected = expected
        #: Decided on top of the batch in flight (its staged state), not a committed state.
        self.on_staged = on_staged
        self.changed = False
        self.transition = InstanceWrite(saga_id)
        self.items: list[Item] = []
        self.local_runs: list[Dispatch] = []
        #: Messages this work's events were refused for (in the batch's dead letters too).
        self.dead_letters: list[DeadLetter] = []


@dataclass
class Prepared:
    """A decided batch, waiting for its commit."""

    batch: Batch
    order: list[Work]
    done: list[tuple[str, asyncio.Future[object]]]
    loose: list[Item]

    def items(self) -> list[Item]:
        return [*self.loose, *(item for work in self.order for item in work.items)]


class Inbox:
    """The committer's queue: put from anywhere on the loop, take what waits in one go.

    asyncio.Queue keeps per-item books (bounded size, join()) that this queue does not need,
    and it is passed every event of every saga.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: collections.deque[Item] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Item) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def submit(self, item: Item) -> asyncio.Future[object]:
        """Queue ``item``; the future is answered once it is committed (or refused)."""
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        item.future = future
        self.put_nowait(item)
        return future

    async def take(self, limit: int) -> list[Item]:
        """At least one item, at most ``limit``, in the order they were put."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        items = self._items
        if len(items) <= limit:
            self._items = collections.deque()
            return list(items)
        return [items.popleft() for _ in range(limit)]

    def empty(self) -> bool:
        return not self._items

    def get_nowait(self) -> Item:
        return self._items.popleft()


#: Wakes the committer to write pending "outbox done" marks.
FLUSH = Item("")
#: Tells the committer to commit what it holds and end.
STOP_SOURCE = "stop"


def input_digest(data: JSON, key: str | None) -> str:
    # Only a keyed start is ever compared with another (Semantics 15): hashing the input of
    # every other start would be work for nothing.
    return digest_of(data) if key is not None else ""


def answer(item: Item, exc: BaseException) -> None:
    """Tell ``item``'s source that it failed with ``exc`` (if it was not told already)."""
    if item.future is not None and not item.future.done():
        item.future.set_exception(exc)
