"""Sources: what feeds the committer besides local steps — replies, due timers, operator
commands — each turning what it receives into :class:`Item` s on the committer's inbox.

Timers and commands are read from the store by one poll helper (scan, then sleep until the
next due time, the poll interval or a wake-up, whichever comes first). A broker adds its own
reply source here; workflows and choreography add theirs beside these.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sagakit.app import App
from sagakit.definition import SagaDefinition
from sagakit.errors import MessageRejected, StoreRefused
from sagakit.messages import MessageKind, decode
from sagakit.ports import CommandQueue, DeadLetter, QueuedCommand, TimerQueue
from sagakit.transitions import Abort, Event, Outcome, Reply, Resolve, Retry, TimerFired
from sagakit.worker.items import Inbox, Item, Start, input_digest

log = logging.getLogger("sagakit.worker")


async def poll(
    scan: Callable[[], Awaitable[float]], wake: asyncio.Event, interval: float, what: str
) -> None:
    """Run ``scan`` forever; it returns how long to wait before the next one (a failed scan:
    ``interval``). ``wake`` cuts the wait short."""
    while True:
        try:
            waiting = await scan()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s scan failed: %s", what, exc)
            waiting = interval
        wake.clear()
        with contextlib.suppress(TimeoutError):
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that lands as the event is set, and then stop() would wait forever.
            async with asyncio.timeout(waiting):
                await wake.wait()


class ReplySource:
    """Replies from participants, on the worker's reply queue."""

    def __init__(self, inbox: Inbox, queue: str, clock: Callable[[], float]) -> None:
        self._inbox = inbox
        self.queue = queue
        self._clock = clock

    async def on_message(self, body: bytes) -> None:
        try:
            env = decode(body)
            if env.kind is not MessageKind.REPLY or env.outcome is None:
                raise MessageRejected(f"expected a reply on {self.queue}, got a {env.kind.value}")
        except MessageRejected as exc:
            letter = DeadLetter(self.queue, str(exc), body, at=self._clock())
            known = exc.envelope
            if known is None or known.kind is not MessageKind.REPLY:
                await self._inbox.submit(Item("", dead_letter=letter))
                return
            # The reply breaks the value rules, but says which attempt it answers: the
            # message is dead-lettered and that attempt ends at once, its outcome unknown (the
            # participant may have acted), as if it had timed out — retried by policy with the
            # same key, compensated when the policy is spent.
            lost = Reply(
                known.step,
                known.phase,
                known.attempt,
                Outcome.ERROR,
                error=f"its reply was refused: {exc}",
                retryable=True,
                generation=known.generation,
            )
            await asyncio.gather(
                self._inbox.submit(Item("", dead_letter=letter)),
                self._inbox.submit(Item(known.saga_id, event=lost, source=self.queue)),
            )
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
            env.generation,
        )
        try:
            await self._inbox.submit(
                Item(env.saga_id, event=reply, body=body, source=self.queue, message_id=env.id)
            )
        except StoreRefused as exc:
            # Dead-lettered when it was first refused; taking it again would loop forever.
            log.error("a reply for saga %s was refused by the store: %s", env.saga_id, exc)


class TimerSource:
    """Due timers, judged by the store's clock (Semantics 13)."""

    def __init__(
        self, store: TimerQueue, inbox: Inbox, orphans: set[str], poll_interval: float
    ) -> None:
        self._store = store
        self._inbox = inbox
        self._orphans = orphans
        self._interval = poll_interval
        self._in_flight: set[tuple[str, str, float]] = set()
        #: Timers whose firing the store refused: left alone until a restart, not refired
        #: every poll (the refusal is logged with its reason).
        self._refused: set[tuple[str, str, float]] = set()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    def _settled(self, key: tuple[str, str, float], future: asyncio.Future[object]) -> None:
        self._in_flight.discard(key)
        if not future.cancelled() and isinstance(future.exception(), StoreRefused):
            self._refused.add(key)

    async def run(self) -> None:
        await poll(self._fire_due, self._wake, self._interval, "timer")

    async def _fire_due(self) -> float:
        for timer in await self._store.due(1000):
            key = (timer.saga_id, timer.name, timer.due_at)
            if key in self._in_flight or key in self._refused or timer.saga_id in self._orphans:
                continue
            self._in_flight.add(key)
            event = TimerFired(timer.kind, timer.step, timer.phase, timer.attempt)
            future = self._inbox.submit(Item(timer.saga_id, event=event, timer=timer))
            future.add_done_callback(functools.partial(self._settled, key))
        next_due = await self._store.next_due()
        if next_due is None:
            return self._interval
        return min(self._interval, max(0.005, next_due - await self._store.now()))


class CommandSource:
    """Operator commands and queued starts, written to the store by any client (Semantics 11)."""

    def __init__(
        self,
        app: App,
        store: CommandQueue,
        inbox: Inbox,
        orphans: set[str],
        poll_interval: float,
    ) -> None:
        self._app = app
        self._store = store
        self._inbox = inbox
        self._orphans = orphans
        self._interval = poll_interval
        self._in_flight: set[int] = set()
        self._cursor = 0
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        await poll(self._scan, self._wake, self._interval, "command")

    async def _scan(self) -> float:
        # A cursor walks the queue, so commands this worker cannot apply (another saga
        # type, another owner) never hide the ones behind them.
        batch = await self._store.pending_commands(100, self._cursor)
        for command in batch:
            self._submit(command)
        self._cursor = batch[-1].id if len(batch) == 100 else 0
        return self._interval

    def _submit(self, command: QueuedCommand) -> None:
        if command.id in self._in_flight or command.saga_id in self._orphans:
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
        else:
            event = None  # a start, or refused by the committer: unknown command kind
        start: Start | None = None
        if command.kind == "start":
            name, version = body.get("saga_type"), body.get("version")
            if (
                isinstance(name, str)
                and (version is None or isinstance(version, int))
                and self._definition(name, version) is None
            ):
                return  # left queued for a worker that has this definition
            start = self._queued_start(command)
        self._in_flight.add(command.id)
        future = self._inbox.submit(
            Item(command.saga_id, event=event, start=start, command_id=command.id)
        )
        future.add_done_callback(functools.partial(_discard, self._in_flight, command.id))
        future.add_done_callback(_consume_exception)

    def _queued_start(self, command: QueuedCommand) -> Start | None:
        """A start enqueued by a client without a worker (another process, the HTTP API)."""
        body = command.body
        name, version = body.get("saga_type"), body.get("version")
        if not isinstance(name, str) or not (version is None or isinstance(version, int)):
            return None
        definition = self._definition(name, version)
        if definition is None:
            return None
        data = body.get("data")
        key, correlation = body.get("key"), body.get("correlation_id")
        key = key if isinstance(key, str) else None
        fingerprint = body.get("fingerprint")
        return Start(
            definition,
            data,
            key,
            correlation if isinstance(correlation, str) else None,
            input_digest(data, key),
            # Not said by a start an older sagakit queued: it runs this worker's definition.
            fingerprint if isinstance(fingerprint, str) else None,
        )

    def _definition(self, name: str, version: int | None) -> SagaDefinition | None:
        """The definition a queued start names; a start by name alone (``sagakit start``
        without a version) gets the newest version this worker runs."""
        if version is not None:
            return self._app.definition(name, version)
        versions = [d for d in self._app.definitions if d.name == name]
        return max(versions, key=lambda d: d.version) if versions else None


def _discard(in_flight: set[Any], key: object, _: asyncio.Future[object]) -> None:
    in_flight.discard(key)


def _consume_exception(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()
