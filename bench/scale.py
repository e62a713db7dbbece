"""Scale (bench/SPEC.md section 10): many sagas in flight, and a store with a million.

    .venv/bin/python bench/scale.py inflight --store sqlite --sagas 10000 --json
    .venv/bin/python bench/scale.py million --store postgres --json

``inflight``: N sagas whose first step is remote, sent to a participant that holds every
command without answering; once all N are dispatched and waiting (every command delivered,
the outbox empty), the process's resident set is read from /proc/self/status; then the
participant answers them all and every saga must complete, each with its effects once.

``million``: 1,000,000 finished instances (and a few stuck ones) bulk-loaded by
bench/loadgen.py and cached; times the first page of stuck instances
(``Client.list(status="stuck", limit=100)``) and showing one instance (``Client.get`` +
``Client.history``, as ``sagakit show`` does), median and p95 over repetitions after a
warm-up, and records the query plans the store's own SQL gets (EXPLAIN).

Each prints one JSON object; exits 1 on a wrong answer, 3 when the store is not reachable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import enum
import gc
import os
import re
import statistics
import sys
import time
import types
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
import loadgen

import sagakit
from sagakit import (
    App,
    Client,
    Saga,
    SagaDefinition,
    SagaStatus,
    StepContext,
    StepStatus,
    Worker,
    open_store,
)
from sagakit.messages import MessageKind, decode, encode
from sagakit.transitions import Outcome

TARGET_RSS_MB = 300.0
TARGET_QUERY_MS = 50.0
PARTICIPANT = "scale_inventory"
WARMUP_SAGAS = 200
STARTERS = 256  # clients starting sagas at once
RELEASE_CHUNK = 1000  # replies published at once
REPS = 50
WARMUP_REPS = 5

# -- memory -----------------------------------------------------------------------------------


def proc_status() -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon of this process, in MB (/proc/self/status)."""
    out: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


_SHARED = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, enum.Enum)


def deep_size(root: object, seen: set[int]) -> int:
    """Bytes reachable from ``root`` (sys.getsizeof summed), each object once across calls
    sharing ``seen``; classes, functions, modules, enum members and saga definitions are
    shared by every instance and not counted."""
    total = 0
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (*_SHARED, SagaDefinition)) or obj is None:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, (str, bytes, int, float, bool)):
            continue
        else:
            if hasattr(obj, "__dict__"):
                stack.append(obj.__dict__)
            for name in getattr(type(obj), "__slots__", ()):
                with contextlib.suppress(AttributeError):
                    stack.append(getattr(obj, name))
    return total


# -- (a) sagas in flight, waiting on a remote participant -------------------------------------

EFFECTS = c.EffectLog()


async def process_payment(ctx: StepContext[Any]) -> object:
    return EFFECTS.apply(ctx.data["order_id"], ctx.idempotency_key, "process_payment")


async def refund_payment(ctx: StepContext[Any]) -> None:
    EFFECTS.apply(ctx.data["order_id"], ctx.idempotency_key, "refund_payment")


async def create_shipment(ctx: StepContext[Any]) -> object:
    return EFFECTS.apply(ctx.data["order_id"], ctx.idempotency_key, "create_shipment")


async def cancel_shipment(ctx: StepContext[Any]) -> None:
    EFFECTS.apply(ctx.data["order_id"], ctx.idempotency_key, "cancel_shipment")


async def send_confirmation(ctx: StepContext[Any]) -> object:
    return EFFECTS.apply(ctx.data["order_id"], ctx.idempotency_key, "send_confirmation")


async def retract_confirmation(ctx: StepContext[Any]) -> None:
    EFFECTS.apply(ctx.data["order_id"], ctx.idempotency_key, "retract_confirmation")


# The order saga with its first step remote: the reservation is a command to the inventory
# service, which answers when it answers (a long timeout: the test holds the replies back).
inflight_saga = (
    Saga("scale_order")
    .remote(
        "reserve_inventory",
        participant=PARTICIPANT,
        command="inventory.reserve",
        compensation="inventory.release",
        timeout=3600.0,
        compensation_timeout=3600.0,
    )
    .local("process_payment", process_payment, compensation=refund_payment)
    .local("create_shipment", create_shipment, compensation=cancel_shipment)
    .local("send_confirmation", send_confirmation, compensation=retract_confirmation)
    .build()
)
LOCAL_EFFECTS = ["process_payment", "create_shipment", "send_confirmation"]


