"""The worker: inbound message, timer or command -> decide() -> one commit -> effects.

One committer task owns every state change. It takes all the events that are waiting (up to
``max_batch``), applies decide() to each against the instances it holds, and commits the whole
batch in one transaction: new states, history, outbox messages, timers, consumed messages and
command results together (group commit: at low load a batch is one event and commits at once;
under load batches grow while the previous commit is in flight). Only after the commit does it
act: the relay publishes the new messages, local steps run, timers are armed. A crash anywhere
loses nothing: what was committed is recovered from the outbox, the timers and the command
queue on restart; what was not committed is redone by its source.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sagakit.app import App
from sagakit.client import Client
from sagakit.deadlines import Deadlines
from sagakit.definition import Local, Phase, Remote, SagaDefinition, StepContext
from sagakit.encoding import JSON, digest_of, from_json, to_json
from sagakit.errors import (
    ConcurrencyConflict,
    EncodingError,
    IdempotencyConflict,
    MessageRejected,
    SagaNotFound,
    StepError,
    StepFailed,
    StorageError,
)
from sagakit.ids import new_id
from sagakit.messages import MAX_MESSAGE_BYTES, Envelope, MessageKind, decode, encode
from sagakit.participant import ParticipantRunner
from sagakit.ports import (
    ORCHESTRATOR,
    Batch,
    CommandResult,
    CommandState,
    DeadLetter,
    OutboxMessage,
    QueuedCommand,
    Store,
    Timer,
    TimerOp,
    TimerOpKind,
    Transition,
    Transport,
)
from sagakit.relay import Relay
from sagakit.retention import RetentionPolicy
from sagakit.state import (
    CompensationStatus,
    HistoryEntry,
    HistoryKind,
    SagaInstance,
    StepStatus,
    evolve,
)
from sagakit.storage.rows import state_text
from sagakit.transitions import (
    Abort,
    Begin,
    CancelTimers,
    Decision,
    Dispatch,
    Event,
    Outcome,
    Reply,
    Resolve,
    Retry,
    SetTimer,
    TimerFired,
    decide,
    idempotency_key,
    new_instance,
)
from sagakit.transport.memory import MemoryTransport

log = logging.getLogger("sagakit.worker")


class DefinitionMissing(StorageError):
    """The instance runs a definition (type, version, fingerprint) this worker does not have."""


@dataclass(frozen=True)
class _Start:
    definition: SagaDefinition
    data: JSON
    key: str | None
    correlation_id: str | None
    digest: str


class _Answer(Protocol):
    """How the committer tells an item's source what became of it: a future, or a
    :class:`_LocalAnswer`."""

    def done(self) -> bool: ...

    def set_result(self, result: object, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


@dataclass
class _Item:
    saga_id: str
    event: Event | None = None
    start: _Start | None = None
    timer: Timer | None = None
    command_id: int | None = None
    body: bytes | None = None
    source: str = ""
    dead_letter: DeadLetter | None = None
    future: _Answer | None = None
    result: object = None  # what the future is answered with (a start: the saga id)


_LocalKey = tuple[str, str, Phase, int]  # saga id, step, phase, attempt: one run each


class _LocalAnswer:
    """The committer's answer to a local step's reply, taken without a loop callback.

    A future would wake the step's task once more per step only to let it end. Committed:
    the run is over. Not committed: the reply (not the step) is submitted again, as long as
    this worker still owns the instance (see ``Worker._resubmit_local``).
    """

    __slots__ = ("_done", "_key", "_reply", "_worker")

    def __init__(self, worker: Worker, key: _LocalKey, reply: Reply) -> None:
        self._worker, self._key, self._reply = worker, key, reply
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, result: object, /) -> None:
        self._done = True
        self._worker._local_tasks.pop(self._key, None)

    def set_exception(self, exception: BaseException, /) -> None:
        self._done = True
        self._worker._local_failed(self._key, self._reply, exception)


class _Work:
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
        self.transition = Transition(saga_id)
        self.items: list[_Item] = []
        self.local_runs: list[Dispatch] = []
        #: Messages this work's events were refused for (in the batch's dead letters too).
        self.dead_letters: list[DeadLetter] = []


@dataclass
class _Prepared:
    """A decided batch, waiting for its commit."""

    batch: Batch
    order: list[_Work]
    done: list[tuple[str, asyncio.Future[object]]]
    loose: list[_Item]

    def items(self) -> list[_Item]:
        return [*self.loose, *(item for work in self.order for item in work.items)]


class _Inbox:
    """The committer's queue: put from anywhere on the loop, take what waits in one go.

    asyncio.Queue keeps per-item books (bounded size, join()) that this queue does not need,
    and it is passed every event of every saga.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: collections.deque[_Item] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: _Item) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def take(self, limit: int) -> list[_Item]:
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

    def get_nowait(self) -> _Item:
        return self._items.popleft()


_FLUSH = _Item("")  # wakes the committer to write pending "outbox done" marks


