"""Ports: the small protocols that adapters implement, and the values that cross them.

Each capability is its own protocol of a few methods, held by a contract test that runs
against every adapter (tests/contract). A storage adapter usually implements all the store
ports on one database; the worker and the client depend only on the ports.
"""

from __future__ import annotations

import builtins
import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from sagakit.catalog import DefinitionRecord
from sagakit.definition import Phase
from sagakit.encoding import JSON
from sagakit.events import TimerKind
from sagakit.state import HistoryEntry, SagaInstance, SagaStatus

T = TypeVar("T")

#: The outbox source of messages written by the orchestrator (participants use their name).
ORCHESTRATOR = "sagakit.orchestrator"


# -- values -------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutboxMessage:
    """A message committed with a transition, published by a relay at least once."""

    id: str
    source: str
    destination: str
    body: bytes
    saga_id: str


@dataclass(frozen=True)
class Timer:
    saga_id: str
    name: str
    kind: TimerKind
    due_at: float
    step: str | None = None
    phase: Phase = Phase.ACTION
    attempt: int = 0


class TimerOpKind(enum.StrEnum):
    SET = "set"
    CANCEL = "cancel"
    FIRED = "fired"


@dataclass(frozen=True)
class TimerOp:
    """In order: set (upsert by name), cancel (names, or all when names is None), fired
    (delete this exact timer, unless it was set again meanwhile)."""

    kind: TimerOpKind
    timer: Timer | None = None
    names: tuple[str, ...] | None = None


class CommandState(enum.StrEnum):
    PENDING = "pending"
    APPLIED = "applied"
    REFUSED = "refused"


@dataclass(frozen=True)
class QueuedCommand:
    """An operator command (abort, retry, resolve) waiting for a worker (Semantics 11)."""

    id: int
    saga_id: str
    kind: str
    body: dict[str, JSON]
    state: CommandState = CommandState.PENDING
    error: str | None = None
    created_at: float = 0.0


@dataclass(frozen=True)
class CommandResult:
    id: int
    state: CommandState
    error: str | None = None


@dataclass(frozen=True)
class DeadLetter:
    source: str
    reason: str
    body: bytes
    at: float = 0.0
    id: int = 0


@dataclass(frozen=True)
class DefinitionRef:
    """A definition as a worker publishes it and claims instances by (Semantics 1): its saga
    type, version and fingerprint, and the fingerprint it had before (v1), if any."""

    saga_type: str
    version: int
    fingerprint: str
    legacy_fingerprint: str | None = None


@dataclass(frozen=True)
class WorkerRecord:
    """A worker as the store knows it (the :class:`Catalog` port). ``definitions`` are those
    it published when it attached. ``alive`` is judged by the store's clock when it was read:
    the lease has not run out and the worker has not stopped. ``owned`` counts the unfinished
    instances (started, pending, compensating or stuck) it owns."""

    worker_id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    lease_expires_at: float
    stopped_at: float | None
    definitions: tuple[DefinitionRef, ...]
    owned: int
    alive: bool

    @property
    def state(self) -> str:
        """``alive``, ``stopped`` (released its instances at a clean stop) or ``expired``
        (its lease ran out: it died, hung or lost the database)."""
        if self.alive:
            return "alive"
        return "stopped" if self.stopped_at is not None else "expired"


@dataclass
class InstanceWrite:
    """What one batch writes for one instance, atomically: its new state and the records
    its events produced (history, outbox messages, timer operations, command results).

    ``instance`` is the new state (None: no state change, only side records).
    ``expected_revision`` is the revision the decision was based on; None inserts a new
    instance. A write whose check fails is dropped whole: none of its records are
    written and none of its messages are sent. An insert that carries command results (a
    queued start) is written only while those commands are pending: a start cancelled
    meanwhile (:meth:`StartQueue.cancel_start`) creates nothing.
    """

    saga_id: str
    instance: SagaInstance | None = None
    expected_revision: int | None = None
    history: list[HistoryEntry] = field(default_factory=list)
    #: The instance's state column (storage.rows.state_text), when the worker has encoded
    #: it already (while the previous batch was committing); stores encode it otherwise.
    state: str | None = None
    outbox: list[OutboxMessage] = field(default_factory=list)
    timer_ops: list[TimerOp] = field(default_factory=list)
    consumed: list[str] = field(default_factory=list)
    commands: list[CommandResult] = field(default_factory=list)


@dataclass
class Batch:
    """One database transaction: many transitions plus records that belong to none."""

    transitions: list[InstanceWrite] = field(default_factory=list)
    outbox_done: list[str] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    commands: list[CommandResult] = field(default_factory=list)


@dataclass(frozen=True)
class Claimed:
    """An instance a claim took over, and the history entry the claim wrote for it (kind
    ``takeover``: from which worker, to which, and why)."""

    instance: SagaInstance
    takeover: HistoryEntry


