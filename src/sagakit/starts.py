"""Starting an instance: a fresh instance, and what an idempotent start resolves to (B7).

A start with an idempotency key that an instance already holds returns that instance when the
input is the same and is refused when it differs (Semantics 15); the key of a purged instance
is kept (:class:`~sagakit.ports.RetiredKey`), so such a start stays idempotent. The worker
applies these rules when it creates an instance and the client when it answers a start up
front; both call :func:`resolve_start`.
"""

from __future__ import annotations

from sagakit.definition import SagaDefinition
from sagakit.encoding import JSON
from sagakit.errors import IdempotencyConflict
from sagakit.ports import RetiredKey
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
) -> str | IdempotencyConflict | None:
    """What a start with idempotency ``key`` and input digest ``digest`` resolves to.

    ``existing`` is the instance that holds the key, if any; otherwise ``retired`` is the key's
    record when its instance was purged. The result is the id of that instance when the input
    is the same, an :class:`~sagakit.errors.IdempotencyConflict` (returned, not raised) when it
    differs, and None when the key is free: the start creates an instance.
    """
    if existing is not None:
        saga_id, used, since = existing.saga_id, existing.input_digest, ""
    elif retired is not None:
        saga_id, used, since = retired.saga_id, retired.input_digest, " (since purged)"
    else:
        return None
    if used != digest:
        return IdempotencyConflict(
            f"idempotency key {key!r} was used by saga {saga_id}{since} with different input"
        )
    return saga_id
