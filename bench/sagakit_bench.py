"""The order-fulfillment saga on sagakit (bench/SPEC.md). Runs with the project's venv.

    .venv/bin/python bench/sagakit_bench.py --store sqlite --sagas 2000 --concurrency 64 --json

Prints one result; exits 1 on a wrong answer, 3 when the store is not available (yet).
"""

from __future__ import annotations

import os
import sqlite3
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

import sagakit
from sagakit import (
    App,
    Saga,
    SagaStatus,
    StepContext,
    StepFailed,
    StepStatus,
    Worker,
    open_store,
    runtime,
)

IMPL = "sagakit"
EFFECTS = c.EffectLog()


def _data(ctx: StepContext[Any]) -> dict[str, Any]:
    return ctx.data  # type: ignore[no-any-return]


async def reserve_inventory(ctx: StepContext[Any]) -> object:
    return EFFECTS.apply(_data(ctx)["order_id"], ctx.idempotency_key, "reserve_inventory")


async def release_inventory(ctx: StepContext[Any]) -> None:
    EFFECTS.apply(_data(ctx)["order_id"], ctx.idempotency_key, "release_inventory")


async def process_payment(ctx: StepContext[Any]) -> object:
    return EFFECTS.apply(_data(ctx)["order_id"], ctx.idempotency_key, "process_payment")


async def refund_payment(ctx: StepContext[Any]) -> None:
    EFFECTS.apply(_data(ctx)["order_id"], ctx.idempotency_key, "refund_payment")


async def create_shipment(ctx: StepContext[Any]) -> object:
    data = _data(ctx)
    if data["fail_shipment"]:
        raise StepFailed("no carrier serves this address")  # definite: nothing was done
    return EFFECTS.apply(data["order_id"], ctx.idempotency_key, "create_shipment")


async def cancel_shipment(ctx: StepContext[Any]) -> None:
    EFFECTS.apply(_data(ctx)["order_id"], ctx.idempotency_key, "cancel_shipment")


async def send_confirmation(ctx: StepContext[Any]) -> object:
    return EFFECTS.apply(_data(ctx)["order_id"], ctx.idempotency_key, "send_confirmation")


async def retract_confirmation(ctx: StepContext[Any]) -> None:
    EFFECTS.apply(_data(ctx)["order_id"], ctx.idempotency_key, "retract_confirmation")


order_saga = (
    Saga("order_fulfillment")
    .local("reserve_inventory", reserve_inventory, compensation=release_inventory)
    .local("process_payment", process_payment, compensation=refund_payment)
    .local("create_shipment", create_shipment, compensation=cancel_shipment)
    .local("send_confirmation", send_confirmation, compensation=retract_confirmation)
)
definition = order_saga.build()

_COMPLETED_STEPS = [StepStatus.DONE] * 4
_COMPENSATED_STEPS = [
    StepStatus.COMPENSATED,
    StepStatus.COMPENSATED,
    StepStatus.FAILED,
    StepStatus.PENDING,
]


def classify(instance: sagakit.SagaInstance, problems: list[str], index: int) -> str:
    """'completed' or 'compensated' when the instance is in exactly that terminal state."""
    steps = [s.status for s in instance.steps]
    if instance.status is SagaStatus.COMPLETED and steps == _COMPLETED_STEPS:
        return "completed"
    if instance.status is SagaStatus.FAILED and steps == _COMPENSATED_STEPS:
        return "compensated"
    problems.append(
        f"saga {index}: status {instance.status.value} ({instance.status_reason}), steps {steps}"
    )
    return f"wrong:{instance.status.value}"


async def run(args: Any) -> int:
    settings: dict[str, Any] = {}
    if args.store == "sqlite":
        path = c.sqlite_file(args.db_dir, "sagakit")
        store = open_store(f"sqlite:///{path}", owner=True, synchronous="FULL")
        settings = {"url": f"sqlite:///{path}", **_sqlite_settings(store, path)}
        pg_db = None
    else:
        pg_db = "bench_sagakit"
        url = f"{args.pg_url}/{pg_db}"
        try:
            c.pg_fresh_database(args.pg_url, pg_db)
            store = open_store(url, owner=True)
        except Exception as exc:  # no PostgreSQL store in sagakit yet: say so, do not crash
            c.psql(args.pg_url, "postgres", f"DROP DATABASE IF EXISTS {pg_db} WITH (FORCE)")
            return c.unavailable(
                IMPL,
                sagakit.__version__,
                args.store,
                f"not available yet: {type(exc).__name__}: {exc}",
                args.json,
            )
        settings = {"url": url, **c.pg_settings(args.pg_url)}
    settings["event_loop"] = runtime.loop_name()

    run_id = uuid.uuid4().hex[:8]
    problems: list[str] = []
    try:
        async with Worker(App(sagas=[definition]), store) as worker:

            async def one(i: int) -> str:
                handle = await worker.client.start(definition, c.order(i, run_id))
                instance = await handle.result()
                return classify(instance, problems, i)

            before_pg = c.pg_counters(args.pg_url, pg_db) if pg_db else None
            commits_before = worker.commits
            timing, outcomes = await c.drive(args.sagas, args.concurrency, one)
            commits = worker.commits - commits_before
    finally:
        await store.close()
        if args.store == "sqlite":
            c.remove_sqlite(path)

    if pg_db and before_pg is not None:
        c.pg_wait_idle(args.pg_url, pg_db)
        commit_stats = c.pg_commit_stats(before_pg, c.pg_counters(args.pg_url, pg_db), args.sagas)
    else:
        commit_stats = {
            "method": "worker.commits: store transactions the worker committed in the timed run",
            "transactions": commits,
            "per_saga": round(commits / args.sagas, 3),
        }
    # On both stores: the durable-commit floor at C=1 is these x one commit's cost (run.py).
    commit_stats["worker_commits"] = commits
    commit_stats["worker_commits_per_saga"] = round(commits / args.sagas, 3)
    problems.extend(c.verify(outcomes, EFFECTS, run_id, args.sagas))
    if EFFECTS.duplicates:
        settings["duplicate_effect_calls"] = EFFECTS.duplicates
    result = c.summary(
        impl=IMPL,
        version=sagakit.__version__,
        store=args.store,
        sagas=args.sagas,
        concurrency=args.concurrency,
        timing=timing,
        outcomes=outcomes,
        problems=problems,
        commits=commit_stats,
        settings=settings,
    )
    return c.emit(result, args.json)


def _sqlite_settings(store: Any, path: Path) -> dict[str, Any]:
    """The settings the store runs with: journal_mode is persistent in the file, so a separate
    connection reads it; synchronous is per connection, so it is read from the store's own
    writing connection when it can be found (it is idle before the worker starts), else
    reported as requested."""
    check = sqlite3.connect(path)
    try:
        journal = check.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        check.close()
    synchronous = "FULL (requested)"
    conn = getattr(store, "_conn", None)
    if isinstance(conn, sqlite3.Connection):
        level = conn.execute("PRAGMA synchronous").fetchone()[0]
        synchronous = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(level, str(level))
    return {"journal_mode": journal, "synchronous": synchronous}


def main() -> int:
    parser = c.base_args("the order saga on sagakit")
    args = parser.parse_args()
    # The loop sagakit's own processes run on (sagakit.runtime), chosen the way users do.
    os.environ[runtime.ENV_LOOP] = args.loop
    return runtime.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
