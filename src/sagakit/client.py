"""The client: start, query and operate sagas. Used by code, the CLI and the dashboard.

Operator commands (abort, retry, resolve) are durable rows in the store's command queue,
applied by a worker under the same rules as everything else (Semantics 11). The client checks
them against the instance's current state first, so a command that is invalid now is refused
at once with :class:`~sagakit.errors.CommandRefused`; with no worker running, a valid command
waits in the queue.

A client with no worker in its process queues its starts the same way. A queued start holds
its idempotency key like an instance does (Semantics 15), is listed and shown by the id the
client returned (:meth:`Client.queued_starts`, :meth:`Client.queued_start`), and is cancelled
by :meth:`Client.abort` until a worker applies it.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

from sagakit.app import App
from sagakit.definition import Saga, SagaDefinition
from sagakit.encoding import JSON, check_json, check_name, digest_of, to_json
from sagakit.errors import (
    CommandRefused,
    ConfigurationError,
    IdempotencyConflict,
    SagakitError,
    SagaNotFound,
)
from sagakit.ids import new_id
from sagakit.ports import (
    CommandQueue,
    CommandState,
    DeadLetter,
    DeadLetters,
    DefinitionCatalog,
    DefinitionRecord,
    DefinitionRef,
    DefinitionsInUse,
    InstanceFilter,
    InstanceQueries,
    QueuedCommand,
    Retention,
    StartQueue,
)
from sagakit.retention import RetentionPolicy
from sagakit.starts import definition_mismatch, resolve_start, start_error
from sagakit.state import HistoryEntry, SagaInstance, SagaStatus
from sagakit.transitions import Abort, OperatorCommand, Resolve, Retry, check_command


class ClientStore(
    InstanceQueries,
    CommandQueue,
    StartQueue,
    DefinitionsInUse,
    DeadLetters,
    Retention,
    Protocol,
):
    """The store ports a client needs."""


class Runner(Protocol):
    """What a worker in the same process offers a client."""

    app: App

    async def start_saga(
        self,
        definition: SagaDefinition,
        data: object,
        *,
        key: str | None = None,
        correlation_id: str | None = None,
    ) -> str: ...

    async def wait_settled(self, saga_id: str, timeout: float | None = None) -> SagaInstance: ...

    def poke(self) -> None: ...


@dataclass(frozen=True)
class SagaHandle:
    """A started saga. A start queued with a key that another start already used resolves to
    that start's instance: the handle then finds it by its key. A queued start that a worker
    refuses makes ``get`` and ``result`` raise its error (an IdempotencyConflict when another
    start took its key with other input)."""

    saga_id: str
    client: Client
    saga_type: str | None = None
    key: str | None = None
    #: The command of a start queued by a client without a worker in its process.
    command_id: int | None = None

    @property
    def queued(self) -> bool:
        """Whether the saga waits, queued, for a worker to start it (as far as the client
        knew when it answered)."""
        return self.command_id is not None

    async def get(self) -> SagaInstance:
        found = await self.client._started(self.saga_id, self.saga_type, self.key, self.command_id)
        if found is None:
            raise SagaNotFound(f"saga {self.saga_id} is queued: no worker has started it yet")
        return found

    async def result(self, timeout: float | None = None) -> SagaInstance:
        """Wait until the instance is completed, failed or stuck, and return it."""
        return await self.client.wait(
            self.saga_id,
            timeout=timeout,
            saga_type=self.saga_type,
            key=self.key,
            command_id=self.command_id,
        )


@dataclass(frozen=True)
class CommandHandle:
    id: int
    saga_id: str
    client: Client
    #: The command was an abort that cancelled a queued start at once (``id`` is the start's
    #: command): nothing is left for a worker to apply.
    cancelled_start: bool = False

    async def wait(self, timeout: float | None = None) -> QueuedCommand:
        """Wait until a worker applied the command; raises CommandRefused if it refused it."""
        if self.cancelled_start:
            command = await self.client.store.command(self.id)
            if command is None:
                raise SagakitError(f"no command {self.id}")
            return command
        return await self.client.wait_command(self.id, timeout=timeout)


@dataclass(frozen=True)
class QueuedStart:
    """A start queued by a client without a worker, as ``list`` and ``show`` report it.

    ``state`` is pending until a worker applies it (then its instance has ``saga_id``, or
    the instance that held its key) or refuses it (``error`` says why: another input under
    its key, an operator's abort...). ``stalled`` says why no worker applies a pending one.
    """

    saga_id: str
    saga_type: str
    #: None for a start by name alone: the worker that applies it starts its newest version.
    version: int | None
    data: JSON
    key: str | None
    correlation_id: str | None
    queued_at: float
    command_id: int
    state: CommandState
    error: str | None = None
    stalled: str | None = None

    @property
    def what(self) -> str:
        """``order_fulfillment v2``, or for a start by name ``order_fulfillment (newest)``."""
        return f"{self.saga_type} " + ("(newest)" if self.version is None else f"v{self.version}")


class Client:
    """Start, query and operate sagas over a store.

    ``worker.client`` is a client bound to a worker in the same process; it can start sagas.
    ``Client(store)`` alone (the CLI, another process) queries and enqueues operator commands.
    """

    def __init__(
        self, store: ClientStore, *, worker: Runner | None = None, poll_interval: float = 0.05
    ) -> None:
        self.store = store
        self._worker = worker
        self._poll = poll_interval

    # -- starting -------------------------------------------------------------------------

    async def start(
        self,
        saga: SagaDefinition | Saga[object] | str,
        data: object,
        *,
        key: str | None = None,
        correlation_id: str | None = None,
        version: int | None = None,
    ) -> SagaHandle:
        """Start an instance (idempotent with ``key``); returns once it is durably created,
        or, with no worker in this process, once its start is queued for one.

        ``saga`` is a definition, or a saga type's name (what the CLI and the HTTP API have):
        then ``version`` picks the version, and without it the newest version that the worker
        applying the start runs is started.

        Raises EncodingError, before anything is written, when ``data``, ``key`` or
        ``correlation_id`` breaks the value rules (docs/concepts.md)."""
        if key is not None:
            check_name(key, "idempotency key")
        if correlation_id is not None:
            check_name(correlation_id, "correlation id")
        if isinstance(saga, str):
            check_name(saga, "saga type")
            if self._worker is None:
                return await self._enqueue_start(saga, version, data, key, correlation_id)
            found = (
                self._worker.app.latest(saga)
                if version is None
                else self._worker.app.definition(saga, version)
            )
            if found is None:
                raise ConfigurationError(f"this worker runs no saga {saga!r} version {version}")
            saga = found
        definition = saga.build() if isinstance(saga, Saga) else saga
        if self._worker is not None:
            saga_id = await self._worker.start_saga(
                definition, data, key=key, correlation_id=correlation_id
            )
            return SagaHandle(saga_id, self)
        return await self._enqueue_start(
            definition.name, definition.version, data, key, correlation_id, definition.fingerprint
        )

    async def _enqueue_start(
        self,
        saga_type: str,
        version: int | None,
        data: object,
        key: str | None,
        correlation_id: str | None,
        fingerprint: str | None = None,
    ) -> SagaHandle:
        # No worker here: a durable start command that a worker with the definition applies
        # (Semantics 11). What can be answered now is, under the worker's rules: a running
        # worker's other definition under this name and version is refused (Semantics 1); a
        # key already used, by an instance or a queued start, answers with its instance for
        # the same input and an IdempotencyConflict for another (Semantics 15).
        encoded = to_json(data, path="saga data")
        for ref in await self.store.live_definitions() if fingerprint is not None else ():
            if (ref.saga_type, ref.version) == (saga_type, version):
                mismatch = definition_mismatch(
                    ref.saga_type, ref.version, ref.fingerprint, fingerprint
                )
                if mismatch is not None:
                    raise mismatch
        if key is not None:
            existing = await self.store.find_by_key(saga_type, key)
            retired = queued = None
            if existing is None:  # its instance may have been purged: the key still holds
                retired = await self.store.retired_key(saga_type, key)
            if existing is None and retired is None:
                queued = await self.store.queued_start(saga_type, key)
            resolved = resolve_start(
                key, digest_of(encoded), existing=existing, retired=retired, queued=queued
            )
            if isinstance(resolved, IdempotencyConflict):
                raise resolved
            if resolved is not None:
                command_id = queued.id if queued is not None else None
                return SagaHandle(resolved, self, saga_type, key, command_id)
        saga_id = new_id()
        body: dict[str, JSON] = {
            "saga_type": saga_type,
            "version": version,
            # None for a start by name: the worker that applies it runs its own definition.
            "fingerprint": fingerprint,
            "data": encoded,
            "key": key,
            "correlation_id": correlation_id,
        }
        command_id = await self.store.enqueue(saga_id, "start", body)
        return SagaHandle(saga_id, self, saga_type, key, command_id)

    async def run(
        self,
        saga: SagaDefinition | Saga[object] | str,
        data: object,
        *,
        key: str | None = None,
        correlation_id: str | None = None,
        version: int | None = None,
        timeout: float | None = None,
    ) -> SagaInstance:
        """Start an instance (as :meth:`start`) and wait until it is completed, failed or
        stuck."""
        handle = await self.start(
            saga, data, key=key, correlation_id=correlation_id, version=version
        )
        return await handle.result(timeout)

    # -- queries --------------------------------------------------------------------------

    async def get(self, saga_id: str) -> SagaInstance:
        instance = await self.store.get(saga_id)
        if instance is None:
            raise SagaNotFound(f"no saga instance {saga_id}")
        return instance

    async def list(
        self,
        *,
        status: SagaStatus | str | None = None,
        saga_type: str | None = None,
        correlation_id: str | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
        limit: int = 100,
    ) -> builtins.list[SagaInstance]:
        return await self.store.list(
            InstanceFilter(
                status=SagaStatus(status) if status is not None else None,
                saga_type=saga_type,
                correlation_id=correlation_id,
                created_after=created_after,
                created_before=created_before,
                limit=limit,
            )
        )

    async def stalled(self, instance: SagaInstance) -> str | None:
        """Why ``instance`` is not advancing, when no running worker can advance it
        (Semantics 1); None when it is finished or some live worker runs its definition."""
        return (await self.stalled_many([instance]))[0]

    async def stalled_many(
        self, instances: builtins.list[SagaInstance]
    ) -> builtins.list[str | None]:
        """:meth:`stalled` for many instances, with one look at the running workers."""
        live = await self.store.live_fingerprints() if instances else set()
        reasons: list[str | None] = []
        for instance in instances:
            if instance.status.terminal or instance.fingerprint in live:
                reasons.append(None)
                continue
            what = f"{instance.saga_type} v{instance.version} (fingerprint {instance.fingerprint})"
            reasons.append(
                f"no worker is running; {what} waits for one"
                if not live
                else f"no running worker has the definition {what}"
            )
        return reasons

    async def definitions(self) -> builtins.list[DefinitionRecord]:
        """The saga definitions workers recorded in the store (what ``sagakit describe``
        shows without the app); ConfigurationError for a store that records none."""
        if not isinstance(self.store, DefinitionCatalog):
            raise ConfigurationError(
                "this store does not record saga definitions; describe them from the app "
                "(sagakit describe --app MODULE:ATTR)"
            )
        return await self.store.definitions()

    async def history(self, saga_id: str) -> builtins.list[HistoryEntry]:
        await self.get(saga_id)
        return await self.store.history(saga_id)

    async def dead_letters(self, limit: int = 100) -> builtins.list[DeadLetter]:
        return await self.store.dead_letters(limit)

    async def wait(
        self,
        saga_id: str,
        *,
        timeout: float | None = None,
        saga_type: str | None = None,
        key: str | None = None,
        command_id: int | None = None,
    ) -> SagaInstance:
        """Wait until the instance is completed, failed or stuck.

        For a queued start (its ``command_id``, ``saga_type`` and ``key``), the instance
        holding that key is waited for, whichever start created it; a start the worker
        refused raises its error.
        """
        if self._worker is not None:
            return await self._worker.wait_settled(saga_id, timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            instance = await self._started(saga_id, saga_type, key, command_id)
            if instance is not None and instance.status.settled:
                return instance
            if deadline is not None and time.monotonic() >= deadline:
                state = instance.status.value if instance else "queued"
                raise TimeoutError(f"saga {saga_id} is still {state}")
            await asyncio.sleep(self._poll)

    async def _started(
        self, saga_id: str, saga_type: str | None, key: str | None, command_id: int | None
    ) -> SagaInstance | None:
        """The instance a start made: its own, or (a queued start with a key another start
        used with the same input) the one holding its key; None while it is queued. A queued
        start that was refused raises its error, never answering with another's instance."""
        found = await self.store.get(saga_id)
        if found is not None:
            return found
        if command_id is not None:
            command = await self.store.command(command_id)
            if command is not None and command.state is CommandState.REFUSED:
                raise start_error(command.error)
            if command is None or command.state is CommandState.PENDING:
                return None
        if saga_type is not None and key is not None:
            found = await self.store.find_by_key(saga_type, key)
            if found is None and await self.store.retired_key(saga_type, key):
                raise SagaNotFound(f"the saga started with key {key!r} has been purged")
        return found

    # -- queued starts --------------------------------------------------------------------

    async def queued_starts(
        self, *, saga_type: str | None = None, limit: int = 100
    ) -> builtins.list[QueuedStart]:
        """Starts waiting in the queue for a worker, oldest first, each with why no worker
        applies it when that is known."""
        commands = await self.store.queued_starts(limit if saga_type is None else 10_000)
        starts = [_queued_start(c) for c in commands]
        if saga_type is not None:
            starts = [s for s in starts if s.saga_type == saga_type][:limit]
        if not starts:
            return []
        live = await self.store.live_definitions()
        return [_with_stall(s, live) for s in starts]

    async def queued_start(self, saga_id: str) -> QueuedStart | None:
        """The start queued for ``saga_id`` (pending, applied or refused), if one was."""
        command = await self.store.start_command(saga_id)
        if command is None:
            return None
        start = _queued_start(command)
        if start.state is not CommandState.PENDING:
            return start
        return _with_stall(start, await self.store.live_definitions())

    # -- retention ------------------------------------------------------------------------

    async def purge(
        self,
        policy: RetentionPolicy,
        *,
        archive: Callable[[SagaInstance, builtins.list[HistoryEntry]], Awaitable[None]]
        | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[int, int]:
        """Delete finished instances older than the policy, in batches; then expired keys.

        ``archive`` receives each instance and its history before it is deleted;
        ``progress`` the number of instances purged so far, after each batch. Returns
        (instances purged, keys purged).
        """
        purged = 0
        while True:
            ids = await self.store.finished_before(policy.instances, policy.batch)
            if not ids:
                break
            if archive is not None:
                for saga_id in ids:
                    instance = await self.store.get(saga_id)
                    if instance is not None:
                        await archive(instance, await self.store.history(saga_id))
            purged += await self.store.purge(ids)
            if progress is not None:
                progress(purged)
            if len(ids) < policy.batch:
                break
        return purged, await self.store.purge_keys(policy.keys)

    # -- operator commands ----------------------------------------------------------------

    async def abort(self, saga_id: str, reason: str, *, by: str = "operator") -> CommandHandle:
        """Compensate now (refused past the point of no return). A start still queued is
        cancelled at once: no worker creates its instance (``cancelled_start`` is set)."""
        if reason:
            check_name(saga_id, "saga id")
            check_json(reason, path="reason")
            check_name(by, "by")
        if reason and await self.store.get(saga_id) is None:
            start = await self.store.start_command(saga_id)
            if start is not None:
                cancelled = f"aborted before it started: {reason} (by {by})"
                if await self.store.cancel_start(start.id, cancelled):
                    return CommandHandle(start.id, saga_id, self, cancelled_start=True)
                # A worker answered it first: its instance is aborted as any other, if it
                # has one by this id.
                if await self.store.get(saga_id) is None:
                    answered = await self.store.command(start.id)
                    if answered is not None and answered.state is CommandState.REFUSED:
                        raise CommandRefused(
                            f"saga {saga_id} was never started: its start was refused "
                            f"({answered.error})"
                        )
        return await self._command(saga_id, Abort(reason, by), {})

    async def retry(self, saga_id: str, reason: str, *, by: str = "operator") -> CommandHandle:
        """Give the step a stuck instance waits on a fresh attempt budget."""
        return await self._command(saga_id, Retry(reason, by), {})

    async def resolve(
        self, saga_id: str, step: str, reason: str, *, by: str = "operator"
    ) -> CommandHandle:
        """Declare by hand that the step (or its compensation) a stuck instance waits on is
        settled, and carry on."""
        return await self._command(saga_id, Resolve(step, reason, by), {"step": step})

    async def _command(
        self, saga_id: str, command: OperatorCommand, extra: dict[str, object]
    ) -> CommandHandle:
        if not command.reason:
            raise CommandRefused("an operator command needs a reason")
        # Refused here, before the command is queued: a worker could not record it.
        check_name(saga_id, "saga id")
        check_json(command.reason, path="reason")
        check_name(command.by, "by")
        for name, value in extra.items():
            check_name(value, name)
        instance = await self.get(saga_id)
        refused = check_command(instance, command)
        if refused:
            raise CommandRefused(refused)
        kind = type(command).__name__.lower()
        body = {"reason": command.reason, "by": command.by, **extra}
        command_id = await self.store.enqueue(saga_id, kind, body)  # type: ignore[arg-type]
        if self._worker is not None:
            self._worker.poke()
        return CommandHandle(command_id, saga_id, self)

    async def wait_command(self, command_id: int, *, timeout: float | None = None) -> QueuedCommand:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            command = await self.store.command(command_id)
            if command is None:
                raise SagakitError(f"no command {command_id}")
            if command.state is CommandState.REFUSED:
                raise CommandRefused(command.error or "refused")
            if command.state is CommandState.APPLIED:
                return command
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"command {command_id} is still pending (is a worker running?)")
            await asyncio.sleep(self._poll)


def _queued_start(command: QueuedCommand) -> QueuedStart:
    body = command.body
    key, correlation = body.get("key"), body.get("correlation_id")
    version = body.get("version")
    return QueuedStart(
        saga_id=command.saga_id,
        saga_type=str(body.get("saga_type", "")),
        version=version if isinstance(version, int) else None,
        data=body.get("data"),
        key=key if isinstance(key, str) else None,
        correlation_id=correlation if isinstance(correlation, str) else None,
        queued_at=command.created_at,
        command_id=command.id,
        state=command.state,
        error=command.error,
    )


def _with_stall(start: QueuedStart, live: builtins.list[DefinitionRef]) -> QueuedStart:
    """``start`` with why no running worker applies it (None: one runs its definition)."""
    what = start.what
    if any(d.saga_type == start.saga_type and start.version in (None, d.version) for d in live):
        return start
    if not live:
        why = f"no worker is running; the start of {what} waits for one"
    else:
        why = f"no running worker has the definition {what}"
    return replace(start, stalled=why)
