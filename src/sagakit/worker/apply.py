"""Apply: one item and its instance -> decide() -> what the commit writes and sends.

The applier turns a decision into the instance write, its history, timer operations and
outbound command messages, and resolves idempotent starts. It does no I/O but the two reads a
keyed start needs; what it decides is written by the committer.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import uuid
from collections.abc import Callable
from typing import Protocol

from sagakit.answers import unsent
from sagakit.app import App
from sagakit.definition import Local, Phase, Remote, SagaDefinition
from sagakit.encoding import JSON, to_json
from sagakit.errors import (
    DefinitionMissing,
    EncodingError,
    IdempotencyConflict,
    SagaNotFound,
)
from sagakit.messages import MAX_MESSAGE_BYTES, Envelope, MessageKind
from sagakit.messages import encode as encode_envelope
from sagakit.ports import (
    ORCHESTRATOR,
    Batch,
    CommandResult,
    CommandState,
    DeadLetter,
    OutboxMessage,
    RetiredKey,
    Timer,
    TimerOp,
    TimerOpKind,
)
from sagakit.starts import definition_mismatch, resolve_start, start_refusal
from sagakit.state import HistoryEntry, HistoryKind, SagaInstance, evolve
from sagakit.transitions import (
    Begin,
    CancelTimers,
    Decision,
    Dispatch,
    Reply,
    SetTimer,
    decide,
    new_instance,
)
from sagakit.worker.context import step_context
from sagakit.worker.instances import Instances
from sagakit.worker.items import Inbox, Item, Work, answer

log = logging.getLogger("sagakit.worker")


class KeyLookup(Protocol):
    """What a keyed start reads: the live instance with the key, or its retired record."""

    async def find_by_key(self, saga_type: str, key: str) -> SagaInstance | None: ...

    async def retired_key(self, saga_type: str, key: str) -> RetiredKey | None: ...


class Applier:
    def __init__(
        self,
        app: App,
        keys: KeyLookup,
        instances: Instances,
        inbox: Inbox,
        *,
        worker_id: str,
        reply_queue: str,
        clock: Callable[[], float],
        orphans: set[str],
        wake_claims: Callable[[], None],
        unserved: Callable[[str], str | None] = lambda participant: None,
    ) -> None:
        """``unserved(participant)`` says why a command to ``participant`` cannot be delivered
        at all (the in-process transport, with nothing in the process serving it), or None."""
        self._app = app
        self._keys = keys
        self._instances = instances
        self._inbox = inbox
        self._worker_id = worker_id
        self._reply_queue = reply_queue
        self._clock = clock
        self._orphans = orphans
        self._wake_claims = wake_claims
        self._unserved = unserved
        self._id_prefix = uuid.uuid4().hex[:16]
        self._ids = itertools.count(1)

    def _next_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):x}"

    async def start(
        self,
        work: Work,
        item: Item,
        now: float,
        keys_in_batch: dict[tuple[str, str], Work],
    ) -> None:
        start = item.start
        assert start is not None
        definition = start.definition

        def settle(error: str | None) -> None:
            # A queued start is answered too, or it would be picked up again and again.
            if item.command_id is not None:
                state = CommandState.REFUSED if error else CommandState.APPLIED
                work.transition.commands.append(CommandResult(item.command_id, state, error))

        mismatch = definition_mismatch(
            definition.name, definition.version, definition.fingerprint, start.fingerprint
        )
        if mismatch is not None:  # before anything is written or sent (Semantics 1)
            answer(item, mismatch)
            settle(start_refusal(mismatch))
            return
        if start.key is not None:
            existing: SagaInstance | None = None
            retired: RetiredKey | None = None
            other = keys_in_batch.get((definition.name, start.key))
            if other is not None:
                existing = other.instance
            elif (definition.name, start.key) in self._instances.staged_keys:
                # The key's instance is being committed by the batch in flight: decide this
                # start after that commit, so it never answers with an uncommitted id.
                work.items.remove(item)
                self._inbox.put_nowait(item)
                return
            else:
                existing = await self._keys.find_by_key(definition.name, start.key)
                if existing is None:  # its instance may have been purged: the key still holds
                    retired = await self._keys.retired_key(definition.name, start.key)
            resolved = resolve_start(start.key, start.digest, existing=existing, retired=retired)
            if isinstance(resolved, IdempotencyConflict):
                answer(item, resolved)
                settle(start_refusal(resolved))
                return
            if resolved is not None:
                item.result = resolved
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
        instance = evolve(instance, owner=self._worker_id)
        work.instance = instance
        work.expected = None
        work.changed = True
        work.transition.history.append(
            HistoryEntry(
                now, HistoryKind.CREATED, detail={"correlation_id": instance.correlation_id}
            )
        )
        self.decision(work, decide(instance, Begin(), definition, now), definition, now, None)
        item.result = work.saga_id
        settle(None)

    def event(self, work: Work, item: Item, now: float, batch: Batch) -> None:
        event = item.event
        assert event is not None
        instance = work.instance
        if instance is None:
            # Nobody will ever advance it: its timer row and message are cleared away.
            _consume(work, item)
            self.reject(work, item, f"unknown saga instance {work.saga_id}", batch)
            return
        if instance.owner != self._worker_id and not instance.status.terminal:
            # Not ours: touch nothing of it (not even its timers). Released by a clean stop,
            # it is claimed at once and the message comes back; owned by a live worker,
            # that worker's timeout and retry fetch the answer again from the inbox. (A
            # finished instance is answered by whichever worker gets a message or command for
            # it, since its last owner may be long gone after a restart: under decide()'s
            # rules as always, a late reply recorded, a command refused, the write checked by
            # its revision.)
            if instance.owner is None:
                self._wake_claims()
                answer(item, DefinitionMissing(f"instance {work.saga_id} has no owner yet"))
            log.debug("event for %s, owned by %s: left to its owner", work.saga_id, instance.owner)
            return
        definition = self._app.definition(instance.saga_type, instance.version)
        if definition is None or definition.fingerprint != instance.fingerprint:
            if instance.status.terminal:
                # Nothing will ever advance it, so nothing waits for a worker that has its
                # definition: its message is dead-lettered, its command refused, with why.
                _consume(work, item)
                self.reject(
                    work,
                    item,
                    f"saga {work.saga_id} is already {instance.status.value} (and this worker "
                    f"has no definition {instance.saga_type} v{instance.version} to record "
                    "this in)",
                    batch,
                )
                return
            self._orphan(item, instance)
            return
        _consume(work, item)
        decision = decide(instance, event, definition, now)
        if decision.rejected is not None:
            self.reject(work, item, decision.rejected, batch)
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
        self.decision(work, decision, definition, now, item.message_id)
        if item.command_id is not None:
            work.transition.commands.append(CommandResult(item.command_id, CommandState.APPLIED))

    def decision(
        self,
        work: Work,
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
                handler = definition.step(effect.step).handler(effect.phase)
                if isinstance(handler, Local):
                    # A local run needs no message: the committed state says "running", and
                    # a restart (or a takeover) runs it again from there (Semantics 4).
                    work.local_runs.append(effect)
                    continue
                assert isinstance(handler, Remote)
                sent = self._command(decision.instance, definition, effect, handler, now, causation)
                if isinstance(sent, OutboxMessage):
                    work.transition.outbox.append(sent)
                    continue
                # Nothing was sent: the step's answer says so (a definite failure, unless
                # earlier attempts went out under the same key).
                said = unsent(work.instance.step(effect.step), effect.phase, sent)
                failure = Reply(
                    effect.step,
                    effect.phase,
                    effect.attempt,
                    said.outcome,
                    error=said.error,
                    retryable=said.retryable,
                    generation=effect.generation,
                )
                self.decision(
                    work,
                    decide(work.instance, failure, definition, now),
                    definition,
                    now,
                    causation,
                )

    def _command(
        self,
        instance: SagaInstance,
        definition: SagaDefinition,
        dispatch: Dispatch,
        handler: Remote,
        now: float,
        causation: str | None,
    ) -> OutboxMessage | str:
        """The command message ``dispatch`` sends, or why it cannot be sent."""
        problem = self._unserved(handler.participant)
        if problem is not None:
            return problem
        try:
            return self._command_message(instance, definition, dispatch, now, causation)
        except Exception as exc:  # the step's input cannot be built or encoded
            return f"cannot build the command: {exc}"

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
            context = step_context(instance, definition, step.name, Phase.ACTION, 0, "", now, None)
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
            generation=dispatch.generation,
            correlation_id=instance.correlation_id,
            timestamp=now,
            payload=payload,
            causation_id=causation,
            reply_to=self._reply_queue,
            deadline=dispatch.deadline,
            traceparent=_traceparent(instance.saga_id, self._next_id()),
        )
        body = encode_envelope(env)
        if len(body) > MAX_MESSAGE_BYTES:
            raise EncodingError(f"command of {len(body)} bytes exceeds {MAX_MESSAGE_BYTES}")
        return OutboxMessage(env.id, ORCHESTRATOR, handler.participant, body, instance.saga_id)

    def reject(self, work: Work, item: Item, reason: str, batch: Batch) -> None:
        """Refuse ``item``: its message is dead-lettered, its command refused, its caller
        told."""
        # Recorded with the work, so that they go if what it decided is dropped (committer).
        if item.body is not None:
            letter = DeadLetter(item.source or "worker", reason, item.body, at=self._clock())
            work.dead_letters.append(letter)
            batch.dead_letters.append(letter)  # logged once it is stored (see logbook.py)
        elif item.command_id is not None:
            work.transition.commands.append(
                CommandResult(item.command_id, CommandState.REFUSED, reason)
            )
        elif item.timer is None:
            answer(item, SagaNotFound(reason))

    def _orphan(self, item: Item, instance: SagaInstance) -> None:
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
        answer(
            item,
            DefinitionMissing(
                f"no definition {instance.saga_type} v{instance.version} ({instance.fingerprint})"
            ),
        )


def _consume(work: Work, item: Item) -> None:
    if item.timer is not None:
        work.transition.timer_ops.append(TimerOp(TimerOpKind.FIRED, item.timer))


def _traceparent(saga_id: str, span_seed: str) -> str:
    # One trace per saga: the trace id is derived from the saga id, each command is a span.
    trace_id = hashlib.sha256(saga_id.encode()).hexdigest()[:32]
    span_id = hashlib.blake2b(span_seed.encode(), digest_size=8).hexdigest()
    return f"00-{trace_id}-{span_id}-01"
