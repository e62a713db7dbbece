"""Ownership: this worker's lease, its claims of instances no live worker owns, takeovers.

Every claim bumps the instance's revision in the store, so a worker that lost its lease
(paused past its expiry) cannot commit over the new owner: the committer's revision check
refuses its writes (the fence). When the lease is found lost, everything held is dropped and
the worker attaches again.

At start-up a worker refuses (with a :class:`~sagakit.errors.DefinitionError`) to run a
definition under the name and version of another one that a live worker runs or that
unfinished instances carry: a changed saga is deployed as a new version (Semantics 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from sagakit.app import App
from sagakit.catalog import DefinitionRecord
from sagakit.definition import Local, Phase
from sagakit.errors import DefinitionError
from sagakit.ports import Catalog, DefinitionRef, DefinitionsInUse, Leases, TimerQueue
from sagakit.state import CompensationStatus, SagaInstance, StepStatus
from sagakit.transitions import Dispatch, idempotency_key
from sagakit.worker.clock import StoreClock
from sagakit.worker.instances import Instances
from sagakit.worker.local_steps import LocalSteps
from sagakit.worker.logbook import Logbook

log = logging.getLogger("sagakit.worker")


class LeaseStore(Leases, DefinitionsInUse, Catalog, TimerQueue, Protocol):
    """Leases, the definitions in use and recorded, and the store's clock leases are judged
    by."""


class Ownership:
    def __init__(
        self,
        app: App,
        store: LeaseStore,
        instances: Instances,
        local_steps: LocalSteps,
        clock: StoreClock,
        *,
        worker_id: str,
        lease: float,
        orphans: set[str],
        on_takeover: Callable[[], None],
        rescan_outbox: Callable[[], Awaitable[None]],
        logbook: Logbook,
    ) -> None:
        self._app = app
        self._store = store
        self._instances = instances
        self._local_steps = local_steps
        self._clock = clock
        self.worker_id = worker_id
        self.lease = lease
        self._orphans = orphans
        self._on_takeover = on_takeover
        self._rescan_outbox = rescan_outbox
        self._logbook = logbook
        self._wake = asyncio.Event()
        self._records: list[DefinitionRecord] | None = None

    def _definitions(self) -> list[DefinitionRef]:
        return [
            DefinitionRef(d.name, d.version, d.fingerprint, d.legacy_fingerprint)
            for d in self._app.definitions
        ]

    def wake(self) -> None:
        """Renew and look for instances to claim now (a worker stopped and released some)."""
        self._wake.set()

    async def attach(self) -> None:
        """Register this worker and its lease, and measure the store's clock; refuse a
        definition that conflicts with the store's (then detach, and raise DefinitionError).
        The definitions it runs are recorded for commands that run no user code (describe,
        workers)."""
        await self._store.attach(self.worker_id, self.lease, self._definitions())
        try:
            # After attaching: two workers attaching at once each see the other.
            names = sorted({d.name for d in self._app.definitions})
            conflict = shape_conflict(
                self._app,
                await self._store.live_definitions(),
                await self._store.unsettled_definitions(names) if names else [],
            )
            if conflict is not None:
                raise DefinitionError(conflict)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._store.detach()
            raise
        if self._records is None:
            # Made once: a typed saga's JSON Schema takes some work to build.
            self._records = [DefinitionRecord.of(d) for d in self._app.definitions]
        await self._store.record_definitions(self._records)
        await self._clock.sync(self._store)

    async def take_over(self, *, rescan: bool = True) -> int:
        """Claim the instances no live worker owns and pick up where their owner stopped."""
        total = 0
        definitions = self._definitions()
        while claimed := await self._store.claim(500, definitions):
            total += len(claimed)
            self._logbook.takeovers(claimed)
            for claim in claimed:
                self._orphans.discard(claim.instance.saga_id)
                self._adopt(claim.instance)
        if total:
            log.info(
                "worker %s took over %d instance(s)",
                self.worker_id,
                total,
                extra={"worker_id": self.worker_id},
            )
            self._on_takeover()
            if rescan:
                await self._rescan_outbox()
        return total

    def _adopt(self, instance: SagaInstance) -> None:
        """Hold ``instance`` and run again every local step its state says is running."""
        definition = self._app.definition(instance.saga_type, instance.version)
        if definition is None or definition.fingerprint != instance.fingerprint:
            return
        self._instances.hold(instance)
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
            generation = state.generation
            key = idempotency_key(instance.saga_id, step.name, phase, generation)
            deadline = self._clock() + step.timeout_for(phase)
            self._local_steps.spawn(
                instance.saga_id, Dispatch(step.name, phase, attempt, key, deadline, generation)
            )

    async def run(self) -> None:
        """Renew the lease every third of its length, and take over what others left."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.lease / 3):
                    await self._wake.wait()
            self._wake.clear()
            try:
                if not await self._store.heartbeat():
                    # Declared dead while paused: what we hold may have been taken over.
                    log.warning("worker %s lost its lease; dropping what it held", self.worker_id)
                    self._instances.forget_all()
                    await self._store.attach(self.worker_id, self.lease, self._definitions())
                await self._clock.sync(self._store)
                await self.take_over()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("lease renewal or takeover failed: %s", exc)


def shape_conflict(
    app: App, live: Sequence[DefinitionRef], unsettled: Sequence[DefinitionRef]
) -> str | None:
    """Why ``app`` must not run on a store whose live workers run ``live`` and whose
    unfinished instances carry ``unsettled``: a definition of the app whose name and version
    they use with another fingerprint (None: no conflict). An instance that carries the app
    definition's legacy fingerprint is no conflict: it is claimed and given the new one."""
    advice = "deploy a changed saga as a new version"
    guide = "(see docs/how-to/deploying-changes.md)"
    for ref in live:
        mine = app.definition(ref.saga_type, ref.version)
        if mine is not None and ref.fingerprint != mine.fingerprint:
            return (
                f"saga {ref.saga_type!r} v{ref.version} has other steps in this worker "
                f"(fingerprint {mine.fingerprint}) than in a running worker "
                f"({ref.fingerprint}): {advice} {guide}"
            )
    for ref in unsettled:
        mine = app.definition(ref.saga_type, ref.version)
        if mine is not None and ref.fingerprint not in (
            mine.fingerprint,
            mine.legacy_fingerprint,
        ):
            return (
                f"saga {ref.saga_type!r} v{ref.version} has other steps in this worker "
                f"(fingerprint {mine.fingerprint}) than its unfinished instances "
                f"({ref.fingerprint}): {advice}, beside the old one until they finish {guide}"
            )
    return None