class HeldParticipant:
    """The remote inventory service, subscribed on the worker's transport. It records each
    command and returns without replying, so the command's outbox row is done but no reply
    comes; ``release`` sends every reply later. With ``auto_reply`` it answers at once."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.held: dict[str, bytes] = {}
        self.duplicates = 0
        self.expected = 0
        self.all_in = asyncio.Event()
        self.auto_reply = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, body: bytes) -> None:
        env = decode(body)
        if env.kind is not MessageKind.COMMAND:
            return
        if self.auto_reply:
            task = asyncio.create_task(self._send(self.reply(body)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        if env.saga_id in self.held:
            self.duplicates += 1
            return
        # A copy: the body is the worker's orjson output, whose buffer is far larger than its
        # length (~8 KiB for a 0.8 KB message); the remote service would not hold that buffer.
        self.held[env.saga_id] = memoryview(body).tobytes()
        if len(self.held) >= self.expected:
            self.all_in.set()

    @staticmethod
    def reply(body: bytes) -> bytes:
        """The success reply to a command, as the remote service would send it (trimmed to
        its length, as a body arriving from a broker is, not an orjson buffer)."""
        env = decode(body)
        assert isinstance(env.payload, dict)
        reply = encode(
            dataclasses.replace(
                env,
                id=uuid.uuid4().hex,
                kind=MessageKind.REPLY,
                causation_id=env.id,
                timestamp=time.time(),
                payload={"reserved": env.payload["quantity"], "order": env.payload["order_id"]},
                outcome=Outcome.SUCCESS,
                error=None,
                retryable=True,
                retry_after=None,
            )
        )
        return memoryview(reply).tobytes()

    async def _send(self, reply: bytes) -> None:
        await self.worker.transport.publish(self.worker.reply_queue, reply)

    async def release(self) -> None:
        bodies = list(self.held.values())
        for i in range(0, len(bodies), RELEASE_CHUNK):
            await asyncio.gather(
                *(self._send(self.reply(b)) for b in bodies[i : i + RELEASE_CHUNK])
            )

    def held_bytes(self) -> int:
        return deep_size(self.held, set())


async def _start_all(worker: Worker, run: str, first: int, count: int) -> list[str]:
    ids: list[str] = [""] * count
    indexes = iter(range(count))

    async def starter() -> None:
        for k in indexes:
            handle = await worker.client.start(inflight_saga, c.order(first + k, run))
            ids[k] = handle.saga_id

    await asyncio.gather(*(starter() for _ in range(min(STARTERS, count))))
    return ids


async def _until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


def _check_instance(instance: sagakit.SagaInstance, problems: list[str]) -> None:
    steps = [s.status for s in instance.steps]
    if instance.status is not SagaStatus.COMPLETED or steps != [StepStatus.DONE] * 4:
        problems.append(
            f"saga {instance.saga_id}: {instance.status.value} ({instance.status_reason}),"
            f" steps {[s.value for s in steps]}"
        )
        return
    data = instance.data
    assert isinstance(data, dict)
    reserved = instance.steps[0].result
    if reserved != {"reserved": data["quantity"], "order": data["order_id"]}:
        problems.append(f"saga {instance.saga_id}: reserve_inventory result {reserved!r}")


async def inflight(args: argparse.Namespace) -> dict[str, Any]:
    n = args.sagas
    schema = None
    if args.store == "sqlite":
        path = c.sqlite_file(args.db_dir, "scale-inflight")
        url = f"sqlite:///{path}"
        store = open_store(url, owner=True, synchronous="FULL")
    else:
        schema = f"bench_inflight_{uuid.uuid4().hex[:8]}"
        url = loadgen.pg_url(args.pg_url, args.pg_database, schema)
        store = open_store(url, owner=True)
    run = uuid.uuid4().hex[:8]
    problems: list[str] = []
    result: dict[str, Any] = {
        "test": "inflight",
        "store": args.store,
        "sagas": n,
        "available": True,
        "saga": "scale_order: remote reserve_inventory (held), then 3 local steps",
    }
    try:
        async with Worker(App(sagas=[inflight_saga]), store) as worker:
            participant = HeldParticipant(worker)
            await worker.transport.subscribe(PARTICIPANT, participant.handle)

            # Warm-up: the same saga, answered at once, so the baseline holds what the
            # worker keeps anyway (code paths run, caches and pools filled).
            participant.auto_reply = True
            warm = await _start_all(worker, run + "w", 0, WARMUP_SAGAS)
            await asyncio.gather(*(worker.wait_settled(i, timeout=120) for i in warm))
            participant.auto_reply = False
            await asyncio.sleep(0.5)
            gc.collect()
            baseline = proc_status()
            objects0 = len(gc.get_objects())
            if args.trace:
                import tracemalloc

                tracemalloc.start(args.trace)
                snap0 = tracemalloc.take_snapshot()
            peak_reset = reset_peak()

            # N sagas dispatched and waiting.
            participant.expected = n
            t0 = time.perf_counter()
            ids = await _start_all(worker, run, 0, n)
            t_started = time.perf_counter() - t0
            async with asyncio.timeout(600):
                await participant.all_in.wait()

            async def outbox_empty() -> bool:
                return not await store.pending("sagakit.orchestrator", 1)

            await _until(outbox_empty, 120, "the outbox to drain")
            t_waiting = time.perf_counter() - t0
            counts = await store.count_by_status()
            if counts.get(SagaStatus.PENDING, 0) != n:
                problems.append(f"while waiting: statuses {dict(counts)}, expected {n} pending")
            sample = await store.get(ids[n // 2])
            if sample is None or sample.steps[0].status is not StepStatus.RUNNING:
                problems.append(f"while waiting: saga {ids[n // 2]} is {sample}")
            gc.collect()
            waiting = proc_status()
            objects1 = len(gc.get_objects())
            cache = getattr(worker, "_cache", {})
            cache_bytes = deep_size(cache, set()) if isinstance(cache, dict) else 0
            cached = len(cache) if isinstance(cache, dict) else None
            if args.trace:
                snap1 = tracemalloc.take_snapshot()
                tracemalloc.stop()
                top = snap1.compare_to(snap0, "traceback")[:12]
                result["trace_top"] = [
                    {
                        "kb_per_instance": round(d.size_diff / 1024 / n, 3),
                        "count_per_instance": round(d.count_diff / n, 2),
                        "where": [f"{f.filename.split('/')[-1]}:{f.lineno}" for f in d.traceback],
                    }
                    for d in top
                ]
                result["trace_total_kb_per_instance"] = round(
                    sum(d.size_diff for d in snap1.compare_to(snap0, "filename")) / 1024 / n, 3
                )
            held = participant.held_bytes()

            # Release: every reply at once (in chunks), then every saga must complete.
            # Each saga is checked as it settles and not kept: the test holds no results.
            async def settle(saga_id: str) -> None:
                try:
                    _check_instance(await worker.wait_settled(saga_id, timeout=600), problems)
                except Exception as exc:
                    problems.append(f"saga {saga_id}: {type(exc).__name__}: {exc}")

            t1 = time.perf_counter()
            waits = [asyncio.ensure_future(settle(i)) for i in ids]
            await participant.release()
            await asyncio.gather(*waits)
            t_release = time.perf_counter() - t1
            del waits
            counts_end = await store.count_by_status()
            end = proc_status()
    finally:
        await store.close()
        if schema is not None:
            c.psql(args.pg_url, args.pg_database, f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        elif args.store == "sqlite":
            c.remove_sqlite(path)

    if counts_end.get(SagaStatus.COMPLETED, 0) != n + WARMUP_SAGAS:
        problems.append(f"at the end: statuses {dict(counts_end)}")
    for k in range(n):
        order_id = f"order-{run}-{k}"
        have = EFFECTS.effects.get(order_id, [])
        if have != LOCAL_EFFECTS:
            problems.append(f"{order_id}: effects {have}, expected {LOCAL_EFFECTS}")
    if participant.duplicates:
        problems.append(f"{participant.duplicates} command(s) delivered twice")

    growth = waiting["VmRSS"] - baseline["VmRSS"]
    result.update(
        rss_mb={
            "baseline": baseline["VmRSS"],
            "waiting": waiting["VmRSS"],
            "peak_to_waiting": waiting["VmHWM"] if peak_reset else None,
            "after_release": end["VmRSS"],
            "peak_overall": end["VmHWM"],
        },
        growth_mb=round(growth, 1),
        per_instance_kb=round(growth * 1024 / n, 2),
        cached_state_kb_per_instance=round(cache_bytes / 1024 / n, 2),
        cached_instances=cached,
        gc_objects_per_instance=round((objects1 - objects0) / n, 1),
        participant_held_mb=round(held / 2**20, 1),
        seconds={
            "start": round(t_started, 2),
            "all_waiting": round(t_waiting, 2),
            "release_to_all_completed": round(t_release, 2),
        },
        starts_per_s=round(n / t_started, 1),
        completions_per_s=round(n / t_release, 1),
        target_mb=TARGET_RSS_MB,
        met=waiting["VmRSS"] < TARGET_RSS_MB,
        ok=not problems,
        problems=problems[:20],
        problem_count=len(problems),
        python=sys.version.split()[0],
        version=sagakit.__version__,
    )
    return result


# -- (b) a million finished instances: the first page of stuck ones, and one instance --------


def _stats(samples: list[float]) -> dict[str, Any]:
    ms = [s * 1000 for s in samples]
    return {
        "median_ms": round(statistics.median(ms), 3),
        "p95_ms": round(c.percentile(ms, 95), 3),
        "min_ms": round(min(ms), 3),
        "max_ms": round(max(ms), 3),
        "reps": len(ms),
        "met": c.percentile(ms, 95) < TARGET_QUERY_MS and statistics.median(ms) < TARGET_QUERY_MS,
    }


async def _timed(client: Client, sample: list[str], problems: list[str]) -> dict[str, Any]:
    # (i) the first page of stuck instances; the very first call opens the store's
    # connection(s), as every `sagakit list` does: reported apart, not in the statistics
    t0 = time.perf_counter()
    await client.list(status="stuck", limit=100)
    first = time.perf_counter() - t0
    for _ in range(WARMUP_REPS):
        await client.list(status="stuck", limit=100)
    times: list[float] = []
    page: list[sagakit.SagaInstance] = []
    for _ in range(REPS):
        t0 = time.perf_counter()
        page = await client.list(status="stuck", limit=100)
        times.append(time.perf_counter() - t0)
    if len(page) != min(100, loadgen.STUCK) or any(i.status is not SagaStatus.STUCK for i in page):
        problems.append(f"stuck page: {len(page)} instances, {sorted({i.status for i in page})}")
    if [i.updated_at for i in page] != sorted((i.updated_at for i in page), reverse=True):
        problems.append("stuck page: not newest first")
    list_stats = _stats(times)
    list_stats["rows"] = len(page)
    list_stats["first_call_ms"] = round(first * 1000, 3)

    # (ii) showing one instance: a different one each time, drawn from the whole store
    need = WARMUP_REPS + REPS
    if len(sample) < need:
        problems.append(f"only {len(sample)} sample ids")
    for saga_id in sample[:WARMUP_REPS]:
        await client.get(saga_id)
        await client.history(saga_id)
    times = []
    sizes: list[int] = []
    for saga_id in sample[WARMUP_REPS:need]:
        t0 = time.perf_counter()
        instance = await client.get(saga_id)
        history = await client.history(saga_id)
        times.append(time.perf_counter() - t0)
        sizes.append(len(history))
        if instance.saga_id != saga_id or instance.status not in (
            SagaStatus.COMPLETED,
            SagaStatus.FAILED,
        ):
            problems.append(f"show {saga_id}: {instance.status}")
        if not history or history[0].kind.value != "created":
            problems.append(f"show {saga_id}: history {len(history)} entries")
    show_stats = _stats(times)
    show_stats["history_entries"] = {"min": min(sizes), "max": max(sizes)}
    return {"list_stuck": list_stats, "show": show_stats}


async def _capture_sql(url: str, store_kind: str, saga_id: str) -> dict[str, list[Any]]:
    """The statements the store itself runs for each operation (with their parameters)."""
    store = open_store(url, create=False, **({"pool_size": 1} if store_kind == "postgres" else {}))
    client = Client(store)
    captured: list[Any] = []
    out: dict[str, list[Any]] = {}
    try:
        await client.list(status="stuck", limit=1)  # opens the connection(s)
        if store_kind == "sqlite":
            conn = store._rconn  # type: ignore[union-attr]
            conn.set_trace_callback(captured.append)
        else:
            pool = await store._ready()  # type: ignore[union-attr]
            async with pool.acquire() as conn:
                conn.add_query_logger(lambda q: captured.append((q.query, q.args)))
        for name, op in (
            ("list_stuck", lambda: client.list(status="stuck", limit=100)),
            ("get", lambda: client.get(saga_id)),
            ("history", lambda: store.history(saga_id)),
        ):
            captured.clear()
            await op()
            # Only the operation's own queries (not a pool's reset on release, say).
            out[name] = [
                q
                for q in captured
                if (q if isinstance(q, str) else q[0]).lstrip().upper().startswith("SELECT")
                and ";" not in (q if isinstance(q, str) else q[0])
            ]
    finally:
        await store.close()
    return out


async def _explain(
    args: argparse.Namespace, url: str, saga_id: str
) -> tuple[dict[str, Any], list[str]]:
    """EXPLAIN each captured statement; flags full scans and sorts the indexes do not serve."""
    plans: dict[str, Any] = {}
    flags: list[str] = []
    try:
        captured = await _capture_sql(url, args.store, saga_id)
    except Exception as exc:  # the plans are evidence, not the measurement: never fatal
        return {"error": f"{type(exc).__name__}: {exc}"}, flags
    if args.store == "sqlite":
        import sqlite3

        conn = sqlite3.connect(loadgen.SQLITE_FILE)
        try:
            for name, statements in captured.items():
                plans[name] = []
                for sql in statements:
                    rows = conn.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
                    detail = [r[3] for r in rows]
                    plans[name].append({"sql": sql[:300], "plan": detail})
                    for d in detail:
                        if d.startswith("SCAN ") and "sagakit_" in d:
                            flags.append(f"{name}: full scan ({d})")
                        if "TEMP B-TREE" in d:
                            flags.append(f"{name}: sorts the rows found ({d}) (cheap when few)")
        finally:
            conn.close()
    else:
        conn = await loadgen._pg_connect(args.pg_url, args.pg_database, loadgen.PG_SCHEMA)
        try:
            for name, statements in captured.items():
                plans[name] = []
                for sql, params in statements:
                    try:
                        rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *params)
                    except Exception as exc:
                        plans[name].append({"sql": sql[:300], "error": str(exc)})
                        continue
                    detail = [r[0] for r in rows]
                    plans[name].append({"sql": sql[:300], "plan": detail})
                    for i, d in enumerate(detail):
                        node = d.strip().removeprefix("->").strip()
                        if node.startswith("Seq Scan on"):
                            flags.append(f"{name}: full scan ({node.split('  (')[0]})")
                        if re.match(r"(Incremental )?Sort\s+\(", node):
                            below = next(
                                (
                                    x.strip().removeprefix("->").strip().split("  (")[0]
                                    for x in detail[i + 1 :]
                                    if "Scan" in x
                                ),
                                "?",
                            )
                            flags.append(f"{name}: sorts the rows of: {below} (cheap when few)")
        finally:
            await conn.close()
    return plans, flags


async def million(args: argparse.Namespace, cache: dict[str, Any]) -> dict[str, Any]:
    problems: list[str] = []
    if args.store == "sqlite":
        url = f"sqlite:///{loadgen.SQLITE_FILE}"
        sample = loadgen.sqlite_sample()
    else:
        url = loadgen.pg_url(args.pg_url, args.pg_database, loadgen.PG_SCHEMA)
        sample = await loadgen.pg_sample(args.pg_url, args.pg_database)
    # Opened like `sagakit show`/`sagakit list` open a database: a reader, never creating.
    store = open_store(url, create=False)
    try:
        timings = await _timed(Client(store), sample, problems)
    finally:
        await store.close()
    plans, flags = await _explain(args, url, sample[0])
    return {
        "test": "million",
        "store": args.store,
        "available": True,
        "cache": cache,
        "queries": timings,
        "plans": plans,
        "plan_flags": flags,
        "target_ms": TARGET_QUERY_MS,
        "met": all(q["met"] for q in timings.values()),
        "ok": not problems,
        "problems": problems[:20],
        "problem_count": len(problems),
        "version": sagakit.__version__,
    }


# -- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("test", choices=("inflight", "million"))
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--sagas", type=int, default=10_000, help="inflight: sagas in flight")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432"),
        help="PostgreSQL server URL without the database name",
    )
    parser.add_argument("--pg-database", default="test")
    parser.add_argument("--db-dir", default=str(c.CACHE), help="where SQLite files go")
    parser.add_argument("--rebuild", action="store_true", help="million: rebuild the cache")
    parser.add_argument(
        "--trace",
        type=int,
        default=0,
        metavar="FRAMES",
        help="inflight: tracemalloc the growth while waiting (diagnosis; inflates the RSS)",
    )
    args = parser.parse_args()
    try:
        if args.test == "inflight":
            result = asyncio.run(inflight(args))
        elif args.store == "sqlite":
            cache = loadgen.sqlite_ensure(force=args.rebuild)  # runs its own event loop
            result = asyncio.run(million(args, cache))
        else:

            async def both() -> dict[str, Any]:
                cache = await loadgen.pg_ensure(args.pg_url, args.pg_database, force=args.rebuild)
                return await million(args, cache)

            result = asyncio.run(both())
    except (OSError, sagakit.StorageError) as exc:
        result = {
            "test": args.test,
            "store": args.store,
            "available": False,
            "reason": f"{type(exc).__name__}: {exc}",
        }
    except Exception as exc:  # e.g. a timeout: the run failed; say why, in the result
        print(f"{args.test} on {args.store} failed: {exc!r}", file=sys.stderr)
        result = {
            "test": args.test,
            "store": args.store,
            "available": True,
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "problems": [f"{type(exc).__name__}: {exc}"],
        }
    return c.emit(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
