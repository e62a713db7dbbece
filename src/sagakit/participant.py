"""Participants: command handlers that reply by themselves, exactly once in effect (C3).

A participant handler is an async function that runs **inside the participant's database
transaction**: its business writes, the inbox record of the command's idempotency key and the
reply (in the participant's outbox) commit together (Semantics 3). On a duplicate command the
stored reply is sent again and the handler does not run. Out of order (Semantics 7): a
compensation with nothing to undo succeeds as a no-op; an action arriving after its own
compensation is refused with a failure reply. Both relate an action and a compensation of the
same step generation (protocol 1.1): an action of a new generation, started by an operator's
retry, runs even after an earlier generation's compensation.

::

    inventory = Participant("inventory")

    @inventory.command("inventory.reserve")
    async def reserve(tx: ParticipantTx, cmd: Command) -> dict:
        await tx.execute("INSERT INTO holds (order_id) VALUES (?)", (cmd.input["order_id"],))
        return {"held": True}

Keep handlers short: the transaction is open while they run. Call slow external services
before or after, passing ``cmd.idempotency_key`` on.

Raise :class:`~sagakit.errors.StepFailed` for a definite business failure (its writes are
rolled back, the failure is recorded and replied), :class:`~sagakit.errors.StepError` (or any
exception) for a retryable error (rolled back, not recorded, so a retry runs again). The reply
carries the same error text as a local step's would (:func:`sagakit.answers.outcome_of`): the
message of a ``StepFailed`` or ``StepError``, ``TypeName: message`` for anything else.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from sagakit.answers import outcome_of
from sagakit.definition import Phase
from sagakit.encoding import JSON, to_json
from sagakit.errors import DefinitionError, EncodingError, MessageRejected
from sagakit.ids import new_id
from sagakit.messages import MAX_MESSAGE_BYTES, Envelope, MessageKind, decode, encode
from sagakit.ports import DeadLetter, OutboxMessage, ParticipantStore, ParticipantTx, Transport
from sagakit.relay import Relay
from sagakit.transitions import Outcome, idempotency_key

log = logging.getLogger("sagakit.participant")


@dataclass(frozen=True)
class Command:
    """A command as a handler sees it. For a compensation, ``input`` is what the action got and
    ``result`` what it returned (None when its outcome was unknown). ``generation`` is the
    step's generation, which ``idempotency_key`` already names (Semantics 2)."""

    saga_id: str
    saga_type: str
    step: str
    phase: Phase
    attempt: int
    idempotency_key: str
    correlation_id: str
    deadline: float | None
    payload: JSON
    generation: int = 1

    @property
    def input(self) -> JSON:
        if self.phase is Phase.COMPENSATION and isinstance(self.payload, dict):
            return self.payload.get("input")
        return self.payload

    @property
    def result(self) -> JSON:
        if self.phase is Phase.COMPENSATION and isinstance(self.payload, dict):
            return self.payload.get("result")
        return None


CommandHandler = Callable[[ParticipantTx, Command], Awaitable[object]]
Setup = Callable[[ParticipantTx], Awaitable[object]]


class Participant:
    """A named participant: a queue of commands and the handlers that serve them."""

    def __init__(self, name: str, *, setup: Setup | None = None) -> None:
        """``setup(tx)`` runs in a transaction when the participant starts serving: create its
        own tables there (idempotently), so a fresh database works with any worker."""
        if not name:
            raise DefinitionError("a participant needs a name")
        if setup is not None and not inspect.iscoroutinefunction(setup):
            raise DefinitionError(f"participant {name!r}: setup must be an async function")
        self.name = name
        self.setup = setup
        self.handlers: dict[str, CommandHandler] = {}

    def command(self, command_type: str) -> Callable[[CommandHandler], CommandHandler]:
        """Decorator: ``fn(tx, cmd)`` serves commands of ``command_type``."""

        def register(fn: CommandHandler) -> CommandHandler:
            if not inspect.iscoroutinefunction(fn):
                raise DefinitionError(
                    f"participant {self.name!r}: the handler for {command_type!r} must be an "
                    "async function"
                )
            if command_type in self.handlers:
                raise DefinitionError(
                    f"participant {self.name!r}: duplicate handler for {command_type!r}"
                )
            self.handlers[command_type] = fn
            return fn

        return register


