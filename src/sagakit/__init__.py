"""sagakit: sagas for Python — orchestrated, durable, compensating.

The public API. Everything here is documented in docs/ and stable within a major version.
"""

from __future__ import annotations

from sagakit.app import App
from sagakit.client import Client, CommandHandle, QueuedStart, SagaHandle
from sagakit.definition import (
    Phase,
    RetryPolicy,
    Saga,
    SagaDefinition,
    Step,
    StepContext,
    StepKind,
)
from sagakit.errors import (
    CommandRefused,
    ConcurrencyConflict,
    ConfigurationError,
    DefinitionError,
    DefinitionMissing,
    DefinitionNotRegistered,
    EncodingError,
    IdempotencyConflict,
    MessageRejected,
    SagakitError,
    SagaNotFound,
    StepError,
    StepFailed,
    StorageError,
    StoreLocked,
    TransportError,
)
from sagakit.participant import Command, Participant
from sagakit.ports import ParticipantTx
from sagakit.state import (
    CompensationStatus,
    HistoryEntry,
    SagaInstance,
    SagaStatus,
    StepStatus,
)
from sagakit.storage import SqliteStore, open_store
from sagakit.transport import MemoryTransport
from sagakit.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "App",
    "Client",
    "Command",
    "CommandHandle",
    "CommandRefused",
    "CompensationStatus",
    "ConcurrencyConflict",
    "ConfigurationError",
    "DefinitionError",
    "DefinitionMissing",
    "DefinitionNotRegistered",
    "EncodingError",
    "HistoryEntry",
    "IdempotencyConflict",
    "MemoryTransport",
    "MessageRejected",
    "Participant",
    "ParticipantTx",
    "Phase",
    "QueuedStart",
    "RetryPolicy",
    "Saga",
    "SagaDefinition",
    "SagaHandle",
    "SagaInstance",
    "SagaNotFound",
    "SagaStatus",
    "SagakitError",
    "SqliteStore",
    "Step",
    "StepContext",
    "StepError",
    "StepFailed",
    "StepKind",
    "StepStatus",
    "StorageError",
    "StoreLocked",
    "TransportError",
    "Worker",
    "__version__",
    "open_store",
]
