"""The order-fulfillment saga on DBOS Transact (bench/SPEC.md). Runs ONLY from bench/.venv-dbos.

    bench/.venv-dbos/bin/python bench/dbos_bench.py --store sqlite --sagas 1200 \
        --concurrency 64 --json

Written the way DBOS documents it: a @DBOS.workflow() calling @DBOS.step() functions, and on
failure the compensations, also steps, run in reverse order inside an ``except`` block, after
which the workflow re-raises (it ends in DBOS's ERROR state, the saga's "failed").

SQLite: the system database file is created fresh per run and every connection DBOS opens is
set to journal_mode=WAL (DBOS's best SQLite mode: its default is the rollback journal) and
synchronous=FULL, the same settings as sagakit's store. Commits are counted with the sqlite3
trace callback: a traced COMMIT whose connection changed rows since its previous COMMIT is one
durable write transaction. PostgreSQL: a fresh database ``bench_dbos``; commits are counted
from pg_stat_database and pg_stat_wal.

Prints one result; exits 1 on a wrong answer.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

if "dbos" not in sys.modules:
    try:
        import dbos as _dbos_probe  # noqa: F401
    except ImportError:
        sys.exit("dbos is not installed here: run this with bench/.venv-dbos/bin/python")

import sqlalchemy as sa
from dbos import DBOS, DBOSConfig

IMPL = "dbos"
EFFECTS = c.EffectLog()


# -- counting SQLite commits and pinning the settings on every connection DBOS opens ---------


class CommitCounter:
    def __init__(self) -> None:
        self.commits = 0
        self.read_only_commits = 0
        self.counting = False

    def attach(self, conn: sqlite3.Connection) -> None:
        last = [conn.total_changes]

        def trace(statement: str) -> None:
            if not self.counting or not statement.lstrip().upper().startswith(("COMMIT", "END")):
                return
            now = conn.total_changes
            if now != last[0]:
                self.commits += 1
            else:
                self.read_only_commits += 1
            last[0] = now

        conn.set_trace_callback(trace)


COUNTER = CommitCounter()


@sa.event.listens_for(sa.engine.Engine, "connect")
def _pin_sqlite(dbapi_conn: Any, _record: Any) -> None:
    if isinstance(dbapi_conn, sqlite3.Connection):
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=FULL")
        COUNTER.attach(dbapi_conn)


# -- the saga, async (DBOS runs async workflows on the caller's event loop) -------------------


def _key(effect: str) -> str:
    return f"{DBOS.workflow_id}:{DBOS.step_id}:{effect}"


@DBOS.step()
async def reserve_inventory(order: dict[str, Any]) -> dict[str, Any]:
    return EFFECTS.apply(order["order_id"], _key("reserve_inventory"), "reserve_inventory")


@DBOS.step()
async def release_inventory(order: dict[str, Any]) -> None:
    EFFECTS.apply(order["order_id"], _key("release_inventory"), "release_inventory")


@DBOS.step()
async def process_payment(order: dict[str, Any]) -> dict[str, Any]:
    return EFFECTS.apply(order["order_id"], _key("process_payment"), "process_payment")


@DBOS.step()
async def refund_payment(order: dict[str, Any]) -> None:
    EFFECTS.apply(order["order_id"], _key("refund_payment"), "refund_payment")


@DBOS.step()
async def create_shipment(order: dict[str, Any]) -> dict[str, Any]:
    if order["fail_shipment"]:
        raise c.ShipmentRefused("no carrier serves this address")  # definite: nothing done
    return EFFECTS.apply(order["order_id"], _key("create_shipment"), "create_shipment")


@DBOS.step()
async def cancel_shipment(order: dict[str, Any]) -> None:
    EFFECTS.apply(order["order_id"], _key("cancel_shipment"), "cancel_shipment")


@DBOS.step()
async def send_confirmation(order: dict[str, Any]) -> dict[str, Any]:
    return EFFECTS.apply(order["order_id"], _key("send_confirmation"), "send_confirmation")


@DBOS.workflow()
async def order_workflow(order: dict[str, Any]) -> str:
    compensations: list[Any] = []
    try:
        await reserve_inventory(order)
        compensations.append(release_inventory)
        await process_payment(order)
        compensations.append(refund_payment)
        await create_shipment(order)
        compensations.append(cancel_shipment)
        await send_confirmation(order)
    except Exception:
        for compensate in reversed(compensations):
            await compensate(order)
        raise
    return "completed"


# -- the same saga, sync (DBOS runs sync workflows on its thread pool) ------------------------


@DBOS.step(name="sync_reserve_inventory")
def s_reserve_inventory(order: dict[str, Any]) -> dict[str, Any]:
    return EFFECTS.apply(order["order_id"], _key("reserve_inventory"), "reserve_inventory")


@DBOS.step(name="sync_release_inventory")
def s_release_inventory(order: dict[str, Any]) -> None:
    EFFECTS.apply(order["order_id"], _key("release_inventory"), "release_inventory")


@DBOS.step(name="sync_process_payment")
def s_process_payment(order: dict[str, Any]) -> dict[str, Any]:
    return EFFECTS.apply(order["order_id"], _key("process_payment"), "process_payment")


@DBOS.step(name="sync_refund_payment")
def s_refund_payment(order: dict[str, Any]) -> None:
    EFFECTS.apply(order["order_id"], _key("refund_payment"), "refund_payment")


@DBOS.step(name="sync_create_shipment")
def s_create_shipment(order: dict[str, Any]) -> dict[str, Any]:
    if order["fail_shipment"]:
        raise c.ShipmentRefused("no carrier serves this address")
    return EFFECTS.apply(order["order_id"], _key("create_shipment"), "create_shipment")


@DBOS.step(name="sync_cancel_shipment")
def s_cancel_shipment(order: dict[str, Any]) -> None:
    EFFECTS.apply(order["order_id"], _key("cancel_shipment"), "cancel_shipment")


@DBOS.step(name="sync_send_confirmation")
def s_send_confirmation(order: dict[str, Any]) -> dict[str, Any]:
    return EFFECTS.apply(order["order_id"], _key("send_confirmation"), "send_confirmation")


@DBOS.workflow(name="sync_order_workflow")
def s_order_workflow(order: dict[str, Any]) -> str:
    compensations: list[Any] = []
    try:
        s_reserve_inventory(order)
        compensations.append(s_release_inventory)
        s_process_payment(order)
        compensations.append(s_refund_payment)
        s_create_shipment(order)
        compensations.append(s_cancel_shipment)
        s_send_confirmation(order)
    except Exception:
        for compensate in reversed(compensations):
            compensate(order)
        raise
    return "completed"


# -- the run ----------------------------------------------------------------------------------


def _outcome(result: Any, error: BaseException | None, problems: list[str], i: int) -> str:
    if error is None and result == "completed":
        return "completed"
    if isinstance(error, c.ShipmentRefused):
        return "compensated"
    problems.append(f"saga {i}: result {result!r}, error {error!r}")
    return "wrong"


async def run(args: Any) -> int:
    logging.getLogger("dbos").setLevel(logging.CRITICAL)
    settings: dict[str, Any] = {"api": args.api}
    pg_db = None
    if args.store == "sqlite":
        path = c.sqlite_file(args.db_dir, "dbos")
        url = f"sqlite:///{path}"
    else:
        pg_db = "bench_dbos"
        c.pg_fresh_database(args.pg_url, pg_db)
        url = f"{args.pg_url}/{pg_db}"
        settings.update(c.pg_settings(args.pg_url))
    config: DBOSConfig = {
        "name": "bench-orders",
        "system_database_url": url,
        "run_admin_server": False,
        # DBOS logs every failed workflow at ERROR with its traceback; the saga's definite
        # failure is expected here, so logging is quietened (this only helps DBOS).
        "log_level": "CRITICAL",
    }
    if args.pool_size:
        config["sys_db_pool_size"] = args.pool_size
    settings["url"] = url
    settings["event_loop"] = type(asyncio.get_running_loop()).__module__.split(".")[0]
    dbos = DBOS(config=config)
    DBOS.launch()
    run_id = uuid.uuid4().hex[:8]
    problems: list[str] = []
    ids: dict[int, str] = {}
    pool = ThreadPoolExecutor(max(1, args.concurrency), thread_name_prefix="bench-client")
    try:
        if args.store == "sqlite":
            settings.update(_sqlite_settings(dbos))

        async def one_async(i: int) -> str:
            handle = await DBOS.start_workflow_async(order_workflow, c.order(i, run_id))
            ids[i] = handle.get_workflow_id()
            try:
                result, error = await handle.get_result(), None
            except Exception as exc:
                result, error = None, exc
            return _outcome(result, error, problems, i)

        def one_sync_blocking(i: int) -> str:
            handle = DBOS.start_workflow(s_order_workflow, c.order(i, run_id))
            ids[i] = handle.get_workflow_id()
            try:
                result, error = handle.get_result(), None
            except Exception as exc:
                result, error = None, exc
            return _outcome(result, error, problems, i)

        async def one_sync(i: int) -> str:
            return await asyncio.get_running_loop().run_in_executor(pool, one_sync_blocking, i)

        before_pg = c.pg_counters(args.pg_url, pg_db) if pg_db else None
        COUNTER.counting = True
        timing, outcomes = await c.drive(
            args.sagas, args.concurrency, one_async if args.api == "async" else one_sync
        )
        COUNTER.counting = False
        # Outside the timed window: DBOS's own record of every workflow's terminal state.
        statuses = {
            w.workflow_id: w.status
            for w in await DBOS.list_workflows_async(
                workflow_ids=list(ids.values()), load_input=False, load_output=False
            )
        }
        for i, wid in ids.items():
            want = "ERROR" if c.fails(i) else "SUCCESS"
            if statuses.get(wid) != want:
                problems.append(f"saga {i}: DBOS status {statuses.get(wid)}, expected {want}")
    finally:
        pool.shutdown(wait=False)
        DBOS.destroy()
        if args.store == "sqlite":
            c.remove_sqlite(path)

    if pg_db and before_pg is not None:
        c.pg_wait_idle(args.pg_url, pg_db)
        commit_stats = c.pg_commit_stats(before_pg, c.pg_counters(args.pg_url, pg_db), args.sagas)
    else:
        commit_stats = {
            "method": "sqlite3 trace callback: COMMITs of transactions that changed rows",
            "transactions": COUNTER.commits,
            "read_only_commits": COUNTER.read_only_commits,
            "per_saga": round(COUNTER.commits / args.sagas, 3),
        }
    problems.extend(c.verify(outcomes, EFFECTS, run_id, args.sagas))
    if EFFECTS.duplicates:
        settings["duplicate_effect_calls"] = EFFECTS.duplicates
    result = c.summary(
        impl=IMPL,
        version=dist_version("dbos"),
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


def _sqlite_settings(dbos: DBOS) -> dict[str, Any]:
    """The pragmas of a connection from DBOS's own system-database engine."""
    engine = dbos._sys_db.engine
    with engine.connect() as conn:
        journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
    return {
        "journal_mode": journal,
        "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(sync, sync),
    }


def main() -> int:
    parser = c.base_args("the order saga on DBOS Transact")
    parser.add_argument(
        "--api",
        choices=("async", "sync"),
        default="async",
        help="async workflows on the event loop (default) or sync workflows on DBOS's threads",
    )
    parser.add_argument("--pool-size", type=int, default=0, help="sys_db_pool_size (0: default)")
    args = parser.parse_args()
    if args.loop == "uvloop":
        # Every loop DBOS makes (its own and asyncio.run's) is a uvloop one.
        import uvloop

        uvloop.install()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
