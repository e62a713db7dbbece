"""Throughput with 1, 2 and 4 worker processes sharing one PostgreSQL (issue: many workers).

Each worker process runs the order saga of bench/SPEC.md (four local steps, 20 % compensated)
with its own share of the sagas, C in flight per process, all processes starting at one
agreed instant on one shared database. Reported: total sagas per second over the span from
the first start to the last finish, and the outcome check of every process.

    .venv/bin/python bench/workers.py --workers 1,2,4 --sagas 4000 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

HERE = Path(__file__).resolve().parent
DATABASE = "bench_workers"


async def one_process(url: str, share: int, offset: int, concurrency: int, start_at: float) -> int:
    """A worker process: run sagas offset..offset+share-1 once the common start time comes."""
    import sagakit_bench as sb

    from sagakit import App, Worker, open_store

    store = open_store(url, owner=True)
    run_id = uuid.uuid4().hex[:8]
    problems: list[str] = []
    async with Worker(App(sagas=[sb.definition]), store) as worker:
        await asyncio.sleep(max(0.0, start_at - time.time()))  # the agreed instant
        began = time.time()

        async def one(i: int) -> str:
            handle = await worker.client.start(sb.definition, c.order(offset + i, run_id))
            return sb.classify(await handle.result(), problems, offset + i)

        timing, outcomes = await c.drive(share, concurrency, one)
        ended = time.time()
    await store.close()
    wrong = [o for o in outcomes.values() if o.startswith("wrong")]
    print(
        json.dumps(
            {
                "began": began,
                "ended": ended,
                "sagas": share,
                "wrong": len(wrong),
                "problems": problems[:5],
                "cpu_seconds": timing.cpu_seconds,
                "p50_ms": c.percentile(timing.latencies, 0.5) * 1000,
            }
        )
    )
    return 1 if wrong or problems else 0


def measure(pg_url: str, workers: int, sagas: int, concurrency: int) -> dict[str, Any]:
    c.pg_fresh_database(pg_url, DATABASE)
    url = f"{pg_url}/{DATABASE}"
    subprocess.run(
        [sys.executable, "-m", "sagakit", "migrate", "--db", url], check=True, capture_output=True
    )
    start_at = time.time() + 2.0 + workers * 0.5  # time for every process to start up
    share = sagas // workers
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--one",
                url,
                str(share),
                str(k * share),
                str(concurrency),
                str(start_at),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(workers)
    ]
    reports = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        reports.append(json.loads(out.strip().splitlines()[-1]))
    span = max(r["ended"] for r in reports) - min(r["began"] for r in reports)
    total = sum(r["sagas"] for r in reports)
    c.psql(pg_url, "postgres", f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    return {
        "workers": workers,
        "sagas": total,
        "concurrency_per_worker": concurrency,
        "seconds": round(span, 3),
        "sagas_per_second": round(total / span, 1),
        "p50_ms": [round(r["p50_ms"], 2) for r in reports],
        "cpu_ms_per_saga": round(sum(r["cpu_seconds"] for r in reports) / total * 1000, 3),
        "wrong": sum(r["wrong"] for r in reports),
        "ok": all(r["wrong"] == 0 and not r["problems"] for r in reports),
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        url, share, offset, concurrency, start_at = sys.argv[2:7]
        return asyncio.run(
            one_process(url, int(share), int(offset), int(concurrency), float(start_at))
        )
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--sagas", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=64, help="in flight per worker")
    parser.add_argument(
        "--pg-url", default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432")
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    points = [
        measure(args.pg_url, int(w), args.sagas, args.concurrency) for w in args.workers.split(",")
    ]
    result = {
        "cpus": os.cpu_count(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "points": points,
    }
    out = HERE / "results" / f"workers-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for p in points:
            print(
                f"{p['workers']} worker(s): {p['sagas_per_second']:8.1f} sagas/s "
                f"({p['sagas']} sagas in {p['seconds']} s, ok={p['ok']})"
            )
    return 0 if all(p["ok"] for p in points) else 1


if __name__ == "__main__":
    sys.exit(main())
