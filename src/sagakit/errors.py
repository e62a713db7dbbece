"""Every error sagakit raises, in one tree.

::

    SagakitError
    ├── DefinitionError          a saga definition or app is invalid (raised at registration)
    ├── DefinitionNotRegistered  a start names a definition the worker does not run (or runs
    │                            with other steps under that name and version)
    ├── DefinitionMissing        an instance runs a definition (fingerprint) no worker here has
    ├── ConfigurationError       a setting is invalid (also a ValueError): a URL, a duration...
    ├── EncodingError            a value is not JSON-encodable (dataclass, pydantic model, JSON)
    ├── MessageRejected          a wire message is malformed, unknown, oversized (dead-lettered)
    ├── StorageError             the store failed or is misconfigured
    │   ├── StoreLocked          another worker owns this SQLite database
    │   └── StoreRefused         a healthy store refused one item's write (that item alone fails)
    ├── TransportError           the transport could not deliver a message
    ├── ConcurrencyConflict      a transition lost its version check (a stale writer)
    ├── SagaNotFound             no instance with that id
    ├── IdempotencyConflict      a start key reused with different input (Semantics 15)
    ├── CommandRefused           an operator command is invalid in the instance's state
    └── StepOutcome              raised by step code to state its outcome
        ├── StepFailed           definite business failure: nothing was done, do not compensate
        └── StepError            an error; retryable unless ``retryable=False``

``StepFailed`` and ``StepError`` are the call contract of a local step and of a participant
handler. Any other exception escaping step code is treated as a retryable ``StepError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotation only: messages raises these errors
    from sagakit.messages import Envelope


class SagakitError(Exception):
    """Root of every error raised by sagakit."""


class DefinitionError(SagakitError):
    """A saga definition or an app is invalid. The message names the step and the rule."""


class DefinitionNotRegistered(SagakitError):
    """A start names a saga type and version that this worker or app does not run, or was made
    with another definition (other steps) than the one it runs under that name and version."""


class DefinitionMissing(SagakitError):
    """An instance runs a definition (type, version, fingerprint) this worker does not have:
    it is left untouched for a worker that has it (Semantics 1)."""


class ConfigurationError(SagakitError, ValueError):
    """A setting is invalid: a store or transport URL, a duration, a size, a policy."""


class EncodingError(SagakitError):
    """A value cannot be encoded as JSON; the message names the value's type and path."""


class MessageRejected(SagakitError):
    """A message cannot be accepted; it goes to the dead-letter table with this reason.

    ``envelope`` is the message as far as it could be read, with no payload and no error
    text, when only those broke the value rules (its ids, step and attempt are sound): the
    receiver can then end the attempt it answers. None otherwise.
    """

    def __init__(self, reason: str, *, envelope: Envelope | None = None) -> None:
        super().__init__(reason)
        self.envelope = envelope


class StorageError(SagakitError):
    """The store failed, or its URL or file is unusable."""


class StoreLocked(StorageError):
    """Another live worker process owns this SQLite database."""


class StoreRefused(StorageError):
    """The store refused the write of one item while it accepted others: the item, not the
    store, is at fault. It fails alone, with this reason; its neighbours commit."""


class TransportError(SagakitError):
    """A message could not be handed to the transport or its consumer."""


class ConcurrencyConflict(SagakitError):
    """A transition was written against a stale version of its instance."""


class SagaNotFound(SagakitError):
    """No saga instance has the given id."""


class IdempotencyConflict(SagakitError):
    """A start reused an idempotency key with different input."""


class CommandRefused(SagakitError):
    """An operator command is not valid in the instance's current state."""


class StepOutcome(SagakitError):
    """Base of the exceptions that step code raises to state its outcome."""


class StepFailed(StepOutcome):
    """A definite business failure: the step promises it changed nothing.

    The saga compensates the steps before it; this step itself is not compensated.
    """


class StepError(StepOutcome):
    """A step error. Retried by the step's policy unless ``retryable`` is false.

    ``retry_after`` (seconds) overrides the policy's backoff for the next attempt. A
    non-retryable error ends the step's attempts: its outcome is unknown and, before the
    pivot, it is compensated.
    """

    def __init__(
        self, message: str, *, retryable: bool = True, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
