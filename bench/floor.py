"""The durable-commit floor of a point at C=1 (bench/SPEC.md section 8): what one durable commit
costs on this machine, measured in the same run, so a saga's latency alone can be set beside
commits per saga x that cost.

- SQLite: 4 KiB ``pwrite`` + ``os.fdatasync`` in the directory the benchmark's databases use.
  SQLite in WAL mode with synchronous=FULL makes one ``fdatasync`` of the WAL per commit, and
  after each checkpoint it restarts the WAL over its own pages, so in a run the WAL's file
  mostly keeps its size (traced: ~90 % of a C=1 run's WAL writes overwrite). A sync of pages
  already allocated costs this disk about half a sync that also grows the file, so the probe
  overwrites a file of the WAL's usual size; the growing kind is measured too and recorded.
- PostgreSQL: the round trip of a trivial write transaction, one client, autocommit: pgbench
  (libpq, prepared) inserting one row into a one-column table. That is the client's round trip,
  the server's commit and its WAL flush (``synchronous_commit=on``), with the least client code
  in between; pgbench's per-transaction log gives the percentiles. The disk's flush alone
  cannot be measured from here (the WAL is the server's), and a loop through sagakit's own
  driver would fold the driver and the event loop, part of what the floor is compared with,
  into the floor.

Standard library only (run.py runs with any Python 3.11+).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as c

HERE = Path(__file__).resolve().parent
BLOCK = 4096
WAL_PAGES = 1000  # SQLite's default wal_autocheckpoint: the WAL's usual size, in pages
SQLITE_ROUNDS = 500
PG_COMMITS = 2000
PG_TABLE = "pgb_commits"


def sqlite_sync(directory: Path = c.CACHE, rounds: int = SQLITE_ROUNDS) -> dict[str, Any]:
    """p50/p99 of one WAL-like sync: 4 KiB pwrite + fdatasync over a preallocated file of the
    WAL's usual size (``sync_ms``), and of the same on a file that grows (``append``)."""
    overwrite = _sync_loop(directory, rounds, preallocate=True)
    append = c.fsync_latency(directory, rounds)
    return {
        "method": f"{rounds} x (4 KiB pwrite + fdatasync) in {_shown(directory)}, over a file of "
        f"{WAL_PAGES} pages (a WAL after its checkpoint restarts over its pages)",
        "rounds": rounds,
        "p50_ms": overwrite["p50_ms"],
        "p99_ms": overwrite["p99_ms"],
        "append": {k: append[k] for k in ("p50_ms", "p99_ms")},
    }


def _shown(directory: Path) -> str:
    with contextlib.suppress(ValueError):
        return f"{directory.resolve().relative_to(HERE.parent)}/"
    return f"{directory}/"


def _sync_loop(directory: Path, rounds: int, preallocate: bool) -> dict[str, float]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"sync-probe-{os.getpid()}"
    block = b"\0" * BLOCK
    times: list[float] = []
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if preallocate:
            os.write(fd, block * WAL_PAGES)
            os.fsync(fd)
        for i in range(rounds):
            t0 = time.perf_counter()
            os.pwrite(fd, block, (i % WAL_PAGES) * BLOCK)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return {
        "p50_ms": round(c.percentile(times, 50) * 1000, 4),
        "p99_ms": round(c.percentile(times, 99) * 1000, 4),
    }


def pg_commit(pg_url: str, database: str, commits: int = PG_COMMITS) -> dict[str, Any]:
    """p50/p99 of a trivial write transaction's round trip, by pgbench with one client."""
    if shutil.which("pgbench") is None or shutil.which("psql") is None:
        return {"available": False, "reason": "pgbench or psql not installed"}
    script = HERE / "pgbench" / "one_commit.sql"
    with tempfile.TemporaryDirectory(prefix="bench-commit-") as tmp:
        try:
            c.psql(
                pg_url,
                database,
                f"DROP TABLE IF EXISTS {PG_TABLE}; CREATE TABLE {PG_TABLE} "
                "(id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY)",
            )
            before = c.pg_counters(pg_url, database)
            out = subprocess.run(
                [
                    "pgbench",
                    f"{pg_url}/{database}",
                    "-n",
                    "-c",
                    "1",
                    "-t",
                    str(commits),
                    "-M",
                    "prepared",
                    "-f",
                    str(script),
                    "-l",
                    f"--log-prefix={tmp}/commit",
                ],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            c.pg_wait_idle(pg_url, database)
            after = c.pg_counters(pg_url, database)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            return {"available": False, "reason": str(exc)}
        finally:
            with contextlib.suppress(RuntimeError):
                c.psql(pg_url, database, f"DROP TABLE IF EXISTS {PG_TABLE}")
        if out.returncode != 0:
            return {"available": False, "reason": (out.stderr or out.stdout).strip()[-300:]}
        # One line per transaction: client, number, latency in microseconds, script, epoch, us.
        times = [
            int(line.split()[2]) / 1000
            for log in Path(tmp).glob("commit*")
            for line in log.read_text().splitlines()
            if re.match(r"^\d+ \d+ \d+ ", line)
        ]
    if not times:
        return {"available": False, "reason": "pgbench wrote no transaction log"}
    writes = after["next_xid"] - before["next_xid"]
    return {
        "available": True,
        "method": f"pgbench -n -c 1 -t {commits} -M prepared -f bench/pgbench/one_commit.sql: "
        "the round trip of a one-row INSERT in its own transaction (commit and WAL flush)",
        "rounds": len(times),
        "p50_ms": round(c.percentile(times, 50), 4),
        "p99_ms": round(c.percentile(times, 99), 4),
        "write_transactions": writes,
        "wal_syncs_per_commit": round((after["wal_sync"] - before["wal_sync"]) / len(times), 3),
    }


def floor(
    probes: list[dict[str, Any]], point: dict[str, Any], sides: dict[str, str]
) -> dict[str, Any]:
    """The floor at one C=1 point: the probes' median p50 x each side's commits per saga, set
    beside that side's p50. ``sides`` maps a name in the point to its label."""
    good = [p for p in probes if p.get("available", True) and "p50_ms" in p]
    out: dict[str, Any] = {"probes": probes}
    if not good:
        out["available"] = False
        out["reason"] = next((p.get("reason", "") for p in probes), "no probe")
        return out
    p50s = [p["p50_ms"] for p in good]
    sync = statistics.median(p50s)
    out.update(available=True, method=good[0]["method"], sync_p50_ms=round(sync, 4))
    out["sync_p50_range_ms"] = [min(p50s), max(p50s)]
    for name, label in sides.items():
        agg = point.get(name, {})
        commits = agg.get("worker_commits_per_saga") or agg.get("commits_per_saga")
        p50 = agg.get("p50_ms")
        if not isinstance(commits, dict) or not isinstance(p50, dict):
            continue
        floor_ms = commits["median"] * sync
        out[name] = {
            "label": label,
            "commits_per_saga": commits["median"],
            "floor_ms": round(floor_ms, 3),
            "p50_ms": p50["median"],
            "above_floor_ms": round(p50["median"] - floor_ms, 3),
            "p50_over_floor": round(p50["median"] / floor_ms, 2) if floor_ms else None,
        }
    return out
