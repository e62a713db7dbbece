"""What every benchmark script shares: the workload, the driver, verification and statistics.

Standard library only, so it imports the same way from the project's venv (sagakit_bench.py)
and from DBOS's own venv (dbos_bench.py). bench/SPEC.md is the prose version of this module.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache"

# -- the workload (SPEC.md "Workload") --------------------------------------------------------

STEPS = ("reserve_inventory", "process_payment", "create_shipment", "send_confirmation")
COMPENSATIONS = {
    "reserve_inventory": "release_inventory",
    "process_payment": "refund_payment",
    "create_shipment": "cancel_shipment",
    "send_confirmation": "retract_confirmation",
}
FAILING_STEP = "create_shipment"
EXPECTED_COMPLETED = list(STEPS)
EXPECTED_COMPENSATED = [
    "reserve_inventory",
    "process_payment",
    "refund_payment",
    "release_inventory",
]

# Exit codes of the per-implementation scripts.
EXIT_OK = 0
EXIT_WRONG = 1  # a wrong answer: outcome or effects not as expected
EXIT_UNAVAILABLE = 3  # the implementation does not support this store (yet)


def fails(index: int) -> bool:
    """Saga ``index`` fails definitively at create_shipment: exactly one in five (20 %)."""
    return index % 5 == 4


def order(index: int, run: str) -> dict[str, Any]:
    """The saga input for index ``index``: small, JSON, the same for every implementation."""
    return {
        "order_id": f"order-{run}-{index}",
        "index": index,
        "sku": f"SKU-{index % 7}",
        "quantity": 1 + index % 3,
        "amount_cents": 1000 + (index * 37) % 9000,
        "fail_shipment": fails(index),
    }


class ShipmentRefused(Exception):
    """The carrier's definite 'no': nothing was done, so the step is not compensated."""


class EffectLog:
    """The in-memory 'outside world': per saga, the effects applied, in order.

    Each effect is applied at most once per idempotency key (the guarantee at-least-once steps
    give with idempotency keys); a repeated key returns the first result and records nothing.
    """

    def __init__(self) -> None:
        self.effects: dict[str, list[str]] = {}
        self._by_key: dict[str, dict[str, Any]] = {}
        self.duplicates = 0

    def apply(self, order_id: str, key: str, effect: str) -> dict[str, Any]:
        done = self._by_key.get(key)
        if done is not None:
            self.duplicates += 1
            return done
        self.effects.setdefault(order_id, []).append(effect)
        result = {"effect": effect, "ref": f"{effect}:{order_id}"}
        self._by_key[key] = result
        return result


def verify(outcomes: dict[int, str], effects: EffectLog, run: str, sagas: int) -> list[str]:
    """Problems found, [] when every saga ended as it must with its effects in order.

    ``outcomes[i]`` is 'completed' or 'compensated' as the implementation reported it (its
    terminal state, checked by the caller against the implementation's own status).
    """
    problems: list[str] = []
    for i in range(sagas):
        expected = "compensated" if fails(i) else "completed"
        got = outcomes.get(i)
        if got != expected:
            problems.append(f"saga {i}: outcome {got!r}, expected {expected!r}")
        order_id = f"order-{run}-{i}"
        want = EXPECTED_COMPENSATED if fails(i) else EXPECTED_COMPLETED
        have = effects.effects.get(order_id, [])
        if have != want:
            problems.append(f"saga {i}: effects {have}, expected {want}")
    extra = set(effects.effects) - {f"order-{run}-{i}" for i in range(sagas)}
    if extra:
        problems.append(f"effects for {len(extra)} unknown order(s)")
    return problems


# -- the driver -------------------------------------------------------------------------------


@dataclass
class Timing:
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)


