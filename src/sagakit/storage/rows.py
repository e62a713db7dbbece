"""How an instance, a history entry and a command map to table rows, on every store.

Both stores keep the same columns in the same order (the schema files), so one encoding
serves both: the indexed fields as columns, the rest of the instance state as JSON text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, cast

from sagakit.encoding import JSON, dump_text, dumps, loads
from sagakit.ports import CommandState, DefinitionRef, InstanceWrite, QueuedCommand
from sagakit.state import HistoryEntry, HistoryKind, SagaInstance, SagaStatus


class Row(Protocol):
    """A result row: a tuple (sqlite3) or a Record (asyncpg)."""

    def __getitem__(self, index: int, /) -> Any: ...


def state_text(inst: SagaInstance) -> str:
    """The ``state`` column: what no query filters on, as JSON."""
    return dump_text(
        {
            "data": inst.data,
            "steps": inst.steps_to_json(),
            "reason": inst.failure_reason,
            "stuck_reason": inst.stuck_reason,
            "stuck_step": inst.stuck_step,
            "deadline_at": inst.deadline_at,
            "deadline_passed": inst.deadline_passed,
            "point_of_no_return": inst.point_of_no_return,
            "input_digest": inst.input_digest,
        }
    )


def transition_state(t: InstanceWrite) -> str:
    """The state column of ``t``'s instance: encoded by the worker already, or now."""
    if t.state is not None:
        return t.state
    return state_text(cast(SagaInstance, t.instance))


def instance_from_row(row: Row) -> SagaInstance:
    """An instance from a row of (saga_id, saga_type, version, fingerprint, status,
    correlation_id, idempotency_key, created_at, updated_at, revision, state, owner): the
    order of every instance query in the .sql files."""
    state = cast(dict[str, JSON], loads(cast(str, row[10])))
    return SagaInstance(
        saga_id=cast(str, row[0]),
        saga_type=cast(str, row[1]),
        version=cast(int, row[2]),
        fingerprint=cast(str, row[3]),
        status=SagaStatus(cast(str, row[4])),
        correlation_id=cast(str, row[5]),
        idempotency_key=cast("str | None", row[6]),
        created_at=cast(float, row[7]),
        updated_at=cast(float, row[8]),
        revision=cast(int, row[9]),
        data=state["data"],
        steps=SagaInstance.steps_from_json(state["steps"]),
        failure_reason=cast("str | None", state["reason"]),
        stuck_reason=cast("str | None", state["stuck_reason"]),
        stuck_step=cast("str | None", state["stuck_step"]),
        deadline_at=cast("float | None", state["deadline_at"]),
        deadline_passed=bool(state["deadline_passed"]),
        point_of_no_return=cast("str | None", state["point_of_no_return"]),
        input_digest=cast(str, state["input_digest"]),
        owner=cast("str | None", row[11]),
    )


def history_row(saga_id: str, e: HistoryEntry) -> tuple[object, ...]:
    return (saga_id, e.at, _KIND_TEXT[e.kind], e.step, e.phase, e.attempt, dump_text(e.detail))


# An enum's .value is a Python-level property, and these columns are written per transition.
_KIND_TEXT = {kind: kind.value for kind in HistoryKind}
#: The status column's text for each status.
STATUS_TEXT = {status: status.value for status in SagaStatus}


def command_from_row(row: Row) -> QueuedCommand:
    """A command from (id, saga_id, kind, body, state, error, created_at)."""
    return QueuedCommand(
        id=cast(int, row[0]),
        saga_id=cast(str, row[1]),
        kind=cast(str, row[2]),
        body=cast(dict[str, JSON], loads(cast(str, row[3]))),
        state=CommandState(cast(str, row[4])),
        error=cast("str | None", row[5]),
        created_at=cast(float, row[6]),
    )


def definitions_text(definitions: Sequence[DefinitionRef]) -> str:
    """What a worker's row in ``sagakit_workers`` holds of the definitions it runs: a JSON
    list of objects (an older sagakit wrote a list of bare fingerprints)."""
    return dumps(
        [
            {
                "saga_type": d.saga_type,
                "version": d.version,
                "fingerprint": d.fingerprint,
                "legacy_fingerprint": d.legacy_fingerprint,
            }
            for d in sorted(definitions, key=lambda d: (d.saga_type, d.version))
        ]
    )


def published(text: str) -> list[DefinitionRef | str]:
    """The entries of a worker's definitions column: a :class:`DefinitionRef`, or the bare
    fingerprint an older sagakit published."""
    entries: list[DefinitionRef | str] = []
    for entry in cast(list[JSON], loads(text)):
        if isinstance(entry, dict):
            legacy = entry.get("legacy_fingerprint")
            entries.append(
                DefinitionRef(
                    str(entry["saga_type"]),
                    cast(int, entry["version"]),
                    str(entry["fingerprint"]),
                    legacy if isinstance(legacy, str) else None,
                )
            )
        else:
            entries.append(str(entry))
    return entries


def fingerprints_of(entries: Sequence[DefinitionRef | str]) -> set[str]:
    """Every fingerprint whose instances the published ``entries`` can advance."""
    found: set[str] = set()
    for entry in entries:
        if isinstance(entry, str):
            found.add(entry)
        else:
            found.add(entry.fingerprint)
            if entry.legacy_fingerprint is not None:
                found.add(entry.legacy_fingerprint)
    return found


def claim_text(definitions: Sequence[DefinitionRef]) -> str:
    """The definitions a claim is for, as the JSON list of [type, version, fingerprint,
    legacy fingerprint] that the SQLite claim reads with json_each."""
    return dumps(
        [[d.saga_type, d.version, d.fingerprint, d.legacy_fingerprint] for d in definitions]
    )
