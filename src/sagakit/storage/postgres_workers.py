"""Workers on PostgreSQL: the rows of the Leases and Catalog ports, as values.

The statements are named queries (``claim_instances``, ``workers``, ``definitions``...) run by
:class:`~sagakit.storage.postgres.PostgresStore`; this module turns what they return into the
ports' values, and the definitions into the arrays ``record_definitions`` takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from sagakit.catalog import DefinitionRecord
from sagakit.encoding import JSON, dumps, loads
from sagakit.ports import Claimed, DefinitionRef, WorkerRecord
from sagakit.state import HistoryEntry, HistoryKind
from sagakit.storage.postgres_commit import columns
from sagakit.storage.rows import Row, instance_from_row, published


def claimed_from_row(row: Row, worker_id: str | None) -> Claimed:
    """A row of ``claim_instances``: the instance's columns, then the previous owner, the
    reason and the time of the takeover entry the statement wrote."""
    detail: dict[str, JSON] = {"from": row[12], "to": worker_id, "reason": row[13]}
    return Claimed(
        instance_from_row(row), HistoryEntry(float(row[14]), HistoryKind.TAKEOVER, detail=detail)
    )


def definition_columns(definitions: Sequence[DefinitionRecord]) -> list[list[object]]:
    """The arrays of ``record_definitions``: names, versions, fingerprints, specs."""
    return columns([(d.name, d.version, d.fingerprint, dumps(d.to_json())) for d in definitions], 4)


def definition_from_row(row: Row) -> DefinitionRecord:
    return DefinitionRecord.from_json(loads(cast(str, row[0])), recorded_at=float(row[1]))


def worker_from_row(row: Row) -> WorkerRecord:
    return WorkerRecord(
        worker_id=row[0],
        host=row[1],
        pid=row[2],
        started_at=row[3],
        heartbeat_at=row[4],
        lease_expires_at=row[5],
        stopped_at=row[6],
        definitions=tuple(d for d in published(row[7]) if isinstance(d, DefinitionRef)),
        owned=int(row[8]),
        alive=bool(row[9]),
    )
