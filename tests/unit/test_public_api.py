"""The curated public API: a change to it is a deliberate act (and a CHANGELOG entry)."""

from __future__ import annotations

import sagakit

PUBLIC = {
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
}


def test_all_is_pinned() -> None:
    assert set(sagakit.__all__) == PUBLIC


def test_every_name_resolves_and_is_documented() -> None:
    for name in sagakit.__all__:
        value = getattr(sagakit, name)
        if callable(value):
            assert value.__doc__, f"{name} has no docstring"


def test_errors_share_one_root() -> None:
    for name in sagakit.__all__:
        value = getattr(sagakit, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, sagakit.SagakitError), name
