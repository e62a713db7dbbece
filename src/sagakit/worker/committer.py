"""The committer: the one task that changes state.

It takes every item that waits on the inbox (up to ``max_batch``), decides each against its
instance (through the applier) and commits the whole batch in one transaction: new states,
history, outbox messages, timers, consumed messages and command results together (group
commit: at low load a batch is one item and commits at once; under load batches grow while
the previous commit is in flight). Only after the commit does it act: the relay publishes the
new messages, local steps run, timers are armed. A crash anywhere loses nothing: what was
committed is recovered from the outbox, the timers and the command queue on restart; what was
not committed is redone by its source.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Protocol

from sagakit.errors import ConcurrencyConflict, SagaNotFound, StorageError
from sagakit.ports import (
    Batch,
    CommandResult,
    CommandState,
    OutboxMessage,
    TimerOpKind,
    TransitionStore,
)
from sagakit.state import SagaInstance
from sagakit.storage.rows import state_text
from sagakit.transitions import Dispatch
from sagakit.worker.apply import Applier
from sagakit.worker.instances import Instances
from sagakit.worker.items import FLUSH, STOP_SOURCE, Inbox, Item, Prepared, Work, answer
from sagakit.worker.local_steps import InstanceReader
from sagakit.worker.refusals import Unit, bisect, is_refusal, refuse

log = logging.getLogger("sagakit.worker")


class CommitStore(TransitionStore, InstanceReader, Protocol):
    """What the committer needs of a store: read an instance, commit a batch."""


class Committer:
    def __init__(
        self,
        store: CommitStore,
        applier: Applier,
        instances: Instances,
        inbox: Inbox,
        *,
        clock: Callable[[], float],
        max_batch: int,
        send: Callable[[list[OutboxMessage]], None],
        run_local: Callable[[str, Dispatch], None],
        timers_changed: Callable[[], None],
    ) -> None:
        self._store = store
        self._applier = applier
        self._instances = instances
        self._inbox = inbox
        self._clock = clock
        self._max_batch = max_batch
        self._send = send
        self._run_local = run_local
        self._timers_changed = timers_changed
        self._watchers: dict[str, list[asyncio.Future[SagaInstance]]] = {}
        self._done_pending: list[tuple[str, asyncio.Future[object]]] = []
        self.commits = 0
        self.transitions_committed = 0

    # -- what other roles ask of it --------------------------------------------------------

    def submit(self, item: Item) -> asyncio.Future[object]:
        """Queue ``item`` for the next batch; answered once it is committed or refused."""
        return self._inbox.submit(item)

    def staged(self, saga_id: str) -> SagaInstance | None:
        """The state the batch in flight is writing for ``saga_id``, if any."""
        return self._instances.staged.get(saga_id)

    def idle(self) -> bool:
        """Nothing waits to be decided."""
        return self._inbox.empty()

    async def mark_done(self, message_id: str) -> None:
        """Delete a published outbox row with the next batch (the relay's "done")."""
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._done_pending.append((message_id, future))
        self._inbox.put_nowait(FLUSH)
        await future

    async def wait_settled(self, saga_id: str, timeout: float | None = None) -> SagaInstance:
        """Wait until the instance is completed, failed or stuck."""
        future: asyncio.Future[SagaInstance] = asyncio.get_running_loop().create_future()
        self._watchers.setdefault(saga_id, []).append(future)
        try:
            instance = self._instances.cache.get(saga_id) or await self._store.get(saga_id)
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

    def abandon(self, stopped: Exception) -> None:
        """After the last batch: tell every source whose item was never decided."""
        # Messages and timers come back on restart; a start may be called again.
        while not self._inbox.empty():
            answer(self._inbox.get_nowait(), stopped)
        for _, future in self._done_pending:
            if not future.done():
                future.set_exception(stopped)
        self._done_pending = []

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        # Pipelined: batch N+1 is decided while batch N's commit is in flight (against the
        # states N wrote, held as staged). N+1 commits only after N, and its effects act
        # only after its own commit; what N+1 decided on a state N did not write is dropped
        # before N+1 commits (see _finish).
        in_flight: asyncio.Task[None] | None = None
        try:
            while True:
                items = await self._inbox.take(self._max_batch)
                stop = any(i.source == STOP_SOURCE for i in items)
                items = [i for i in items if i.source != STOP_SOURCE]
                try:
                    prepared = await self._prepare(items)
                except Exception as exc:  # a read failed: the sources retry, nothing is lost
                    self._failed(items, [], exc)
                    prepared = None
                if in_flight is not None:
                    await _settle(in_flight)
                    in_flight = None
                if prepared is not None:
                    in_flight = asyncio.create_task(self._finish(prepared))
                if stop:
                    if in_flight is not None:
                        await _settle(in_flight)
                    return
        finally:
            if in_flight is not None and not in_flight.done():
                in_flight.cancel()

    async def _prepare(self, items: list[Item]) -> Prepared:
        now = self._clock()
        works: dict[str, Work] = {}
        batch = Batch()
        keys_in_batch: dict[tuple[str, str], Work] = {}
        loose: list[Item] = []  # items that belong to no instance: dead letters, flushes
        instances = self._instances
        applier = self._applier
        solo: set[str] = set()  # instances whose items are decided one per batch
        for item in items:
            if item.dead_letter is not None or not item.saga_id:
                if item.dead_letter is not None:
                    batch.dead_letters.append(item.dead_letter)
                loose.append(item)
                continue
            work = works.get(item.saga_id)
            if work is None:
                staged = instances.staged.get(item.saga_id)
                instance = staged or instances.cache.get(item.saga_id)
                if instance is None and item.start is None:
                    instance = await self._store.get(item.saga_id)
                work = Work(
                    item.saga_id,
                    instance,
                    instance.revision if instance else None,
                    staged is not None,
                )
                works[item.saga_id] = work
                if item.alone:
                    solo.add(item.saga_id)
            elif solo and item.saga_id in solo:
                self._inbox.put_nowait(item)  # the next batch: one of this instance's items each
                continue
            work.items.append(item)
            try:
                if item.event is None and item.start is None:
                    if item.command_id is not None:
                        batch.commands.append(
                            CommandResult(
                                item.command_id,
                                CommandState.REFUSED,
                                "malformed or unknown command",
                            )
                        )
                elif item.start is not None:
                    await applier.start(work, item, now, keys_in_batch)
                else:
                    applier.event(work, item, now, batch)
            except StorageError:
                raise  # a read failed: the whole batch is redone by its sources
            except Exception as exc:  # this item cannot be decided: it alone is refused
                del works[item.saga_id]
                self._drop(work, item, exc, batch, keys_in_batch)
        order: list[Work] = []
        for work in works.values():
            if work.changed and work.instance is not None:
                # decide() returns a new instance whenever it changes one, held by this work
                # alone until it is staged below: its revision is set in place, not copied.
                work.instance.__dict__["revision"] = (work.expected or 0) + 1
                work.transition.instance = work.instance
                # Encoded here, while the previous batch commits, rather than by the store
                # during this batch's commit (on SQLite, on its writer thread).
                try:
                    work.transition.state = state_text(work.instance)
                except Exception as exc:  # a value no check caught: this instance alone fails
                    self._drop(work, None, exc, batch, keys_in_batch)
                    continue
                work.transition.expected_revision = work.expected
                instances.staged[work.saga_id] = work.instance
                key = work.instance.idempotency_key
                if work.expected is None and key is not None:
                    instances.staged_keys[(work.instance.saga_type, key)] = work.instance
            order.append(work)
            batch.transitions.append(work.transition)
        done = self._done_pending
        self._done_pending = []
        batch.outbox_done = [message_id for message_id, _ in done]
        return Prepared(batch, order, done, loose)

    def _drop(
        self,
        work: Work,
        culprit: Item | None,
        exc: Exception,
        batch: Batch,
        keys_in_batch: dict[tuple[str, str], Work],
    ) -> None:
        """Take ``work`` out of the batch being prepared: ``culprit`` (or, when it is not
        known, each of the work's items in turn) is refused; the rest is decided again."""
        letters = {id(letter) for letter in work.dead_letters}
        if letters:
            batch.dead_letters[:] = [d for d in batch.dead_letters if id(d) not in letters]
        for key in [key for key, other in keys_in_batch.items() if other is work]:
            del keys_in_batch[key]
        if culprit is not None and len(work.items) > 1:
            for item in work.items:
                if item is not culprit:
                    self._inbox.put_nowait(item)
            work.items = [culprit]
        side = Batch()
        for item in refuse(work, exc, self._clock(), side):
            self._inbox.put_nowait(item)
        batch.dead_letters.extend(side.dead_letters)
        batch.commands.extend(side.commands)

    async def _finish(self, prepared: Prepared) -> None:
        # A state the previous batch staged but did not write must not be built on: its
        # revision check would not catch it when another worker's claim has meanwhile
        # bumped the stored revision to the very number the lost state had.
        instances = self._instances
        lost, instances.lost = instances.lost, set()
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
            results = await self._store.commit(batch)
        except asyncio.CancelledError:
            self._failed(prepared.items(), prepared.done, StorageError("the worker stopped"))
            raise
        except Exception as exc:
            if is_refusal(exc):  # the store works, and refuses something in the batch
                await self._isolate(prepared, doomed, exc)
                return
            # A store failure: the sources retry, nothing is lost.
            log.error("commit of %d transition(s) failed: %s", len(prepared.order), exc)
            self._fail_batch(prepared, prepared.order, exc)
            await asyncio.sleep(0.05)
            return
        self.commits += 1
        self._side_written(prepared, None)
        if any(doomed):
            written = iter(results)
            results = [False if drop else next(written) for drop in doomed]
        self._after_commit(prepared.order, results)

    def _fail_batch(self, prepared: Prepared, works: list[Work], exc: Exception) -> None:
        self._failed(prepared.items(), prepared.done, exc)
        for work in works:
            self._lose(work)

    def _lose(self, work: Work) -> None:
        """What ``work`` staged was not written: forget it, and drop what was built on it."""
        self._instances.unstage(work.saga_id, work.instance)
        if work.transition.instance is not None and work.instance is not None:
            self._instances.lost.add((work.saga_id, work.instance.revision))

    def _side_written(self, prepared: Prepared, error: Exception | None) -> None:
        """Answer the records that belong to no instance: written, or not (``error``)."""
        for _, future in prepared.done:
            if not future.done():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)
        for item in prepared.loose:
            if error is None:
                if item.future is not None and not item.future.done():
                    item.future.set_result(None)
            else:
                answer(item, error)

    async def _isolate(self, prepared: Prepared, doomed: list[bool], exc: Exception) -> None:
        """The store refused the batch while it answers: commit it in parts, so that only the
        part it refuses fails (see refusals.py)."""
        live = [work for work, drop in zip(prepared.order, doomed, strict=True) if not drop]
        of_works = {id(letter) for work in prepared.order for letter in work.dead_letters}
        side = Batch(
            outbox_done=prepared.batch.outbox_done,
            dead_letters=[d for d in prepared.batch.dead_letters if id(d) not in of_works],
            commands=prepared.batch.commands,
        )
        units: list[Unit] = [*live]
        if side.outbox_done or side.dead_letters or side.commands:
            units.append(side)
        written, refused, down = await bisect(self._store.commit, units, exc)
        self.commits += 1 if written else 0
        side_error: Exception | None = None
        if side in units and id(side) not in written:
            side_error = down
        if down is not None:  # the store stopped answering meanwhile: as any store failure
            log.error("commit of %d transition(s) failed: %s", len(prepared.order), down)
            for work in live:
                if id(work) not in written:
                    self._lose(work)
                    for item in work.items:
                        answer(item, down)
                        self._instances.forget(item.saga_id)
        records = Batch()
        again: list[Item] = []
        for unit, error in refused:
            if isinstance(unit, Work):
                self._lose(unit)
                self._instances.forget(unit.saga_id)
                again.extend(refuse(unit, error, self._clock(), records))
            else:
                side_error = error
                log.error("the store refused a batch's dead letters and marks: %s", error)
        self._side_written(prepared, side_error)
        if records.dead_letters or records.commands:
            try:
                await self._store.commit(records)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.error("the records of a refused item were not written: %s", error)
        for item in again:
            self._inbox.put_nowait(item)
        order = [
            work
            for work, drop in zip(prepared.order, doomed, strict=True)
            if drop or id(work) in written
        ]
        results = [written.get(id(work), False) for work in order]
        self._after_commit(order, results)

    def _failed(
        self,
        items: list[Item],
        done: list[tuple[str, asyncio.Future[object]]],
        exc: Exception,
    ) -> None:
        for item in items:
            answer(item, exc)
            self._instances.forget(item.saga_id)
        for _, future in done:
            if not future.done():
                future.set_exception(exc)

    def _after_commit(self, order: list[Work], results: list[bool]) -> None:
        instances = self._instances
        timers_set = False
        messages: list[OutboxMessage] = []
        for work, ok in zip(order, results, strict=True):
            instances.unstage(work.saga_id, work.instance)
            if not ok:
                instances.forget(work.saga_id)
                if work.instance is not None:
                    instances.lost.add((work.saga_id, work.instance.revision))
                conflict = ConcurrencyConflict(f"instance {work.saga_id} changed under this worker")
                for item in work.items:
                    start = item.start
                    if start is not None and start.key is not None and item.command_id is None:
                        # Another worker inserted the same key first: decided again, this
                        # start finds that instance (Semantics 15). A queued start goes back
                        # to the queue instead: it may have been cancelled meanwhile (then it
                        # is not pending, and nothing is created); if not, it comes back.
                        self._inbox.put_nowait(item)
                    else:
                        answer(item, conflict)
                continue
            self.transitions_committed += 1
            instance = work.instance
            if instance is not None and work.changed:
                if instance.status.settled:
                    instances.forget(work.saga_id)
                    for watcher in self._watchers.pop(work.saga_id, []):
                        if not watcher.done():
                            watcher.set_result(instance)
                else:
                    instances.cache[work.saga_id] = instance
            messages.extend(work.transition.outbox)
            for dispatch in work.local_runs:
                self._run_local(work.saga_id, dispatch)
            if not timers_set:
                timers_set = any(op.kind is TimerOpKind.SET for op in work.transition.timer_ops)
            for item in work.items:
                if item.future is not None and not item.future.done():
                    item.future.set_result(item.result)
        if messages:
            self._send(messages)
        if timers_set:
            self._timers_changed()


async def _settle(task: asyncio.Task[None]) -> None:
    try:
        await task
    except asyncio.CancelledError:
        raise
    except Exception:  # the committer must outlive any bug after a commit
        log.exception("unexpected error after a commit")
