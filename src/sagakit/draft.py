"""The instance that decide() builds: one private copy per decision, its history and effects.

The first change copies the instance; later changes write into that private copy, which
nothing else can see before the decision is returned: one copy per transition rather than one
per change (decide() is the worker's hottest code). Until ``_freeze()`` its steps are a list, so
that a step can be replaced in place.
"""

from __future__ import annotations

from typing import Any

from sagakit.definition import Phase
from sagakit.effects import CancelTimers, Effect
from sagakit.encoding import JSON
from sagakit.state import (
    HistoryEntry,
    HistoryKind,
    SagaInstance,
    SagaStatus,
    StepState,
    evolve,
    update_fields,
)


class InstanceDraft:
    __slots__ = ("_drafting", "effects", "history", "inst", "now")

    def __init__(self, inst: SagaInstance, now: float) -> None:
        self.inst = inst
        self.now = now
        self.effects: list[Effect] = []
        self.history: list[HistoryEntry] = []
        self._drafting = False

    def _draft(self) -> dict[str, Any]:
        if not self._drafting:
            self.inst = evolve(self.inst)
            self.inst.__dict__["steps"] = list(self.inst.steps)
            self._drafting = True
        return self.inst.__dict__

    def _set(self, **changes: object) -> None:
        update_fields(self._draft(), changes, "SagaInstance")

    def _set_step(self, index: int, **changes: object) -> None:
        steps: list[StepState] = self._draft()["steps"]
        steps[index] = evolve(steps[index], **changes)

    def _freeze(self) -> SagaInstance:
        if self._drafting:
            self.inst.__dict__["steps"] = tuple(self.inst.steps)
            self._drafting = False
        return self.inst

    # -- what the decision records ---------------------------------------------------------

    def _record(
        self,
        kind: HistoryKind,
        step: str | None = None,
        phase: Phase | None = None,
        attempt: int | None = None,
        detail: dict[str, JSON] | None = None,
    ) -> None:
        self.history.append(
            HistoryEntry(
                self.now, kind, step, phase.value if phase else None, attempt, detail or {}
            )
        )

    def _status(
        self, status: SagaStatus, *, reason: str | None = None, stuck_step: str | None = None
    ) -> None:
        old = self.inst.status
        changes: dict[str, object] = {"status": status, "stuck_step": stuck_step}
        if status is SagaStatus.STUCK:
            changes["stuck_reason"] = reason
        else:
            changes["stuck_reason"] = None
            if reason is not None:
                changes["failure_reason"] = reason
        self._set(**changes)
        if old is not status or reason is not None:
            detail: dict[str, JSON] = {"from": old.value, "to": status.value}
            if reason is not None:
                detail["reason"] = reason
            if stuck_step is not None:
                detail["step"] = stuck_step
            self._record(HistoryKind.STATUS, detail=detail)
        if status.terminal:
            self.effects.append(CancelTimers(None))