class Worker:
    """Runs an app's sagas and participants on a store and a transport.

    ::

        async with Worker(app, store) as worker:
            handle = await worker.client.start(order_saga, {"order_id": "o-1"})
            instance = await handle.result(timeout=10)
    """

    def __init__(
        self,
        app: App,
        store: Store,
        transport: Transport | None = None,
        *,
        reply_queue: str = "sagakit.replies",
        max_batch: int = 1000,
        poll_interval: float = 0.2,
        rescan_interval: float = 2.0,
        lease: float = 10.0,
        retention: RetentionPolicy | None = None,
        retention_interval: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.store = store
        self.transport: Transport = transport or MemoryTransport()
        self.reply_queue = reply_queue
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self._max_batch = max_batch
        self._poll_interval = poll_interval
        self._local_clock = clock
        self._offset = 0.0  # the store's clock minus ours: decisions use the store's time
        self._lease = lease
        self._retention = retention
        self._retention_interval = retention_interval
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._queue = _Inbox()
        self._cache: dict[str, SagaInstance] = {}
        # Decided, not yet committed (the batch in flight): read before the cache.
        self._staged: dict[str, SagaInstance] = {}
        self._staged_keys: dict[tuple[str, str], SagaInstance] = {}
        # (saga id, revision) of staged states the last commit did not write; see _finish.
        self._lost: set[tuple[str, int]] = set()
        self._watchers: dict[str, list[asyncio.Future[SagaInstance]]] = {}
        self._done_pending: list[tuple[str, asyncio.Future[object]]] = []
        self._timers_in_flight: set[tuple[str, str, float]] = set()
        self._commands_in_flight: set[int] = set()
        self._orphans: set[str] = set()
        self._timer_wake = asyncio.Event()
        self._command_wake = asyncio.Event()
        self._claim_wake = asyncio.Event()
        self._command_cursor = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._committer: asyncio.Task[None] | None = None
        self._deadlines = Deadlines()
        # Local runs by what they run (one run per attempt), until their reply is committed.
        self._local_tasks: dict[_LocalKey, asyncio.Task[None]] = {}
        self._id_prefix = uuid.uuid4().hex[:16]
        self._ids = itertools.count(1)
        self._relay = Relay(
            store, ORCHESTRATOR, self._deliver, self._mark_done, rescan_interval=rescan_interval
        )
        self._participants = [
            ParticipantRunner(p, store, self.transport, rescan_interval=rescan_interval)
            for p in app.participants.values()
        ]
        self._stopped = asyncio.Event()
        self._running = False
        self.client = Client(store, worker=self)
        self.commits = 0
        self.transitions_committed = 0

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._committer = asyncio.create_task(self._commit_loop(), name="sagakit-committer")
        try:
            await self.store.attach(
                self.worker_id, self._lease, [d.fingerprint for d in self.app.definitions]
            )
            await self.store.listen(self._wake)
            await self._sync_clock()
            # Claim before anything is delivered: a reply republished after a restart must
            # find its instance owned by this worker, not by its dead predecessor.
            await self._take_over(rescan=False)
            await self.transport.subscribe(self.reply_queue, self._on_reply)
            for runner in self._participants:
                await runner.start()
        except BaseException:
            self._committer.cancel()
            self._running = False
            raise
        self._relay.start()
        self._tasks = [
            asyncio.create_task(self._timer_loop(), name="sagakit-timers"),
            asyncio.create_task(self._command_loop(), name="sagakit-commands"),
            asyncio.create_task(self._lease_loop(), name="sagakit-lease"),
        ]
        if self._retention is not None:
            self._tasks.append(asyncio.create_task(self._retention_loop(self._retention)))
        log.info("worker started with %d saga definition(s)", len(self.app.definitions))

    async def stop(self) -> None:
        """Stop after the commit in progress; what is not committed is redone on restart."""
        if not self._running:
            return
        self._running = False
        for task in [*self._tasks, *self._local_tasks.values()]:
            task.cancel()
        await self._relay.stop()
        await self.transport.unsubscribe(self.reply_queue)
        for runner in self._participants:
            await runner.stop()
        # gather, not a suppressing loop: a cancellation of stop() itself must propagate.
        await asyncio.gather(*self._tasks, *self._local_tasks.values(), return_exceptions=True)
        self._local_tasks.clear()  # runs not committed are run again after a restart
        if self._committer is not None:
            self._queue.put_nowait(_Item("", source="stop"))
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
        # Whatever is still queued was never decided: its callers hear so instead of waiting
        # forever (messages and timers come back on restart; a start may be called again).
        stopped = StorageError("the worker stopped before this was committed")
        while not self._queue.empty():
            left = self._queue.get_nowait()
            if left.future is not None and not left.future.done():
                left.future.set_exception(stopped)
        for _, future in self._done_pending:
            if not future.done():
                future.set_exception(stopped)
        self._done_pending = []
        with contextlib.suppress(Exception):
            await self.store.detach()
        self._stopped.set()
        log.info("worker stopped")

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # -- submitting work ------------------------------------------------------------------

    def _submit(self, item: _Item) -> asyncio.Future[object]:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        item.future = future
        self._queue.put_nowait(item)
        return future

    def _submit_local(self, key: _LocalKey, reply: Reply) -> None:
        self._queue.put_nowait(_Item(key[0], event=reply, future=_LocalAnswer(self, key, reply)))

    async def start_saga(
        self,
        definition: SagaDefinition,
        data: object,
        *,
        key: str | None = None,
        correlation_id: str | None = None,
    ) -> str:
        """Create and begin an instance; returns its id once that is committed.

        With ``key`` the start is idempotent: the same key and input return the existing
        instance's id, the same key with other input raises IdempotencyConflict (Semantics 15).
        """
        if self.app.definition(definition.name, definition.version) is None:
            raise SagaNotFound(
                f"saga {definition.name!r} v{definition.version} is not registered with this worker"
            )
        payload = to_json(data, path="saga data")
        start = _Start(definition, payload, key, correlation_id, _input_digest(payload, key))
        return str(await self._submit(_Item(new_id(), start=start)))

    async def wait_settled(self, saga_id: str, timeout: float | None = None) -> SagaInstance:
        """Wait until the instance is completed, failed or stuck."""
        future: asyncio.Future[SagaInstance] = asyncio.get_running_loop().create_future()
        self._watchers.setdefault(saga_id, []).append(future)
        try:
            instance = self._cache.get(saga_id) or await self.store.get(saga_id)
            if instance is None:
                raise SagaNotFound(f"no saga instance {saga_id}")
            if instance.status.settled:
                return instance
            if timeout is None:
                return await future
            async with asyncio.timeout(timeout):
                return await future
        finally:
            watchers = self._watchers.get(saga_id, [])
            if future in watchers:
                watchers.remove(future)
            if not watchers:
                self._watchers.pop(saga_id, None)

    def _clock(self) -> float:
        return self._local_clock() + self._offset

    async def _sync_clock(self) -> None:
        # Semantics 13: due times are judged by the store's clock; computing them from a
        # skewed worker clock would move every deadline by the skew.
        before = self._local_clock()
        store_now = await self.store.now()
        self._offset = store_now - (before + self._local_clock()) / 2

    def _next_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):x}"

    def _wake(self) -> None:
        # Another process queued work, or a worker stopped and released its sagas.
        self._command_wake.set()
        self._timer_wake.set()
        self._claim_wake.set()

    def poke(self) -> None:
        """Look at the command queue now (used by an in-process client)."""
        self._command_wake.set()

    # -- the committer --------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        # Pipelined: batch N+1 is decided while batch N's commit is in flight (against the
        # states N wrote, held in self._staged). N+1 commits only after N, and its effects
        # act only after its own commit; what N+1 decided on a state N did not write is
        # dropped before N+1 commits (see _finish).
        in_flight: asyncio.Task[None] | None = None
        try:
            while True:
                items = await self._queue.take(self._max_batch)
                stop = any(i.source == "stop" for i in items)
                items = [i for i in items if i.source != "stop"]
                try:
                    prepared = await self._prepare(items)
                except Exception as exc:  # a read failed: the sources retry, nothing is lost
                    self._failed(items, [], exc)
                    prepared = None
                if in_flight is not None:
                    await self._settle(in_flight)
                    in_flight = None
                if prepared is not None:
                    in_flight = asyncio.create_task(self._finish(prepared))
                if stop:
                    if in_flight is not None:
                        await self._settle(in_flight)
                    return
        finally:
            if in_flight is not None and not in_flight.done():
                in_flight.cancel()

    @staticmethod
    async def _settle(task: asyncio.Task[None]) -> None:
        try:
            await task
        except asyncio.CancelledError:
            raise
        except Exception:  # the committer must outlive any bug after a commit
            log.exception("unexpected error after a commit")

    async def _prepare(self, items: list[_Item]) -> _Prepared:
        now = self._clock()
        works: dict[str, _Work] = {}
        batch = Batch()
        keys_in_batch: dict[tuple[str, str], _Work] = {}
        loose: list[_Item] = []  # items that belong to no instance: dead letters, flushes
        for item in items:
            if item.dead_letter is not None or not item.saga_id:
                if item.dead_letter is not None:
                    batch.dead_letters.append(item.dead_letter)
                loose.append(item)
                continue
            work = works.get(item.saga_id)
            if work is None:
                staged = self._staged.get(item.saga_id)
                instance = staged or self._cache.get(item.saga_id)
                if instance is None and item.start is None:
                    instance = await self.store.get(item.saga_id)
                work = _Work(
                    item.saga_id,
                    instance,
                    instance.revision if instance else None,
                    staged is not None,
                )
                works[item.saga_id] = work
            work.items.append(item)
            if item.event is None and item.start is None:
                if item.command_id is not None:
                    batch.commands.append(
                        CommandResult(
                            item.command_id, CommandState.REFUSED, "malformed or unknown command"
                        )
                    )
            elif item.start is not None:
                await self._apply_start(work, item, now, keys_in_batch, works)
            else:
                self._apply_event(work, item, now, batch)
        done = self._done_pending
        self._done_pending = []
        batch.outbox_done = [message_id for message_id, _ in done]
        order: list[_Work] = []
        for work in works.values():
            if work.changed and work.instance is not None:
                # decide() returns a new instance whenever it changes one, held by this work
                # alone until it is staged below: its revision is set in place, not copied.
                work.instance.__dict__["revision"] = (work.expected or 0) + 1
                work.transition.instance = work.instance
                # Encoded here, while the previous batch commits, rather than by the store
                # during this batch's commit (on SQLite, on its writer thread).
                work.transition.state = state_text(work.instance)
                work.transition.expected_revision = work.expected
                self._staged[work.saga_id] = work.instance
                key = work.instance.idempotency_key
                if work.expected is None and key is not None:
                    self._staged_keys[(work.instance.saga_type, key)] = work.instance
            order.append(work)
            batch.transitions.append(work.transition)
        return _Prepared(batch, order, done, loose)

    async def _finish(self, prepared: _Prepared) -> None:
        # A state the previous batch staged but did not write must not be built on: its
        # revision check would not catch it when another worker's claim has meanwhile
        # bumped the stored revision to the very number the lost state had.
        lost, self._lost = self._lost, set()
        # Everything such a decision wrote goes: its state, and its side records too (a fired
        # timer consumed, a message refused), since they were judged on that state.
        doomed = [
            work.on_staged and (work.saga_id, work.expected) in lost for work in prepared.order
        ]
        batch = prepared.batch
        if any(doomed):
            dropped = [work for work, drop in zip(prepared.order, doomed, strict=True) if drop]
            refused = {id(letter) for work in dropped for letter in work.dead_letters}
            batch = dataclasses.replace(
                batch,
                transitions=[
                    work.transition
                    for work, drop in zip(prepared.order, doomed, strict=True)
                    if not drop
                ],
                dead_letters=[d for d in batch.dead_letters if id(d) not in refused],
            )
        try:
            results = await self.store.commit(batch)
        except asyncio.CancelledError:
            self._failed(prepared.items(), prepared.done, StorageError("the worker stopped"))
            raise
        except Exception as exc:  # a store failure: the sources retry, nothing is lost
            log.error("commit of %d transition(s) failed: %s", len(prepared.order), exc)
            self._failed(prepared.items(), prepared.done, exc)
            for work in prepared.order:
                self._unstage(work)
                if work.transition.instance is not None and work.instance is not None:
                    self._lost.add((work.saga_id, work.instance.revision))
            await asyncio.sleep(0.05)
            return
        self.commits += 1
        for _, future in prepared.done:
            if not future.done():
                future.set_result(None)
        for item in prepared.loose:
            if item.future is not None and not item.future.done():
                item.future.set_result(None)
        if any(doomed):
            written = iter(results)
            results = [False if drop else next(written) for drop in doomed]
        self._after_commit(prepared.order, results)

    def _failed(
        self,
        items: list[_Item],
        done: list[tuple[str, asyncio.Future[object]]],
        exc: Exception,
    ) -> None:
        for item in items:
            if item.future is not None and not item.future.done():
                item.future.set_exception(exc)
            self._cache.pop(item.saga_id, None)
        for _, future in done:
            if not future.done():
                future.set_exception(exc)

    def _unstage(self, work: _Work) -> None:
        """Forget what ``work`` staged, unless a later batch staged something newer."""
        instance = work.instance
        if instance is not None and self._staged.get(work.saga_id) is instance:
            del self._staged[work.saga_id]
        if instance is not None and instance.idempotency_key is not None:
            key = (instance.saga_type, instance.idempotency_key)
            if self._staged_keys.get(key) is instance:
                del self._staged_keys[key]

    def _after_commit(self, order: list[_Work], results: list[bool]) -> None:
        earliest: float | None = None
        messages: list[OutboxMessage] = []
        for work, ok in zip(order, results, strict=True):
            self._unstage(work)
            if not ok:
                self._cache.pop(work.saga_id, None)
                if work.instance is not None:
                    self._lost.add((work.saga_id, work.instance.revision))
                conflict = ConcurrencyConflict(f"instance {work.saga_id} changed under this worker")
                for item in work.items:
                    if item.start is not None and item.start.key is not None:
                        # Another worker inserted the same key first: decided again, this
                        # start finds that instance (Semantics 15).
                        self._queue.put_nowait(item)
                    elif item.future is not None and not item.future.done():
                        item.future.set_exception(conflict)
                continue
            self.transitions_committed += 1
            instance = work.instance
            if instance is not None and work.changed:
                if instance.status.settled:
                    self._cache.pop(work.saga_id, None)
                    for watcher in self._watchers.pop(work.saga_id, []):
                        if not watcher.done():
                            watcher.set_result(instance)
                else:
                    self._cache[work.saga_id] = instance
            messages.extend(work.transition.outbox)
            for dispatch in work.local_runs:
                self._spawn_local(work.saga_id, dispatch)
            for op in work.transition.timer_ops:
                if op.kind is TimerOpKind.SET and op.timer is not None:
                    due = op.timer.due_at
                    earliest = due if earliest is None else min(earliest, due)
            for item in work.items:
                if item.future is not None and not item.future.done():
                    item.future.set_result(item.result)
        if messages:
            self._relay.send(messages)
        if earliest is not None:
            self._timer_wake.set()

    async def _apply_start(
        self,
        work: _Work,
        item: _Item,
        now: float,
        keys_in_batch: dict[tuple[str, str], _Work],
        works: dict[str, _Work],
    ) -> None:
        start = item.start
        assert start is not None
        definition = start.definition

        def settle(error: str | None) -> None:
            # A queued start is answered too, or it would be picked up again and again.
            if item.command_id is not None:
                state = CommandState.REFUSED if error else CommandState.APPLIED
                work.transition.commands.append(CommandResult(item.command_id, state, error))

        if start.key is not None:
            existing: SagaInstance | None = None
            other = keys_in_batch.get((definition.name, start.key))
            if other is not None:
                existing = other.instance
            elif (definition.name, start.key) in self._staged_keys:
                # The key's instance is being committed by the batch in flight: decide this
                # start after that commit, so it never answers with an uncommitted id.
                work.items.remove(item)
                self._queue.put_nowait(item)
                return
            else:
                existing = await self.store.find_by_key(definition.name, start.key)
            if existing is None and other is None:
                retired = await self.store.retired_key(definition.name, start.key)
                if retired is not None:  # its instance was purged: the start stays idempotent
                    if retired.input_digest != start.digest:
                        error = (
                            f"idempotency key {start.key!r} was used by saga {retired.saga_id} "
                            "(since purged) with different input"
                        )
                        self._fail(item, IdempotencyConflict(error))
                        settle(error)
                    else:
                        item.result = retired.saga_id
                        settle(None)
                    return
            if existing is not None:
                if existing.input_digest != start.digest:
                    error = (
                        f"idempotency key {start.key!r} was used by saga {existing.saga_id} "
                        "with different input"
                    )
                    self._fail(item, IdempotencyConflict(error))
                    settle(error)
                else:
                    item.result = existing.saga_id
                    settle(None)
                return
            keys_in_batch[(definition.name, start.key)] = work
        instance = new_instance(
            definition,
            saga_id=work.saga_id,
            data=start.data,
            correlation_id=start.correlation_id,
            idempotency_key=start.key,
            input_digest=start.digest,
            now=now,
        )
        instance = evolve(instance, owner=self.worker_id)
        work.instance = instance
        work.expected = None
        work.changed = True
        work.transition.history.append(
            HistoryEntry(
                now, HistoryKind.CREATED, detail={"correlation_id": instance.correlation_id}
            )
        )
        self._apply_decision(
            work, decide(instance, Begin(), definition, now), definition, now, None
        )
        item.result = work.saga_id
        settle(None)

    def _apply_event(self, work: _Work, item: _Item, now: float, batch: Batch) -> None:
        event = item.event
        assert event is not None
        instance = work.instance
        if instance is None:
            # Nobody will ever advance it: its timer row and message are cleared away.
            self._consume(work, item)
            reason = f"unknown saga instance {work.saga_id}"
            self._reject(work, item, reason, batch)
            return
        if instance.owner != self.worker_id:
            # Not ours: touch nothing of it (not even its timers). Released by a clean stop,
            # it is claimed at once and the message comes back; owned by a live worker,
            # that worker's timeout and retry fetch the answer again from the inbox.
            if instance.owner is None:
                self._claim_wake.set()
                self._fail(item, DefinitionMissing(f"instance {work.saga_id} has no owner yet"))
            log.debug("event for %s, owned by %s: left to its owner", work.saga_id, instance.owner)
            return
        definition = self.app.definition(instance.saga_type, instance.version)
        if definition is None or definition.fingerprint != instance.fingerprint:
            self._orphan(work, item, instance)
            return
        self._consume(work, item)
        decision = decide(instance, event, definition, now)
        if decision.rejected is not None:
            self._reject(work, item, decision.rejected, batch)
            return
        if decision.refused is not None:
            # Written with the instance (its revision checked), so a worker that lost the
            # instance meanwhile cannot record a refusal in another owner's history.
            work.instance = decision.instance
            work.changed = True
            work.transition.history.extend(decision.history)
            if item.command_id is not None:
                work.transition.commands.append(
                    CommandResult(item.command_id, CommandState.REFUSED, decision.refused)
                )
            return
        self._apply_decision(work, decision, definition, now, _message_id(item))
        if item.command_id is not None:
            work.transition.commands.append(CommandResult(item.command_id, CommandState.APPLIED))

    def _apply_decision(
        self,
        work: _Work,
        decision: Decision,
        definition: SagaDefinition,
        now: float,
        causation: str | None,
    ) -> None:
        if not decision.changed:
            return
        work.instance = decision.instance
        work.changed = True
        work.transition.history.extend(decision.history)
        for effect in decision.effects:
            if isinstance(effect, SetTimer):
                work.transition.timer_ops.append(
                    TimerOp(
                        TimerOpKind.SET,
                        Timer(
                            work.saga_id,
                            effect.name,
                            effect.kind,
                            effect.due_at,
                            effect.step,
                            effect.phase,
                            effect.attempt,
                        ),
                    )
                )
            elif isinstance(effect, CancelTimers):
                work.transition.timer_ops.append(TimerOp(TimerOpKind.CANCEL, names=effect.names))
            elif isinstance(effect, Dispatch):
                if isinstance(definition.step(effect.step).handler(effect.phase), Local):
                    # A local run needs no message: the committed state says "running", and
                    # a restart (or a takeover) runs it again from there (Semantics 4).
                    work.local_runs.append(effect)
                    continue
                try:
                    message = self._command_message(
                        decision.instance, definition, effect, now, causation
                    )
                except Exception as exc:  # the step's input cannot be built or encoded
                    failure = Reply(
                        effect.step,
                        effect.phase,
                        effect.attempt,
                        Outcome.ERROR,
                        error=f"cannot build the command: {exc}",
                        retryable=False,
                    )
                    self._apply_decision(
                        work,
                        decide(work.instance, failure, definition, now),
                        definition,
                        now,
                        causation,
                    )
                    continue
                work.transition.outbox.append(message)

    def _command_message(
        self,
        instance: SagaInstance,
        definition: SagaDefinition,
        dispatch: Dispatch,
        now: float,
        causation: str | None,
    ) -> OutboxMessage:
        step = definition.step(dispatch.step)
        handler = step.handler(dispatch.phase)
        state = instance.step(step.name)
        step_input: JSON = instance.data
        if step.input is not None:
            context = _context(instance, definition, step.name, Phase.ACTION, 0, "", now, None)
            step_input = to_json(step.input(context), path=f"input of step {step.name!r}")
        payload: JSON = step_input
        if dispatch.phase is Phase.COMPENSATION:
            payload = {
                "input": step_input,
                "result": state.result if state.outcome_known else None,
            }
        assert isinstance(handler, Remote)
        env = Envelope(
            id=self._next_id(),
            kind=MessageKind.COMMAND,
            type=handler.command,
            saga_id=instance.saga_id,
            saga_type=instance.saga_type,
            definition_version=instance.version,
            step=step.name,
            phase=dispatch.phase,
            attempt=dispatch.attempt,
            idempotency_key=dispatch.idempotency_key,
            correlation_id=instance.correlation_id,
            timestamp=now,
            payload=payload,
            causation_id=causation,
            reply_to=self.reply_queue,
            deadline=dispatch.deadline,
            traceparent=_traceparent(instance.saga_id, self._next_id()),
        )
        body = encode(env)
        if len(body) > MAX_MESSAGE_BYTES:
            raise EncodingError(f"command of {len(body)} bytes exceeds {MAX_MESSAGE_BYTES}")
        return OutboxMessage(env.id, ORCHESTRATOR, handler.participant, body, instance.saga_id)

    def _reject(self, work: _Work, item: _Item, reason: str, batch: Batch) -> None:
        # Recorded with the work, so that they go if what it decided is dropped (_finish).
        if item.body is not None:
            letter = DeadLetter(item.source or "worker", reason, item.body, at=self._clock())
            work.dead_letters.append(letter)
            batch.dead_letters.append(letter)
            log.warning("dead-lettered a message: %s", reason, extra={"saga_id": item.saga_id})
        elif item.command_id is not None:
            work.transition.commands.append(
                CommandResult(item.command_id, CommandState.REFUSED, reason)
            )
        elif item.timer is None:
            self._fail(item, SagaNotFound(reason))

    @staticmethod
    def _consume(work: _Work, item: _Item) -> None:
        if item.timer is not None:
            work.transition.timer_ops.append(TimerOp(TimerOpKind.FIRED, item.timer))

    def _orphan(self, work: _Work, item: _Item, instance: SagaInstance) -> None:
        # Never advance an instance with the wrong steps (Semantics 1): leave its message,
        # timer or command where it is, for a worker that has the definition.
        if instance.saga_id not in self._orphans:
            self._orphans.add(instance.saga_id)
            log.error(
                "saga %s runs %s v%d (fingerprint %s), which this worker does not have; "
                "it is left untouched",
                instance.saga_id,
                instance.saga_type,
                instance.version,
                instance.fingerprint,
            )
        self._fail(
            item,
            DefinitionMissing(
                f"no definition {instance.saga_type} v{instance.version} ({instance.fingerprint})"
            ),
        )

    @staticmethod
    def _fail(item: _Item, exc: Exception) -> None:
        if item.future is not None and not item.future.done():
            item.future.set_exception(exc)

    # -- delivery of committed messages ---------------------------------------------------

    async def _deliver(self, message: OutboxMessage) -> None:
        await self.transport.publish(message.destination, message.body)

    async def _mark_done(self, message_id: str) -> None:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._done_pending.append((message_id, future))
        self._queue.put_nowait(_FLUSH)
        await future

    def _spawn_local(self, saga_id: str, dispatch: Dispatch) -> None:
        key = (saga_id, dispatch.step, dispatch.phase, dispatch.attempt)
        if key in self._local_tasks or not self._running:
            return
        self._local_tasks[key] = asyncio.create_task(self._run_local(key, dispatch))

    async def _run_local(self, key: _LocalKey, dispatch: Dispatch) -> None:
        # The key stays in _local_tasks until the reply is committed (or dropped), so the
        # same attempt is never run twice by this worker (a takeover of its own instances
        # after a lost lease adopts them again).
        saga_id = key[0]
        try:
            instance = self._cache.get(saga_id) or await self.store.get(saga_id)
        except Exception as exc:  # the store is unreachable: read again in a while
            self._local_failed(key, None, exc, dispatch)
            return
        if instance is None or instance.owner != self.worker_id:
            self._local_tasks.pop(key, None)
            return
        definition = self.app.definition(instance.saga_type, instance.version)
        if definition is None or definition.fingerprint != instance.fingerprint:
            self._local_tasks.pop(key, None)
            return
        step = definition.step(dispatch.step)
        handler = step.handler(dispatch.phase)
        assert isinstance(handler, Local)
        reply = await self._call_local(
            handler, instance, definition, dispatch, step.timeout_for(dispatch.phase)
        )
        if self._running:
            self._submit_local(key, reply)
        else:
            self._local_tasks.pop(key, None)

    def _local_failed(
        self,
        key: _LocalKey,
        reply: Reply | None,
        exc: BaseException,
        dispatch: Dispatch | None = None,
    ) -> None:
        """A local run's reply was not committed (or its instance not read): try again,
        unless the instance is gone or no longer this worker's, or the worker stops."""
        if not self._running or isinstance(exc, (DefinitionMissing, SagaNotFound)):
            self._local_tasks.pop(key, None)
            return
        if not isinstance(exc, ConcurrencyConflict):
            log.warning(
                "local step %s of %s: answer not committed, retrying: %s",
                key[1],
                key[0],
                exc,
                extra={"saga_id": key[0]},
            )
        self._cache.pop(key[0], None)
        self._local_tasks[key] = asyncio.create_task(
            self._resubmit_local(key, reply, dispatch, exc)
        )

    async def _resubmit_local(
        self,
        key: _LocalKey,
        reply: Reply | None,
        dispatch: Dispatch | None,
        exc: BaseException,
    ) -> None:
        # A conflict means another worker owns the instance now (it runs the step itself),
        # or an earlier commit failed and this one was decided on top of it: then the reply
        # is submitted again at once. A store failure waits longer.
        await asyncio.sleep(0.05 if isinstance(exc, ConcurrencyConflict) else 0.5)
        if reply is None:
            assert dispatch is not None
            self._local_tasks.pop(key, None)
            self._spawn_local(key[0], dispatch)
            return
        try:
            instance = self._cache.get(key[0]) or await self.store.get(key[0])
        except Exception as error:
            self._local_failed(key, reply, error)
            return
        if instance is None or instance.owner != self.worker_id or not self._running:
            self._local_tasks.pop(key, None)
            return
        self._submit_local(key, reply)

    async def _take_over(self, *, rescan: bool = True) -> int:
        """Claim the instances no live worker owns and pick up where their owner stopped."""
        total = 0
        fingerprints = [d.fingerprint for d in self.app.definitions]
        while claimed := await self.store.claim(500, fingerprints):
            total += len(claimed)
            for instance in claimed:
                self._orphans.discard(instance.saga_id)
                self._adopt(instance)
        if total:
            log.info("took over %d instance(s)", total)
            self._timer_wake.set()
            self._command_wake.set()
            if rescan:
                await self._relay.rescan()
        return total

    def _adopt(self, instance: SagaInstance) -> None:
        """Hold ``instance`` and run again every local step its state says is running."""
        definition = self.app.definition(instance.saga_type, instance.version)
        if definition is None or definition.fingerprint != instance.fingerprint:
            return
        self._cache[instance.saga_id] = instance
        for step, state in zip(definition.steps, instance.steps, strict=True):
            if state.status is StepStatus.RUNNING and isinstance(step.action, Local):
                phase, attempt = Phase.ACTION, state.attempts
            elif (
                state.compensation is not None
                and state.compensation.status is CompensationStatus.RUNNING
                and isinstance(step.compensation, Local)
            ):
                phase, attempt = Phase.COMPENSATION, state.compensation.attempts
            else:
                continue
            key = idempotency_key(instance.saga_id, step.name, phase)
            deadline = self._clock() + step.timeout_for(phase)
            self._spawn_local(instance.saga_id, Dispatch(step.name, phase, attempt, key, deadline))

    async def _retention_loop(self, policy: RetentionPolicy) -> None:
        while True:
            try:
                purged, keys = await self.client.purge(policy)
                if purged or keys:
                    log.info("retention: purged %d instance(s) and %d key(s)", purged, keys)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("retention purge failed: %s", exc)
            await asyncio.sleep(self._retention_interval)

    async def _lease_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._lease / 3):
                    await self._claim_wake.wait()
            self._claim_wake.clear()
            try:
                if not await self.store.heartbeat():
                    # Declared dead while paused: what we hold may have been taken over.
                    log.warning("worker %s lost its lease; dropping what it held", self.worker_id)
                    self._cache.clear()
                    await self.store.attach(
                        self.worker_id, self._lease, [d.fingerprint for d in self.app.definitions]
                    )
                await self._sync_clock()
                await self._take_over()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("lease renewal or takeover failed: %s", exc)

    async def _call_local(
        self,
        handler: Local,
        instance: SagaInstance,
        definition: SagaDefinition,
        dispatch: Dispatch,
        timeout: float,
    ) -> Reply:
        step, phase, attempt = dispatch.step, dispatch.phase, dispatch.attempt
        try:
            context = _context(
                instance,
                definition,
                dispatch.step,
                dispatch.phase,
                dispatch.attempt,
                dispatch.idempotency_key,
                self._clock(),
                timeout,
            )
            task = asyncio.current_task()
            assert task is not None
            cancelling = task.cancelling()
            slot = self._deadlines.start(task, timeout)
            try:
                result = await handler.fn(context)
            except asyncio.CancelledError:
                # Ours only if no one else (a stop) asked for the cancellation too.
                if self._deadlines.finish(task, slot) and task.uncancel() <= cancelling:
                    raise TimeoutError from None
                raise
            except BaseException:
                if self._deadlines.finish(task, slot):
                    task.uncancel()
                raise
            if self._deadlines.finish(task, slot):
                task.uncancel()  # the deadline passed as the run ended: its answer stands
            result = to_json(result, path=f"result of {step}")
            return Reply(step, phase, attempt, Outcome.SUCCESS, result)
        except StepFailed as exc:
            return Reply(step, phase, attempt, Outcome.FAILURE, error=str(exc) or "failed")
        except StepError as exc:
            return Reply(
                step,
                phase,
                attempt,
                Outcome.ERROR,
                error=str(exc) or "error",
                retryable=exc.retryable,
                retry_after=exc.retry_after,
            )
        except TimeoutError:
            return Reply(step, phase, attempt, Outcome.ERROR, error=f"timed out after {timeout:g}s")
        except EncodingError as exc:
            return Reply(step, phase, attempt, Outcome.ERROR, error=str(exc), retryable=False)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return Reply(step, phase, attempt, Outcome.ERROR, error=f"{type(exc).__name__}: {exc}")

    async def _on_reply(self, body: bytes) -> None:
        try:
            env = decode(body)
            if env.kind is not MessageKind.REPLY or env.outcome is None:
                raise MessageRejected(
                    f"expected a reply on {self.reply_queue}, got a {env.kind.value}"
                )
        except MessageRejected as exc:
            letter = DeadLetter(self.reply_queue, str(exc), body, at=self._clock())
            await self._submit(_Item("", dead_letter=letter))
            return
        reply = Reply(
            env.step,
            env.phase,
            env.attempt,
            env.outcome,
            env.payload,
            env.error,
            env.retryable,
            env.retry_after,
        )
        await self._submit(_Item(env.saga_id, event=reply, body=body, source=self.reply_queue))

    # -- timers and operator commands -----------------------------------------------------

    async def _timer_loop(self) -> None:
        while True:
            try:
                waiting = await self._fire_due_timers()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("timer scan failed: %s", exc)
                waiting = self._poll_interval
            self._timer_wake.clear()
            with contextlib.suppress(TimeoutError):
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that lands as the event is set, and then stop() would wait forever.
                async with asyncio.timeout(waiting):
                    await self._timer_wake.wait()

    async def _fire_due_timers(self) -> float:
        for timer in await self.store.due(1000):
            key = (timer.saga_id, timer.name, timer.due_at)
            if key in self._timers_in_flight or timer.saga_id in self._orphans:
                continue
            self._timers_in_flight.add(key)
            event = TimerFired(timer.kind, timer.step, timer.phase, timer.attempt)
            future = self._submit(_Item(timer.saga_id, event=event, timer=timer))
            future.add_done_callback(functools.partial(_discard, self._timers_in_flight, key))
            future.add_done_callback(_consume_exception)
        next_due = await self.store.next_due()
        if next_due is None:
            return self._poll_interval
        return min(self._poll_interval, max(0.005, next_due - await self.store.now()))

    async def _command_loop(self) -> None:
        while True:
            try:
                # A cursor walks the queue, so commands this worker cannot apply (another
                # saga type, another owner) never hide the ones behind them.
                batch = await self.store.pending_commands(100, self._command_cursor)
                for command in batch:
                    self._submit_command(command)
                self._command_cursor = batch[-1].id if len(batch) == 100 else 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("command scan failed: %s", exc)
            self._command_wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval):
                    await self._command_wake.wait()

    def _submit_command(self, command: QueuedCommand) -> None:
        if command.id in self._commands_in_flight or command.saga_id in self._orphans:
            return
        body = command.body
        reason = str(body.get("reason", ""))
        by = str(body.get("by", "operator"))
        event: Event | None
        if command.kind == "abort":
            event = Abort(reason, by)
        elif command.kind == "retry":
            event = Retry(reason, by)
        elif command.kind == "resolve":
            event = Resolve(str(body.get("step", "")), reason, by)
        elif command.kind == "start":
            event = None
        else:
            event = None  # refused by the committer: unknown command kind
        start: _Start | None = None
        if command.kind == "start":
            name, version = body.get("saga_type"), body.get("version")
            if (
                isinstance(name, str)
                and isinstance(version, int)
                and self.app.definition(name, version) is None
            ):
                return  # left queued for a worker that has this definition
            start = self._queued_start(command)
        self._commands_in_flight.add(command.id)
        future = self._submit(
            _Item(command.saga_id, event=event, start=start, command_id=command.id)
        )
        future.add_done_callback(functools.partial(_discard, self._commands_in_flight, command.id))
        future.add_done_callback(_consume_exception)

    def _queued_start(self, command: QueuedCommand) -> _Start | None:
        """A start enqueued by a client without a worker (another process, the HTTP API)."""
        body = command.body
        name, version = body.get("saga_type"), body.get("version")
        if not isinstance(name, str) or not isinstance(version, int):
            return None
        definition = self.app.definition(name, version)
        if definition is None:
            return None
        data = body.get("data")
        key, correlation = body.get("key"), body.get("correlation_id")
        key = key if isinstance(key, str) else None
        return _Start(
            definition,
            data,
            key,
            correlation if isinstance(correlation, str) else None,
            _input_digest(data, key),
        )