@dataclass(frozen=True)
class InstanceFilter:
    status: SagaStatus | None = None
    saga_type: str | None = None
    correlation_id: str | None = None
    created_after: float | None = None
    created_before: float | None = None
    limit: int = 100


# -- ports --------------------------------------------------------------------------------


class TransitionStore(Protocol):
    async def commit(self, batch: Batch) -> list[bool]:
        """Commit ``batch`` in one durable transaction.

        Returns one flag per transition: False where its revision check (or, for a new
        instance, its uniqueness) failed; those are skipped, the rest commit.
        """
        ...


class InstanceQueries(Protocol):
    async def get(self, saga_id: str) -> SagaInstance | None: ...

    async def find_by_key(self, saga_type: str, key: str) -> SagaInstance | None: ...

    async def list(self, filter: InstanceFilter) -> builtins.list[SagaInstance]: ...

    async def history(self, saga_id: str) -> builtins.list[HistoryEntry]: ...

    async def count_by_status(self) -> dict[SagaStatus, int]: ...

    async def live_fingerprints(self) -> set[str]:
        """The fingerprints of the definitions that workers with a live lease run, legacy
        ones included (the instances they can advance, Semantics 1)."""
        ...


class DefinitionsInUse(Protocol):
    """Which definitions a store's live workers run and its unsettled instances carry: a
    worker refuses to start with another definition under the same name and version."""

    async def live_definitions(self) -> builtins.list[DefinitionRef]:
        """The definitions workers with a live lease published (a bare fingerprint an older
        sagakit published is left out: it names no saga type)."""
        ...

    async def unsettled_definitions(
        self, saga_types: Sequence[str]
    ) -> builtins.list[DefinitionRef]:
        """Each (saga type, version, fingerprint) that unsettled instances of ``saga_types``
        carry, once (``legacy_fingerprint`` is None)."""
        ...