class ParticipantRunner:
    """Serves one participant's queue on a transport, with its inbox and outbox in ``store``."""

    def __init__(
        self,
        participant: Participant,
        store: ParticipantStore,
        transport: Transport,
        *,
        rescan_interval: float = 2.0,
    ) -> None:
        self.participant = participant
        self._store = store
        self._transport = transport
        self._relay = Relay(
            store,
            participant.name,
            self._publish,
            self._mark_done,
            rescan_interval=rescan_interval,
        )

    async def start(self) -> None:
        setup = self.participant.setup
        if setup is not None:

            async def serialised(tx: ParticipantTx) -> None:
                # Workers start together; concurrent CREATE TABLE IF NOT EXISTS can collide
                # on PostgreSQL, so setups take turns under a transaction-scoped lock.
                if tx.dialect == "postgresql":
                    await tx.execute("SELECT pg_advisory_xact_lock(hashtext('sagakit.setup'))")
                await setup(tx)

            await self._store.transaction(serialised)
        await self._transport.subscribe(self.participant.name, self.handle)
        self._relay.start()

    async def stop(self) -> None:
        await self._transport.unsubscribe(self.participant.name)
        await self._relay.stop()

    async def handle(self, body: bytes) -> None:
        """Consume one command message; returns once its reply is committed to the outbox."""
        try:
            env = decode(body)
            if env.kind is not MessageKind.COMMAND:
                raise MessageRejected(f"expected a command, got a {env.kind.value}")
            if env.type not in self.participant.handlers:
                raise MessageRejected(
                    f"participant {self.participant.name!r} has no handler for {env.type!r}"
                )
            if not env.reply_to:
                raise MessageRejected("a command needs reply_to")
        except MessageRejected as exc:
            reason = str(exc)
            await self._store.transaction(
                lambda tx: _dead_letter(tx, self.participant.name, reason, body)
            )
            log.warning(
                "dead-lettered a message for %s: %s",
                self.participant.name,
                reason,
                extra={"event": "dead_letter", "reason": reason},
            )
            return
        replies = await self._store.transaction(lambda tx: self._serve(tx, env))
        self._relay.send(replies)

    # Runs inside the transaction.
    async def _serve(self, tx: ParticipantTx, env: Envelope) -> list[OutboxMessage]:
        name = self.participant.name
        key = env.idempotency_key
        if tx.dialect == "postgresql":
            # An action and its compensation check each other's inbox rows: without a lock
            # on the step, both checks could pass at once and an undo be followed by the
            # effect it undid (Semantics 7). SQLite's single writer serialises them anyway.
            await tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext(?))", (f"{name}/{env.saga_id}/{env.step}",)
            )
        stored = await tx.inbox_get(name, key)
        if stored is not None:
            # Its copies may come for a redelivery window after this one (an operator's retry
            # of a step with an unknown outcome sends the old key long after it was stored):
            # retention must count from now, or a purge could let it run again.
            await tx.inbox_touch(name, key)
            return [await self._reply_from(tx, env, decode(stored))]
        if env.phase is Phase.ACTION:
            undo = await tx.inbox_get(
                name, idempotency_key(env.saga_id, env.step, Phase.COMPENSATION, env.generation)
            )
            if undo is not None:
                return [
                    await self._record(
                        tx,
                        env,
                        Outcome.FAILURE,
                        None,
                        "refused: the action arrived after its compensation",
                    )
                ]
        else:
            done = await tx.inbox_get(
                name, idempotency_key(env.saga_id, env.step, Phase.ACTION, env.generation)
            )
            if done is None or decode(done).outcome is not Outcome.SUCCESS:
                return [await self._record(tx, env, Outcome.SUCCESS, {"noop": True}, None)]
        handler = self.participant.handlers[env.type]
        command = Command(
            env.saga_id,
            env.saga_type,
            env.step,
            env.phase,
            env.attempt,
            key,
            env.correlation_id,
            env.deadline,
            env.payload,
            env.generation,
        )
        await tx.execute("SAVEPOINT sagakit_handler")
        try:
            result = to_json(await handler(tx, command), path=f"result of {env.type}")
            size = len(encode(self._reply(env, Outcome.SUCCESS, result, None)))
            if size > MAX_MESSAGE_BYTES:
                # Recorded, it would be re-sent on every retry and rejected every time.
                raise EncodingError(
                    f"result of {env.type}: the reply of {size} bytes exceeds {MAX_MESSAGE_BYTES}"
                )
        except Exception as exc:
            await tx.execute("ROLLBACK TO SAVEPOINT sagakit_handler")
            answer = outcome_of(exc)
            if answer.unexpected:  # a bug, most likely: the reply carries only its message
                log.warning(
                    "participant %s: %s for saga %s raised an unexpected %s; answered as a "
                    "retryable error",
                    self.participant.name,
                    env.type,
                    env.saga_id,
                    type(exc).__name__,
                    exc_info=exc,
                    extra={
                        "saga_id": env.saga_id,
                        "saga_type": env.saga_type,
                        "correlation_id": env.correlation_id,
                        "step": env.step,
                        "phase": env.phase.value,
                        "attempt": env.attempt,
                        "reason": answer.error,
                        "event": "unexpected_exception",
                    },
                )
            if answer.outcome is Outcome.FAILURE:
                # Definite: recorded, so a duplicate gets the same answer (Semantics 3).
                return [await self._record(tx, env, answer.outcome, None, answer.error)]
            reply = self._reply(
                env,
                answer.outcome,
                None,
                answer.error,
                retryable=answer.retryable,
                retry_after=answer.retry_after,
            )
            return [await self._put(tx, reply)]
        await tx.execute("RELEASE SAVEPOINT sagakit_handler")
        return [await self._record(tx, env, Outcome.SUCCESS, result, None)]

    async def _record(
        self, tx: ParticipantTx, env: Envelope, outcome: Outcome, result: JSON, error: str | None
    ) -> OutboxMessage:
        reply = self._reply(env, outcome, result, error)
        await tx.inbox_put(self.participant.name, env.idempotency_key, encode(reply))
        return await self._put(tx, reply)

    async def _reply_from(
        self, tx: ParticipantTx, env: Envelope, stored: Envelope
    ) -> OutboxMessage:
        # The same answer, as a new message caused by the duplicate command.
        reply = replace(
            stored,
            id=new_id(),
            causation_id=env.id,
            attempt=env.attempt,
            timestamp=time.time(),
        )
        return await self._put(tx, reply, destination=env.reply_to)

    def _reply(
        self,
        env: Envelope,
        outcome: Outcome,
        result: JSON,
        error: str | None,
        *,
        retryable: bool = True,
        retry_after: float | None = None,
    ) -> Envelope:
        return replace(
            env,
            id=new_id(),
            kind=MessageKind.REPLY,
            causation_id=env.id,
            timestamp=time.time(),
            payload=result,
            outcome=outcome,
            error=error,
            retryable=retryable,
            retry_after=retry_after,
        )

    async def _put(
        self, tx: ParticipantTx, reply: Envelope, destination: str | None = None
    ) -> OutboxMessage:
        target = destination or reply.reply_to
        assert target is not None
        message = OutboxMessage(
            reply.id, self.participant.name, target, encode(reply), reply.saga_id
        )
        await tx.outbox_put(message)
        return message

    async def _publish(self, message: OutboxMessage) -> None:
        await self._transport.publish(message.destination, message.body)

    async def _mark_done(self, message_id: str) -> None:
        await self._store.transaction(lambda tx: tx.outbox_done([message_id]))


async def _dead_letter(tx: ParticipantTx, source: str, reason: str, body: bytes) -> None:
    await tx.dead_letter(DeadLetter(source, reason, body, at=time.time()))


__all__ = ["Command", "CommandHandler", "Participant", "ParticipantRunner"]