async def drive(
    sagas: int, concurrency: int, one: Callable[[int], Awaitable[str]]
) -> tuple[Timing, dict[int, str]]:
    """Run sagas 0..N-1 with ``concurrency`` in flight: C loops each take the next index,
    time start call -> terminal state, and record the outcome ``one`` returns."""
    outcomes: dict[int, str] = {}
    timing = Timing()
    next_index = iter(range(sagas))

    async def loop() -> None:
        for i in next_index:
            t0 = time.perf_counter()
            outcome = await one(i)
            timing.latencies.append(time.perf_counter() - t0)
            outcomes[i] = outcome

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(max(1, concurrency))))
    timing.seconds = time.perf_counter() - t0
    timing.cpu_seconds = time.process_time() - cpu0
    return timing, outcomes


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def summary(
    *,
    impl: str,
    version: str,
    store: str,
    sagas: int,
    concurrency: int,
    timing: Timing,
    outcomes: dict[int, str],
    problems: list[str],
    commits: dict[str, Any],
    settings: dict[str, Any],
) -> dict[str, Any]:
    lat = timing.latencies
    return {
        "impl": impl,
        "version": version,
        "store": store,
        "available": True,
        "sagas": sagas,
        "concurrency": concurrency,
        "seconds": round(timing.seconds, 4),
        "sagas_per_s": round(sagas / timing.seconds, 1) if timing.seconds > 0 else None,
        "latency_ms": {
            "p50": round(percentile(lat, 50) * 1000, 3),
            "p99": round(percentile(lat, 99) * 1000, 3),
            "mean": round(statistics.fmean(lat) * 1000, 3) if lat else None,
            "max": round(max(lat) * 1000, 3) if lat else None,
        },
        "cpu_ms_per_saga": round(timing.cpu_seconds / sagas * 1000, 4) if sagas else None,
        "commits": commits,
        "completed": sum(1 for o in outcomes.values() if o == "completed"),
        "compensated": sum(1 for o in outcomes.values() if o == "compensated"),
        "ok": not problems,
        "problems": problems[:20],
        "problem_count": len(problems),
        "settings": settings,
        "python": platform.python_version(),
    }


def emit(result: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>16}: {value}")
    if not result.get("available", True):
        return EXIT_UNAVAILABLE
    return EXIT_OK if result.get("ok") else EXIT_WRONG


def unavailable(impl: str, version: str, store: str, reason: str, as_json: bool) -> int:
    return emit(
        {"impl": impl, "version": version, "store": store, "available": False, "reason": reason},
        as_json,
    )


def base_args(description: str) -> Any:
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--sagas", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432"),
        help="PostgreSQL server URL without the database name",
    )
    parser.add_argument("--db-dir", default=str(CACHE), help="where SQLite files go")
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="the event loop the process runs on (SPEC.md section 5)",
    )
    return parser


# -- files ------------------------------------------------------------------------------------