class Leases(Protocol):
    """Which worker advances which instance (F3).

    A worker attaches with its id and lease, renews the lease with ``heartbeat``, and
    claims the unsettled instances whose owner is gone (no live lease), bumping their
    revision: a worker that comes back late cannot commit over them (its revision check fails).
    Once attached, new instances are owned by this worker, and due timers, pending outbox rows
    and operator commands are those of its own instances.
    """

    async def attach(
        self, worker_id: str, lease: float, definitions: Sequence[DefinitionRef] = ()
    ) -> None:
        """Register as worker ``worker_id``, running ``definitions``."""
        ...

    async def heartbeat(self) -> bool:
        """Renew the lease; False when this worker was declared dead meanwhile."""
        ...

    async def claim(
        self, limit: int, definitions: Sequence[DefinitionRef]
    ) -> builtins.list[Claimed]:
        """Take over up to ``limit`` unsettled instances of ``definitions`` whose owner has no
        live lease: those of a definition's type and version that carry its fingerprint or
        its legacy one, which the claim replaces with the current one. A worker claims only
        what it can advance (Semantics 1). Each claim writes a ``takeover`` history entry:
        from which worker, and why (its lease expired, it stopped and released the instance,
        or the instance had no owner)."""
        ...

    async def detach(self) -> None:
        """Release this worker's instances for the others (a clean stop); its row stays,
        marked stopped, until a later attach cleans it up (see :class:`Catalog`)."""
        ...

    async def listen(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when another process queues work for the workers."""
        ...


class Catalog(Protocol):
    """What workers run, for readers that run no user code (G1: describe, workers).

    A worker records its definitions right after it attaches. Worker rows stay after their
    worker stopped or died, so that ``workers`` shows them, until a worker attaches and removes
    those whose lease ran out more than :data:`~sagakit.catalog.DEAD_WORKER_RETENTION` ago
    and that own no unfinished instance.
    """

    async def record_definitions(self, definitions: Sequence[DefinitionRecord]) -> None:
        """Write ``definitions``: a record per name, version and fingerprint (the same one
        again is overwritten). Which worker runs which is what it published at attach."""
        ...

    async def definitions(self) -> builtins.list[DefinitionRecord]:
        """Every definition recorded, by name, then version, then when it was recorded."""
        ...

    async def workers(self) -> builtins.list[WorkerRecord]:
        """Every worker row, live ones first, then latest started first."""
        ...


@dataclass(frozen=True)
class RetiredKey:
    """The idempotency key of a purged instance, kept so its start stays idempotent."""

    saga_id: str
    input_digest: str


class Retention(Protocol):
    """Deleting finished instances by age, in bounded batches (F5).

    Only completed and failed instances are ever purged, never stuck or running ones. Their
    idempotency keys move to a table of their own, with a retention at least as long, so a
    purge never lets a duplicate start through; participants' inbox keys likewise.
    """

    async def finished_before(self, age: float, limit: int) -> builtins.list[str]:
        """Ids of completed or failed instances that finished (entered that status) more
        than ``age`` seconds ago by the store's clock, oldest first."""
        ...

    async def purge(self, saga_ids: Sequence[str]) -> int:
        """Delete those instances (if still finished) with their history; retire their keys."""
        ...

    async def purge_keys(self, age: float) -> int:
        """Delete retired start keys and participants' inbox keys older than ``age``."""
        ...

    async def retired_key(self, saga_type: str, key: str) -> RetiredKey | None: ...


class TimerQueue(Protocol):
    async def due(self, limit: int) -> list[Timer]:
        """Timers due by the store's clock (Semantics 13), earliest first."""
        ...

    async def next_due(self) -> float | None: ...

    async def now(self) -> float:
        """The store's clock, which judges due timers."""
        ...


class Outbox(Protocol):
    async def pending(self, source: str, limit: int) -> list[OutboxMessage]: ...


class CommandQueue(Protocol):
    async def enqueue(self, saga_id: str, kind: str, body: dict[str, JSON]) -> int: ...

    async def pending_commands(self, limit: int, after: int = 0) -> list[QueuedCommand]:
        """Pending commands with an id above ``after``, oldest first."""
        ...

    async def command(self, command_id: int) -> QueuedCommand | None: ...


class StartQueue(Protocol):
    """Starts queued by clients without a worker (``start`` commands, Semantics 11 and 15):
    found by idempotency key or by the instance id they named, listed, and cancelled while
    no worker has applied them."""

    async def queued_start(self, saga_type: str, key: str) -> QueuedCommand | None:
        """The oldest pending start of ``saga_type`` with idempotency key ``key``."""
        ...

    async def start_command(self, saga_id: str) -> QueuedCommand | None:
        """The latest start queued for the instance id ``saga_id``, in whatever state."""
        ...

    async def queued_starts(self, limit: int) -> builtins.list[QueuedCommand]:
        """Pending starts, oldest first."""
        ...

    async def cancel_start(self, command_id: int, reason: str) -> bool:
        """Refuse the pending start ``command_id`` with ``reason``. False when it is not a
        pending start (a worker applied or refused it first); once this returns True, no
        worker creates its instance."""
        ...


class DeadLetters(Protocol):
    async def dead_letters(self, limit: int) -> list[DeadLetter]: ...


class ParticipantTx(Protocol):
    """A participant's open transaction: its business writes, inbox and outbox together.

    ``execute`` takes ``?`` placeholders on every store (PostgreSQL's ``$1`` also works there),
    so one participant's SQL runs on SQLite and PostgreSQL alike.
    """

    dialect: str

    async def execute(
        self, sql: str, params: Sequence[object] = ()
    ) -> builtins.list[tuple[object, ...]]:
        """Run one statement of the participant's own (business) SQL; returns its rows."""
        ...

    async def inbox_get(self, participant: str, key: str) -> bytes | None: ...

    async def inbox_put(self, participant: str, key: str, reply: bytes) -> None: ...

    async def inbox_touch(self, participant: str, key: str) -> None:
        """The key was presented again: its record's retention counts from now (a duplicate
        may still be redelivered for as long after it as after the first)."""
        ...

    async def outbox_put(self, message: OutboxMessage) -> None: ...

    async def outbox_done(self, message_ids: Sequence[str]) -> None: ...

    async def dead_letter(self, letter: DeadLetter) -> None: ...


class ParticipantStore(Outbox, Protocol):
    async def transaction(self, fn: Callable[[ParticipantTx], Awaitable[T]]) -> T:
        """Run ``fn`` inside one durable transaction; roll back if it raises."""
        ...


class Store(
    TransitionStore,
    InstanceQueries,
    Leases,
    Catalog,
    Retention,
    TimerQueue,
    CommandQueue,
    StartQueue,
    DefinitionsInUse,
    DeadLetters,
    ParticipantStore,
    Protocol,
):
    """What a worker needs: every store port on one database."""

    async def close(self) -> None: ...


MessageHandler = Callable[[bytes], Awaitable[None]]


class Transport(Protocol):
    """Moves encoded messages between processes.

    ``publish`` returns once the message is safely handed over: to a broker that holds it
    durably, or (in-process) to a consumer whose handler has committed. A handler that raises
    leaves the message unacknowledged, to be delivered again.
    """

    async def publish(self, destination: str, body: bytes) -> None: ...

    async def subscribe(self, destination: str, handler: MessageHandler) -> None: ...

    async def unsubscribe(self, destination: str) -> None:
        """Stop consuming ``destination`` (a no-op if this process does not consume it)."""
        ...

    async def close(self) -> None: ...
