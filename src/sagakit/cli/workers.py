"""``sagakit workers``: the workers a database knows, their leases, the definitions they run
and how many unfinished instances each owns (read from the store: no application is imported)."""

from __future__ import annotations

import argparse

from sagakit import WorkerRecord
from sagakit.cli.common import db_url, reader, run
from sagakit.cli.render import (
    Cell,
    Column,
    Fit,
    emit,
    human_time,
    iso,
    print_json,
    print_table,
    status_text,
)

WORKER_COLUMNS = (
    Column("WORKER"),
    Column("STATE"),
    Column("STARTED (UTC)"),
    Column("LEASE (UTC)"),
    Column("OWNS"),
    Column("DEFINITIONS", Fit.WRAP),
)


def cmd_workers(args: argparse.Namespace) -> int:
    return run(_workers(db_url(args), as_json=bool(args.json), wide=bool(args.wide)))


async def _workers(url: str, *, as_json: bool, wide: bool) -> int:
    async with reader(url) as client:
        workers = await client.workers()
    if as_json:
        print_json([worker_json(w) for w in workers])
        return 0
    rows: list[list[Cell]] = [
        [
            w.worker_id,
            status_text(w.state),
            human_time(w.started_at),
            _lease(w),
            str(w.owned),
            ", ".join(f"{d.saga_type} v{d.version}" for d in w.definitions) or "-",
        ]
        for w in workers
    ]
    print_table(WORKER_COLUMNS, rows, wide=wide)
    emit(f"({len(workers)} worker(s))")
    return 0


def worker_json(worker: WorkerRecord) -> dict[str, object]:
    return {
        "worker_id": worker.worker_id,
        "state": worker.state,
        "alive": worker.alive,
        "host": worker.host,
        "pid": worker.pid,
        "started_at": iso(worker.started_at),
        "heartbeat_at": iso(worker.heartbeat_at),
        "lease_expires_at": iso(worker.lease_expires_at),
        "stopped_at": iso(worker.stopped_at),
        "owned": worker.owned,
        "definitions": [
            {"name": d.saga_type, "version": d.version, "fingerprint": d.fingerprint}
            for d in worker.definitions
        ],
    }


def _lease(worker: WorkerRecord) -> str:
    if worker.stopped_at is not None and not worker.alive:
        return f"stopped {human_time(worker.stopped_at)}"
    word = "until" if worker.alive else "expired"
    return f"{word} {human_time(worker.lease_expires_at)}"
