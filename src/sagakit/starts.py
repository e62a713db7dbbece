"""Starting an instance: a fresh instance, and what an idempotent start resolves to (B7).

A start with an idempotency key that an instance already holds returns that instance when the
input is the same and is refused when it differs (Semantics 15); the key of a purged instance
is kept (:class:`~sagakit.ports.RetiredKey`), so such a start stays idempotent, and a start
still queued holds its key too. The worker applies these rules when it creates an instance and
the client when it answers a start up front; both call :func:`resolve_start`.

A start names the definition it was made with (its fingerprint): under the same name and
version, a worker refuses a start whose definition has other steps than its own
(:func:`definition_mismatch`, Semantics 1). A queued start that a worker refuses is recorded
with the kind of its error (:func:`start_refusal`), so its caller gets that error back
(:func:`start_error`).
"""

from __future__ import annotations

from sagakit.definition import SagaDefinition
from sagakit.encoding import JSON, digest_of
from sagakit.errors import (
    CommandRefused,
    DefinitionNotRegistered,
    IdempotencyConflict,
    SagakitError,
)
from sagakit.ports import QueuedCommand, RetiredKey
from sagakit.state import SagaInstance, SagaStatus, StepState


def new_instance(
    definition: SagaDefinition,
    *,
    saga_id: str,
    data: JSON,
    correlation_id: str | None,
    idempotency_key: str | None,
    input_digest: str,
    now: float,
) -> SagaInstance:
    """A fresh instance in ``started``; apply :class:`Begin` to set it moving."""
    return SagaInstance(
        saga_id=saga_id,
        saga_type=definition.name,
        version=definition.version,
        fingerprint=definition.fingerprint,
        status=SagaStatus.STARTED,
        data=data,
        steps=tuple(StepState(step.name) for step in definition.steps),
        correlation_id=correlation_id or saga_id,
        created_at=now,
        updated_at=now,
        idempotency_key=idempotency_key,
        input_digest=input_digest,
        deadline_at=now + definition.deadline if definition.deadline else None,
    )


def resolve_start(
    key: str,
    digest: str,
    *,
    existing: SagaInstance | None = None,
    retired: RetiredKey | None = None,
    queued: QueuedCommand | None = None,
) -> str | IdempotencyConflict | None:
    """What a start with idempotency ``key`` and input digest ``digest`` resolves to.

    ``existing`` is the instance that holds the key, if any; otherwise ``retired`` is the key's
    record when its instance was purged, or ``queued`` a start with the key that waits in the
    queue. The result is the id of that instance (or of the queued start) when the input is
    the same, an :class:`~sagakit.errors.IdempotencyConflict` (returned, not raised) when it
    differs, and None when the key is free: the start creates an instance.
    """
    if existing is not None:
        saga_id, used, since = existing.saga_id, existing.input_digest, ""
    elif retired is not None:
        saga_id, used, since = retired.saga_id, retired.input_digest, " (since purged)"
    elif queued is not None:
        saga_id, since = queued.saga_id, " (queued, not started yet)"
        used = digest_of(queued.body.get("data"))
    else:
        return None
    if used != digest:
        return IdempotencyConflict(
            f"idempotency key {key!r} was used by saga {saga_id}{since} with different input"
        )
    return saga_id


def definition_mismatch(
    saga_type: str, version: int, running: str, asked: str | None
) -> DefinitionNotRegistered | None:
    """Why a start made with the definition of fingerprint ``asked`` is refused where
    ``saga_type`` v``version`` runs with fingerprint ``running`` (None: it is not; nor when
    ``asked`` is not known)."""
    if asked is None or asked == running:
        return None
    return DefinitionNotRegistered(
        f"saga {saga_type!r} v{version} runs with other steps (fingerprint {running}) than "
        f"the definition this start was made with ({asked}); deploy a changed saga as a new "
        "version"
    )


#: The errors a refused queued start is recorded with by name, for its caller to get back.
_START_ERRORS: dict[str, type[SagakitError]] = {
    cls.__name__: cls for cls in (IdempotencyConflict, DefinitionNotRegistered)
}


def start_refusal(error: SagakitError) -> str:
    """How a queued start's refusal is recorded: ``IdempotencyConflict: <message>``."""
    return f"{type(error).__name__}: {error}"


def start_error(recorded: str | None) -> SagakitError:
    """The error that the caller of a refused queued start gets: the one it was recorded
    with by :func:`start_refusal`, else a CommandRefused with the recorded reason."""
    kind, sep, message = (recorded or "").partition(": ")
    error = _START_ERRORS.get(kind) if sep else None
    if error is not None:
        return error(message)
    return CommandRefused(f"the start was refused: {recorded or 'no reason given'}")