def sqlite_file(db_dir: str, name: str) -> Path:
    """A fresh SQLite path: any file left by an earlier run (and its WAL) is removed."""
    directory = Path(db_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{os.getpid()}.db"
    remove_sqlite(path)
    return path


def remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal", "-sagakit.lock"):
        p = Path(str(path) + suffix)
        if p.exists():
            p.unlink()


# -- PostgreSQL, through psql (no driver needed in either venv) ------------------------------


def psql_available() -> bool:
    return shutil.which("psql") is not None


def psql(server: str, database: str, sql: str) -> str:
    """Run ``sql`` with psql against ``database`` on ``server`` and return unaligned output."""
    out = subprocess.run(
        ["psql", f"{server}/{database}", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"psql failed on {database}: {out.stderr.strip()}")
    return out.stdout.strip()


def pg_fresh_database(server: str, name: str) -> None:
    psql(server, "postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    psql(server, "postgres", f"CREATE DATABASE {name}")


def pg_settings(server: str) -> dict[str, str]:
    rows = psql(
        server,
        "postgres",
        "SELECT name || '=' || setting FROM pg_settings WHERE name IN "
        "('synchronous_commit','fsync','wal_sync_method','full_page_writes','commit_delay',"
        "'server_version','max_connections','shared_buffers')",
    )
    return dict(line.split("=", 1) for line in rows.splitlines())


def pg_wait_idle(server: str, database: str, timeout: float = 10.0) -> None:
    """Wait until no other session is connected to ``database``: a backend flushes its
    statistics when it exits, so counters read after this include all of the run's work."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = psql(
            server,
            "postgres",
            f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}'",
        )
        if n == "0":
            return
        time.sleep(0.02)


def pg_counters(server: str, database: str) -> dict[str, int]:
    """Counters read before and after a run:

    - ``next_xid``: the next transaction id to be assigned (read without assigning one). A
      transaction gets an id only when it writes, so the delta counts write transactions,
      the commits that must be durable (cluster-wide: the machine is otherwise idle);
    - ``wal_sync``/``wal_write``/``wal_records``: pg_stat_wal (cluster-wide), the WAL flushes
      actually made (several commits can share one: group commit);
    - ``xact_commit``: pg_stat_database for ``database``: every commit, read-only ones too.
    """
    row = psql(
        server,
        "postgres",
        "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint, w.wal_sync, w.wal_write,"
        " w.wal_records, coalesce(d.xact_commit, 0) FROM pg_stat_wal w"
        f" LEFT JOIN pg_stat_database d ON d.datname = '{database}'",
    )
    xid, sync, write, records, commits = (int(x) for x in row.split("|"))
    return {
        "next_xid": xid,
        "wal_sync": sync,
        "wal_write": write,
        "wal_records": records,
        "xact_commit": commits,
    }


def pg_commit_stats(before: dict[str, int], after: dict[str, int], sagas: int) -> dict[str, Any]:
    delta = {k: after[k] - before[k] for k in before}
    return {
        "method": "PostgreSQL counters over the timed run, read after its connections closed: "
        "write transactions = transaction ids assigned; wal_sync = pg_stat_wal flushes; "
        "xact_commit = pg_stat_database commits incl. read-only",
        "transactions": delta["next_xid"],
        "per_saga": round(delta["next_xid"] / sagas, 3) if sagas else None,
        "wal_sync": delta["wal_sync"],
        "wal_syncs_per_saga": round(delta["wal_sync"] / sagas, 3) if sagas else None,
        "xact_commit": delta["xact_commit"],
        "xact_commit_per_saga": round(delta["xact_commit"] / sagas, 3) if sagas else None,
        "wal_records": delta["wal_records"],
    }


# -- the machine ------------------------------------------------------------------------------


def fsync_latency(directory: Path = CACHE, rounds: int = 300) -> dict[str, float]:
    """os.write of 4 KiB + os.fdatasync, ``rounds`` times, on a file in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"fsync-probe-{os.getpid()}"
    block = b"\0" * 4096
    times: list[float] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return {
        "rounds": rounds,
        "p50_ms": round(percentile(times, 50) * 1000, 4),
        "p99_ms": round(percentile(times, 99) * 1000, 4),
        "mean_ms": round(statistics.fmean(times) * 1000, 4),
    }


def sqlite_commit_limit(directory: Path = CACHE, commits: int = 3000) -> dict[str, Any]:
    """Single-row INSERT commits from Python on SQLite WAL + synchronous=FULL: the storage's
    own limit for one writer (each commit one fsync of the WAL)."""
    import sqlite3

    path = sqlite_file(str(directory), "commit-probe")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
        t0 = time.perf_counter()
        for i in range(commits):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (id, body) VALUES (?, ?)", (i, "x" * 200))
            conn.execute("COMMIT")
        seconds = time.perf_counter() - t0
    finally:
        conn.close()
        remove_sqlite(path)
    return {"commits": commits, "commits_per_s": round(commits / seconds, 1)}


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    import sqlite3

    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
    }
