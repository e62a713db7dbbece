"""The :class:`StepContext` a local step (or a remote step's input function) is called with."""

from __future__ import annotations

from sagakit.definition import Phase, SagaDefinition, StepContext
from sagakit.encoding import from_json
from sagakit.state import SagaInstance


def step_context(
    instance: SagaInstance,
    definition: SagaDefinition,
    step: str,
    phase: Phase,
    attempt: int,
    key: str,
    now: float,
    timeout: float | None,
) -> StepContext[object]:
    state = instance.steps[definition.index(step)]
    data_type = definition.data_type
    # One per step run: every field is given, so it is written straight into the instance's
    # dict instead of field by field through the frozen dataclass's __setattr__.
    context: StepContext[object] = object.__new__(StepContext)
    context.__dict__.update(
        saga_id=instance.saga_id,
        saga_type=instance.saga_type,
        step=step,
        phase=phase,
        attempt=attempt,
        idempotency_key=key,
        correlation_id=instance.correlation_id,
        deadline=now + timeout if timeout is not None else None,
        data=instance.data if data_type is None else from_json(instance.data, data_type),
        results=instance.results(),
        input=instance.data,
        result=state.result if phase is Phase.COMPENSATION and state.outcome_known else None,
        outcome_known=state.outcome_known,
    )
    return context
