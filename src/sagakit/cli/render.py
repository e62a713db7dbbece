"""How the commands print: tables and times for people, JSON for programs."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from sagakit import HistoryEntry, QueuedStart, SagaInstance


def iso(timestamp: float | None) -> str | None:
    """A Unix timestamp as ISO 8601 in UTC, e.g. ``2025-01-31T12:00:00.123Z``."""
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def human_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def summary_json(instance: SagaInstance) -> dict[str, object]:
    return {
        "saga_id": instance.saga_id,
        "saga_type": instance.saga_type,
        "version": instance.version,
        "status": instance.status.value,
        "reason": instance.status_reason,
        "stuck_step": instance.stuck_step,
        "correlation_id": instance.correlation_id,
        "created_at": iso(instance.created_at),
        "updated_at": iso(instance.updated_at),
    }


#: The status ``list`` and ``show`` give a start that waits in the queue for a worker.
QUEUED = "queued"


def queued_json(start: QueuedStart) -> dict[str, object]:
    """A queued start in the shape of an instance's summary, status ``queued`` (or, shown by
    its id once a worker answered it, ``refused`` or ``applied``)."""
    status = {"pending": QUEUED}.get(start.state.value, start.state.value)
    return {
        "saga_id": start.saga_id,
        "saga_type": start.saga_type,
        "version": start.version,
        "status": status,
        "reason": start.error,
        "stuck_step": None,
        "correlation_id": start.correlation_id,
        "created_at": iso(start.queued_at),
        "updated_at": iso(start.queued_at),
        "idempotency_key": start.key,
        "command_id": start.command_id,
        "stalled": start.stalled,
    }


def detail_json(instance: SagaInstance, history: Sequence[HistoryEntry]) -> dict[str, object]:
    steps: list[object] = []
    for s in instance.steps:
        compensation: dict[str, object] | None = None
        if s.compensation is not None:
            compensation = {
                "status": s.compensation.status.value,
                "attempts": s.compensation.attempts,
                "error": s.compensation.error,
            }
        steps.append(
            {
                "name": s.name,
                "status": s.status.value,
                "attempts": s.attempts,
                "generation": s.generation,
                "outcome_known": s.outcome_known,
                "result": s.result,
                "error": s.error,
                "compensation": compensation,
            }
        )
    return {
        **summary_json(instance),
        "fingerprint": instance.fingerprint,
        "idempotency_key": instance.idempotency_key,
        "point_of_no_return": instance.point_of_no_return,
        "deadline_at": iso(instance.deadline_at),
        "revision": instance.revision,
        "data": instance.data,
        "steps": steps,
        "history": [entry_json(e) for e in history],
    }


def entry_json(entry: HistoryEntry) -> dict[str, object]:
    return {
        "at": iso(entry.at),
        "kind": entry.kind.value,
        "step": entry.step,
        "phase": entry.phase,
        "attempt": entry.attempt,
        "detail": entry.detail,
    }


def print_history(history: Sequence[HistoryEntry], *, indent: str = "") -> None:
    rows = [
        [
            iso(e.at) or "",
            e.kind.value,
            e.step or "-",
            e.phase or "-",
            "-" if e.attempt is None else str(e.attempt),
            clip(json.dumps(e.detail, sort_keys=True) if e.detail else "", 70),
        ]
        for e in history
    ]
    print_table(["AT (UTC)", "KIND", "STEP", "PHASE", "ATTEMPT", "DETAIL"], rows, indent=indent)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, indent: str = "") -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    for row in [list(headers), *rows]:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=True)]
        print(indent + "  ".join(cells).rstrip())


def clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))
    sys.stdout.flush()
