"""The worker: a thin façade that builds its roles, runs each one's loop as a task, and
stops them in order.

Roles (one module each): the committer (batching, staging, the fence, the instance cache),
the applier (a decision -> the write and outbound messages), the sources (replies, due
timers, operator commands), local steps, ownership (leases, claims, takeovers) and
reachability (which participants the in-process transport can reach). They
meet only through the committer's inbox and the explicit collaborators each is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable

from sagakit.app import App
from sagakit.client import Client
from sagakit.definition import SagaDefinition
from sagakit.encoding import to_json
from sagakit.errors import ConfigurationError, DefinitionNotRegistered, StorageError
from sagakit.ids import new_id
from sagakit.participant import ParticipantRunner
from sagakit.ports import ORCHESTRATOR, OutboxMessage, Store, Transport
from sagakit.relay import Relay
from sagakit.retention import RetentionPolicy
from sagakit.state import SagaInstance
from sagakit.transport.memory import MemoryTransport
from sagakit.worker.apply import Applier
from sagakit.worker.clock import StoreClock
from sagakit.worker.committer import Committer
from sagakit.worker.instances import Instances
from sagakit.worker.items import STOP_SOURCE, Inbox, Item, Start, input_digest
from sagakit.worker.local_steps import LocalSteps
from sagakit.worker.logbook import Logbook
from sagakit.worker.ownership import Ownership
from sagakit.worker.reachability import Reachability
from sagakit.worker.sources import CommandSource, ReplySource, TimerSource

log = logging.getLogger("sagakit.worker")


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
        if max_batch < 1:
            raise ConfigurationError(f"max_batch must be at least 1, not {max_batch}")
        self.app = app
        self.store = store
        self.transport: Transport = transport or MemoryTransport()
        self.reply_queue = reply_queue
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._retention = retention
        self._retention_interval = retention_interval
        self._clock = StoreClock(clock)
        self._inbox = Inbox()
        self._instances = Instances()
        logbook = Logbook()
        orphans: set[str] = set()  # instances whose definition this worker does not have
        self._timers = TimerSource(store, self._inbox, orphans, poll_interval)
        self._commands = CommandSource(app, store, self._inbox, orphans, poll_interval)
        self._replies = ReplySource(self._inbox, reply_queue, self._clock)
        self._local_steps = LocalSteps(
            app,
            store,
            self._instances,
            self._inbox,
            worker_id=self.worker_id,
            clock=self._clock,
            logbook=logbook,
        )
        self._reach = Reachability(app, self.transport)
        self._relay: Relay
        self._ownership = Ownership(
            app,
            store,
            self._instances,
            self._local_steps,
            self._clock,
            worker_id=self.worker_id,
            lease=lease,
            orphans=orphans,
            on_takeover=self._after_takeover,
            rescan_outbox=self._rescan_outbox,
            logbook=logbook,
        )
        applier = Applier(
            app,
            store,
            self._instances,
            self._inbox,
            worker_id=self.worker_id,
            reply_queue=reply_queue,
            clock=self._clock,
            orphans=orphans,
            wake_claims=self._ownership.wake,
            unserved=self._reach.unserved,
        )
        self.committer = Committer(
            store,
            applier,
            self._instances,
            self._inbox,
            clock=self._clock,
            max_batch=max_batch,
            send=self._send,
            run_local=self._local_steps.spawn,
            timers_changed=self._timers.wake,
            logbook=logbook,
        )
        self._relay = Relay(
            store,
            ORCHESTRATOR,
            self._deliver,
            self.committer.mark_done,
            rescan_interval=rescan_interval,
        )
        self._participants = [
            ParticipantRunner(p, store, self.transport, rescan_interval=rescan_interval)
            for p in app.participants.values()
        ]
        self._tasks: list[asyncio.Task[None]] = []
        self._committer_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._running = False
        self.client = Client(store, worker=self)

    @property
    def commits(self) -> int:
        """Batches committed so far."""
        return self.committer.commits

    @property
    def transitions_committed(self) -> int:
        return self.committer.transitions_committed

    @property
    def local_runs(self) -> int:
        """Local step runs in progress or waiting for their reply's commit."""
        return len(self._local_steps.tasks)

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
        self._local_steps.running = True
        self._committer_task = asyncio.create_task(self.committer.run(), name="sagakit-committer")
        try:
            await self._ownership.attach()
            await self.store.listen(self._wake)
            # Claim before anything is delivered: a reply republished after a restart must
            # find its instance owned by this worker, not by its dead predecessor.
            await self._ownership.take_over(rescan=False)
            await self.transport.subscribe(self.reply_queue, self._replies.on_message)
            for runner in self._participants:
                await runner.start()
        except BaseException:
            self._committer_task.cancel()
            self._running = False
            self._local_steps.running = False
            raise
        self._relay.start()
        self._reach.open()
        self._tasks = [
            asyncio.create_task(self._timers.run(), name="sagakit-timers"),
            asyncio.create_task(self._commands.run(), name="sagakit-commands"),
            asyncio.create_task(self._ownership.run(), name="sagakit-lease"),
        ]
        if self._retention is not None:
            self._tasks.append(asyncio.create_task(self._retention_loop(self._retention)))
        log.info(
            "worker %s started with %d saga definition(s)",
            self.worker_id,
            len(self.app.definitions),
            extra={"worker_id": self.worker_id},
        )

    async def stop(self) -> None:
        """Stop after the commit in progress; what is not committed is redone on restart."""
        if not self._running:
            return
        self._running = False
        self._reach.close()
        for task in self._tasks:
            task.cancel()
        await self._local_steps.stop()
        await self._relay.stop()
        await self.transport.unsubscribe(self.reply_queue)
        for runner in self._participants:
            await runner.stop()
        # gather, not a suppressing loop: a cancellation of stop() itself must propagate.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._committer_task is not None:
            self._inbox.put_nowait(Item("", source=STOP_SOURCE))
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer_task
        # Whatever is still queued was never decided: its callers hear so instead of waiting
        # forever (messages and timers come back on restart; a start may be called again).
        self.committer.abandon(StorageError("the worker stopped before this was committed"))
        with contextlib.suppress(Exception):
            await self.store.detach()
        self._stopped.set()
        log.info("worker %s stopped", self.worker_id, extra={"worker_id": self.worker_id})

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # -- what the client asks -------------------------------------------------------------

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
        A definition this worker does not run, or runs with other steps under that name and
        version, raises DefinitionNotRegistered before anything is written or sent.
        """
        registered = self.app.definition(definition.name, definition.version)
        if registered is None:
            raise DefinitionNotRegistered(
                f"saga {definition.name!r} v{definition.version} is not registered with this worker"
            )
        payload = to_json(data, path="saga data")
        start = Start(
            registered,
            payload,
            key,
            correlation_id,
            input_digest(payload, key),
            definition.fingerprint,
        )
        return str(await self._inbox.submit(Item(new_id(), start=start)))

    async def wait_settled(self, saga_id: str, timeout: float | None = None) -> SagaInstance:
        """Wait until the instance is completed, failed or stuck."""
        return await self.committer.wait_settled(saga_id, timeout)

    def poke(self) -> None:
        """Look at the command queue now (used by an in-process client)."""
        self._commands.wake()

    # -- wiring between roles -------------------------------------------------------------

    def _wake(self) -> None:
        # Another process queued work, or a worker stopped and released its sagas.
        self._commands.wake()
        self._timers.wake()
        self._ownership.wake()

    def _after_takeover(self) -> None:
        self._timers.wake()
        self._commands.wake()

    async def _rescan_outbox(self) -> None:
        await self._relay.rescan()

    def _send(self, messages: list[OutboxMessage]) -> None:
        self._relay.send(messages)

    async def _deliver(self, message: OutboxMessage) -> None:
        await self.transport.publish(message.destination, message.body)

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