def _input_digest(data: JSON, key: str | None) -> str:
    # Only a keyed start is ever compared with another (Semantics 15): hashing the input of
    # every other start would be work for nothing.
    return digest_of(data) if key is not None else ""


def _discard(in_flight: set[Any], key: object, _: asyncio.Future[object]) -> None:
    in_flight.discard(key)


def _consume_exception(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()


def _message_id(item: _Item) -> str | None:
    if item.body is None:
        return None
    with contextlib.suppress(MessageRejected):
        return decode(item.body).id
    return None


def _traceparent(saga_id: str, span_seed: str) -> str:
    # One trace per saga: the trace id is derived from the saga id, each command is a span.
    trace_id = hashlib.sha256(saga_id.encode()).hexdigest()[:32]
    span_id = hashlib.blake2b(span_seed.encode(), digest_size=8).hexdigest()
    return f"00-{trace_id}-{span_id}-01"


def _context(
    instance: SagaInstance,
    definition: SagaDefinition,
    step: str,
    phase: Phase,
    attempt: int,
    key: str,
    now: float,
    timeout: float | None,
) -> StepContext[object]:
    state = instance.steps[definition.index(step)]
    data_type = definition.data_type
    # One per step run: every field is given, so it is written straight into the instance's
    # dict instead of field by field through the frozen dataclass's __setattr__.
    context: StepContext[object] = object.__new__(StepContext)
    context.__dict__.update(
        saga_id=instance.saga_id,
        saga_type=instance.saga_type,
        step=step,
        phase=phase,
        attempt=attempt,
        idempotency_key=key,
        correlation_id=instance.correlation_id,
        deadline=now + timeout if timeout is not None else None,
        data=instance.data if data_type is None else from_json(instance.data, data_type),
        results=instance.results(),
        input=instance.data,
        result=state.result if phase is Phase.COMPENSATION and state.outcome_known else None,
        outcome_known=state.outcome_known,
    )
    return context
