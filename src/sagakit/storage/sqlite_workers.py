"""Workers on a SQLite file: the lease rows, claims with their takeover entries, and the
catalog of definitions (the Leases and Catalog ports' writes and reads).

One worker owns a file (its lock is the lease), so attaching ends the leases of earlier
owners, which are dead, and a claim takes every unsettled instance that is not its own. Each
function runs on the store's writer (or reader) connection, on its thread.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from collections.abc import Sequence
from typing import cast

from sagakit.catalog import DEAD_WORKER_RETENTION, DefinitionRecord
from sagakit.encoding import JSON, dumps, loads
from sagakit.ports import Claimed, DefinitionRef, WorkerRecord
from sagakit.state import HistoryEntry, HistoryKind, SagaStatus
from sagakit.storage.queries import fill
from sagakit.storage.rows import (
    claim_text,
    definitions_text,
    history_row,
    instance_from_row,
    published,
)
from sagakit.storage.sqlite_file import Q, transaction

_LIVE = tuple(s.value for s in SagaStatus if not s.terminal)


def attach(
    conn: sqlite3.Connection,
    worker_id: str,
    lease: float,
    definitions: Sequence[DefinitionRef],
    now: float,
) -> None:
    prints = definitions_text(definitions)
    with transaction(conn):
        conn.execute(Q["expire_other_workers"], (now, worker_id, now))
        conn.execute(Q["forget_dead_workers"], (now - DEAD_WORKER_RETENTION,))
        conn.execute(
            Q["attach_worker"],
            (worker_id, socket.gethostname(), os.getpid(), now, now, now + lease, prints),
        )


def renew(conn: sqlite3.Connection, worker_id: str | None, lease: float, now: float) -> None:
    with transaction(conn):
        conn.execute(Q["renew_worker"], (now, now + lease, worker_id))


def claim(
    conn: sqlite3.Connection,
    worker_id: str | None,
    limit: int,
    definitions: Sequence[DefinitionRef],
    now: float,
) -> list[Claimed]:
    # SQLite binds no list: the IN list's placeholders are put in here, one per value.
    candidates_sql = fill(Q["claim_candidates"], live=_marks(len(_LIVE)))
    with transaction(conn):
        candidates = conn.execute(
            candidates_sql, (claim_text(definitions), *_LIVE, worker_id, limit)
        ).fetchall()
        if not candidates:
            return []
        picked = dumps([[c[0], c[1]] for c in candidates])
        rows = conn.execute(Q["claim_instances"], (worker_id, picked)).fetchall()
        by_id = {cast(str, r[0]): r for r in rows}
        claimed = []
        for saga_id, _, previous, reason in candidates:
            detail: dict[str, JSON] = {"from": previous, "to": worker_id, "reason": reason}
            entry = HistoryEntry(now, HistoryKind.TAKEOVER, detail=detail)
            claimed.append(Claimed(instance_from_row(by_id[saga_id]), entry))
        conn.executemany(
            Q["insert_history"], [history_row(c.instance.saga_id, c.takeover) for c in claimed]
        )
    return claimed


def detach(conn: sqlite3.Connection, worker_id: str, now: float) -> None:
    with transaction(conn):
        conn.execute(Q["release_instances"], (worker_id,))
        conn.execute(Q["stop_worker"], (now, now, worker_id))


def record_definitions(
    conn: sqlite3.Connection, definitions: Sequence[DefinitionRecord], now: float
) -> None:
    with transaction(conn):
        conn.executemany(
            Q["record_definition"],
            [(d.name, d.version, d.fingerprint, dumps(d.to_json()), now) for d in definitions],
        )


def read_definitions(conn: sqlite3.Connection) -> list[DefinitionRecord]:
    return [
        DefinitionRecord.from_json(loads(cast(str, spec)), recorded_at=cast(float, at))
        for spec, at in conn.execute(Q["definitions"]).fetchall()
    ]


def read_workers(conn: sqlite3.Connection, now: float) -> list[WorkerRecord]:
    return [
        WorkerRecord(
            worker_id=cast(str, r[0]),
            host=cast(str, r[1]),
            pid=cast(int, r[2]),
            started_at=cast(float, r[3]),
            heartbeat_at=cast(float, r[4]),
            lease_expires_at=cast(float, r[5]),
            stopped_at=cast("float | None", r[6]),
            definitions=tuple(
                d for d in published(cast(str, r[7])) if isinstance(d, DefinitionRef)
            ),
            owned=cast(int, r[8]),
            alive=bool(r[9]),
        )
        for r in conn.execute(Q["workers"], (now,)).fetchall()
    ]


def _marks(count: int) -> str:
    """``count`` ``?`` placeholders for an ``IN`` list."""
    return ",".join("?" * count)
