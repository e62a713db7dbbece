"""Local steps: runs the app's step functions and hands their answers to the committer.

A run starts once the commit that set its step running is written (or when a claimed
instance's state says it is running), and it is run at most once per attempt by this worker:
its key stays in ``tasks`` until its reply is committed or dropped. A crash between the run
and the commit of its reply runs it again with the same idempotency key (Semantics 4).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from sagakit.answers import outcome_of
from sagakit.app import App
from sagakit.definition import Local, SagaDefinition
from sagakit.encoding import to_json
from sagakit.errors import (
    ConcurrencyConflict,
    DefinitionMissing,
    SagaNotFound,
    StoreRefused,
)
from sagakit.state import SagaInstance
from sagakit.transitions import Dispatch, Outcome, Reply
from sagakit.worker.context import step_context
from sagakit.worker.instances import Instances
from sagakit.worker.items import Inbox, Item, LocalKey
from sagakit.worker.local_timeouts import LocalTimeouts
from sagakit.worker.logbook import Logbook

log = logging.getLogger("sagakit.worker")


class InstanceReader(Protocol):
    async def get(self, saga_id: str) -> SagaInstance | None: ...


class LocalAnswer:
    """The committer's answer to a local step's reply, taken without a loop callback.

    A future would wake the step's task once more per step only to let it end. Committed:
    the run is over. Not committed: the reply (not the step) is submitted again, as long as
    this worker still owns the instance (see ``LocalSteps._resubmit``).
    """

    __slots__ = ("_done", "_key", "_reply", "_steps")

    def __init__(self, steps: LocalSteps, key: LocalKey, reply: Reply) -> None:
        self._steps, self._key, self._reply = steps, key, reply
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, result: object, /) -> None:
        self._done = True
        self._steps.tasks.pop(self._key, None)

    def set_exception(self, exception: BaseException, /) -> None:
        self._done = True
        self._steps.failed(self._key, self._reply, exception)


class LocalSteps:
    def __init__(
        self,
        app: App,
        reader: InstanceReader,
        instances: Instances,
        inbox: Inbox,
        *,
        worker_id: str,
        clock: Callable[[], float],
        logbook: Logbook,
    ) -> None:
        self._app = app
        self._reader = reader
        self._instances = instances
        self._inbox = inbox
        self._worker_id = worker_id
        self._clock = clock
        self._logbook = logbook
        self._timeouts = LocalTimeouts()
        #: Runs by what they run (one run per attempt), until their reply is committed.
        self.tasks: dict[LocalKey, asyncio.Task[None]] = {}
        self.running = False

    def spawn(self, saga_id: str, dispatch: Dispatch) -> None:
        key = (saga_id, dispatch.step, dispatch.phase, dispatch.attempt)
        if key in self.tasks or not self.running:
            return
        self.tasks[key] = asyncio.create_task(self._run(key, dispatch))

    async def stop(self) -> None:
        """Cancel every run; those not committed are run again after a restart."""
        self.running = False
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        # gather, not a suppressing loop: a cancellation of stop() itself must propagate.
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()

    def _submit(self, key: LocalKey, reply: Reply) -> None:
        self._inbox.put_nowait(Item(key[0], event=reply, future=LocalAnswer(self, key, reply)))

    async def _instance(self, saga_id: str) -> SagaInstance | None:
        return self._instances.cache.get(saga_id) or await self._reader.get(saga_id)

    async def _run(self, key: LocalKey, dispatch: Dispatch) -> None:
        # The key stays in tasks until the reply is committed (or dropped), so the same
        # attempt is never run twice by this worker (a takeover of its own instances after
        # a lost lease adopts them again).
        saga_id = key[0]
        try:
            instance = await self._instance(saga_id)
        except Exception as exc:  # the store is unreachable: read again in a while
            self.failed(key, None, exc, dispatch)
            return
        if instance is None or instance.owner != self._worker_id:
            self.tasks.pop(key, None)
            return
        definition = self._app.definition(instance.saga_type, instance.version)
        if definition is None or definition.fingerprint != instance.fingerprint:
            self.tasks.pop(key, None)
            return
        step = definition.step(dispatch.step)
        handler = step.handler(dispatch.phase)
        assert isinstance(handler, Local)
        reply = await self._call(
            handler, instance, definition, dispatch, step.timeout_for(dispatch.phase)
        )
        if self.running:
            self._submit(key, reply)
        else:
            self.tasks.pop(key, None)

    def failed(
        self,
        key: LocalKey,
        reply: Reply | None,
        exc: BaseException,
        dispatch: Dispatch | None = None,
    ) -> None:
        """A local run's reply was not committed (or its instance not read): try again,
        unless the instance is gone or no longer this worker's, or the worker stops."""
        if not self.running or isinstance(exc, (DefinitionMissing, SagaNotFound)):
            self.tasks.pop(key, None)
            return
        if isinstance(exc, StoreRefused):  # refused twice: reported, never retried in a loop
            log.error(
                "local step %s of %s: its answer was refused by the store: %s",
                key[1],
                key[0],
                exc,
                extra={"saga_id": key[0]},
            )
            self.tasks.pop(key, None)
            return
        if not isinstance(exc, ConcurrencyConflict):
            log.warning(
                "local step %s of %s: answer not committed, retrying: %s",
                key[1],
                key[0],
                exc,
                extra={"saga_id": key[0]},
            )
        self._instances.forget(key[0])
        self.tasks[key] = asyncio.create_task(self._resubmit(key, reply, dispatch, exc))

    async def _resubmit(
        self,
        key: LocalKey,
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
            self.tasks.pop(key, None)
            self.spawn(key[0], dispatch)
            return
        try:
            instance = await self._instance(key[0])
        except Exception as error:
            self.failed(key, reply, error)
            return
        if instance is None or instance.owner != self._worker_id or not self.running:
            self.tasks.pop(key, None)
            return
        self._submit(key, reply)

    async def _call(
        self,
        handler: Local,
        instance: SagaInstance,
        definition: SagaDefinition,
        dispatch: Dispatch,
        timeout: float,
    ) -> Reply:
        step, phase, attempt = dispatch.step, dispatch.phase, dispatch.attempt
        generation = dispatch.generation
        try:
            context = step_context(
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
            timeouts = self._timeouts
            slot = timeouts.start(task, timeout)
            try:
                result = await handler.fn(context)
            except asyncio.CancelledError:
                # Ours only if no one else (a stop) asked for the cancellation too.
                if timeouts.finish(task, slot) and task.uncancel() <= cancelling:
                    raise TimeoutError from None
                raise
            except BaseException:
                if timeouts.finish(task, slot):
                    task.uncancel()
                raise
            if timeouts.finish(task, slot):
                task.uncancel()  # the deadline passed as the run ended: its answer stands
            result = to_json(result, path=f"result of {step}")
            return Reply(step, phase, attempt, Outcome.SUCCESS, result, generation=generation)
        except Exception as exc:
            answer = outcome_of(exc, timeout=timeout)
            if answer.unexpected:  # a bug, most likely: the history keeps only its message
                self._logbook.crashed(instance, step, phase, attempt, exc)
            return Reply(
                step,
                phase,
                attempt,
                answer.outcome,
                error=answer.error,
                retryable=answer.retryable,
                retry_after=answer.retry_after,
                generation=generation,
            )
