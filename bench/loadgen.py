"""The million-instance stores of the scale benchmark (bench/SPEC.md section 10), bulk-loaded
and cached between runs.

Rows are copied from real ones: a worker runs three sagas of the benchmark's order saga
(one completed, one compensated, one stuck) on a scratch store of the same kind, and the rows
the store itself wrote for them (``sagakit_instances`` and ``sagakit_history``, every column as
stored) are the templates. Each synthetic instance is a copy of one template with a fresh
random saga id (as the worker makes them), its own order id, and its times moved onto a 30-day
timeline; its history rows are interleaved with those of the 63 sagas around it, as 64 sagas
in flight at once would have written them. Whatever encoding the stores use today is what
gets loaded: nothing here knows the column formats.

    .venv/bin/python bench/loadgen.py --store sqlite      # build (or check) the SQLite cache
    .venv/bin/python bench/loadgen.py --store postgres    # ... and the PostgreSQL schema

SQLite: ``bench/cache/million.db``. PostgreSQL: schema ``bench_million`` of database ``test``.
A cache is rebuilt when it is missing, when a row count is wrong, or when the rows the current
code writes no longer look like the cached ones (other columns, another encoding).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

from sagakit import App, Saga, StepContext, StepFailed, Worker, open_store

LOADER_VERSION = 4  # bump when the generated data changes shape
FINISHED = 1_000_000
STUCK = 150
SPAN_DAYS = 30.0
INTERLEAVE = 64  # sagas whose history rows are interleaved, as with 64 in flight
BATCH = 20_000  # instances per insert batch
SAMPLE = 1_000  # finished instance ids kept aside for the "show one instance" timing
SEED = 20261126

SQLITE_FILE = c.CACHE / "million.db"
PG_SCHEMA = "bench_million"
META = "bench_scale_meta"
SAMPLE_TABLE = "bench_scale_sample"

# -- the saga: the benchmark's order saga, with a refund that can fail (for stuck ones) ------

_EFFECTS = c.EffectLog()


def _apply(ctx: StepContext[Any], effect: str) -> dict[str, Any]:
    return _EFFECTS.apply(ctx.data["order_id"], ctx.idempotency_key, effect)


async def reserve_inventory(ctx: StepContext[Any]) -> object:
    return _apply(ctx, "reserve_inventory")


async def release_inventory(ctx: StepContext[Any]) -> None:
    _apply(ctx, "release_inventory")


async def process_payment(ctx: StepContext[Any]) -> object:
    return _apply(ctx, "process_payment")


async def refund_payment(ctx: StepContext[Any]) -> None:
    if ctx.data.get("refund_refused"):
        raise StepFailed("the payment provider refused the refund")  # -> stuck
    _apply(ctx, "refund_payment")


async def create_shipment(ctx: StepContext[Any]) -> object:
    if ctx.data["fail_shipment"]:
        raise StepFailed("no carrier serves this address")
    return _apply(ctx, "create_shipment")


async def cancel_shipment(ctx: StepContext[Any]) -> None:
    _apply(ctx, "cancel_shipment")


async def send_confirmation(ctx: StepContext[Any]) -> object:
    return _apply(ctx, "send_confirmation")


async def retract_confirmation(ctx: StepContext[Any]) -> None:
    _apply(ctx, "retract_confirmation")


order_saga = (
    Saga("order_fulfillment")
    .local("reserve_inventory", reserve_inventory, compensation=release_inventory)
    .local("process_payment", process_payment, compensation=refund_payment)
    .local("create_shipment", create_shipment, compensation=cancel_shipment)
    .local("send_confirmation", send_confirmation, compensation=retract_confirmation)
).build()

# -- templates: real rows written by the store ------------------------------------------------


@dataclass
class Template:
    kind: str  # completed | failed | stuck
    status: str
    inst_cols: list[str]
    inst_row: tuple[Any, ...]
    hist_cols: list[str]  # without the generated id
    hist_rows: list[tuple[Any, ...]]
    saga_id: str
    order_id: str
    t_ref: float
    make_instance: Callable[[str, str, float], tuple[Any, ...]] | None = None
    make_history: list[Callable[[str, str, float], tuple[Any, ...]]] | None = None

    def compile(self) -> None:
        tokens = (self.saga_id, self.order_id)
        self.make_instance = _compile_row(self.inst_row, tokens, self.t_ref)
        self.make_history = [_compile_row(r, tokens, self.t_ref) for r in self.hist_rows]

    def shape(self) -> dict[str, Any]:
        """What the rows look like (columns, value types, JSON keys): the cache signature."""
        return {
            "status": self.status,
            "instances": [_shape(n, v) for n, v in zip(self.inst_cols, self.inst_row, strict=True)],
            "history": [
                [_shape(n, v) for n, v in zip(self.hist_cols, r, strict=True)]
                for r in self.hist_rows
            ],
        }


def _shape(name: str, value: object) -> str:
    kind = type(value).__name__
    if isinstance(value, str) and value[:1] in "{[":
        with contextlib.suppress(ValueError):
            parsed = json.loads(value)
            if isinstance(parsed, dict):
                kind += ":json{" + ",".join(sorted(parsed)) + "}"
            else:
                kind += ":json[]"
    return f"{name}={kind}"


def _compile_row(
    row: Sequence[Any], tokens: tuple[str, str], t_ref: float
) -> Callable[[str, str, float], tuple[Any, ...]]:
    """A fast row factory: (saga id, order id, time) -> the template row with the template's
    saga id and order id replaced in every text value and every time moved by the same offset.
    Times are the float values within a day of the template run (nothing else is a float)."""
    names: dict[str, Any] = {"T0": tokens[0], "T1": tokens[1]}
    parts: list[str] = []
    for i, value in enumerate(row):
        ref = f"v{i}"
        names[ref] = value
        if isinstance(value, str) and (tokens[0] in value or tokens[1] in value):
            parts.append(f"{ref}.replace(T0, sid).replace(T1, oid)")
        elif isinstance(value, float) and abs(value - t_ref) < 86400:
            names[ref] = value - t_ref
            parts.append(f"t + {ref}")
        else:
            parts.append(ref)
    source = f"lambda sid, oid, t: ({', '.join(parts)},)"
    return eval(source, names)  # our own generated source over our own values


TEMPLATES = {"completed": (0, False), "failed": (4, False), "stuck": (9, True)}


async def _run_templates(url: str) -> tuple[float, dict[str, str]]:
    """Run the three template sagas on the store at ``url``: the time they ran at and the
    saga id of each kind."""
    store = open_store(url, owner=True)
    t_ref = time.time()
    ids: dict[str, str] = {}
    try:
        async with Worker(App(sagas=[order_saga]), store) as worker:
            for kind, (index, refused) in TEMPLATES.items():
                data: dict[str, Any] = c.order(index, "tplX")
                if refused:
                    data.update(fail_shipment=True, refund_refused=True)
                handle = await worker.client.start(order_saga, data)
                await handle.result(timeout=30)
                ids[kind] = handle.saga_id
    finally:
        await store.close()
    return t_ref, ids


def _templates_from(
    inst_cols: list[str],
    inst_rows: list[tuple[Any, ...]],
    hist_cols: list[str],
    hist_by_saga: dict[str, list[tuple[Any, ...]]],
    t_ref: float,
    ids: dict[str, str],
) -> dict[str, Template]:
    out: dict[str, Template] = {}
    col = {n: i for i, n in enumerate(inst_cols)}
    keep = [i for i, n in enumerate(hist_cols) if n != "id"]
    kinds = {saga_id: kind for kind, saga_id in ids.items()}
    for row in inst_rows:
        saga_id, status = row[col["saga_id"]], row[col["status"]]
        kind = kinds[saga_id]
        index = TEMPLATES[kind][0]
        out[kind] = Template(
            kind=kind,
            status=status,
            inst_cols=inst_cols,
            inst_row=tuple(row),
            hist_cols=[hist_cols[i] for i in keep],
            hist_rows=[tuple(r[i] for i in keep) for r in hist_by_saga[saga_id]],
            saga_id=saga_id,
            order_id=f"order-tplX-{index}",
            t_ref=t_ref,
        )
    expected = {"completed": "completed", "failed": "failed", "stuck": "stuck"}
    got = {k: t.status for k, t in out.items()}
    if got != expected:
        raise RuntimeError(f"template sagas ended as {got}, expected {expected}")
    for t in out.values():
        t.compile()
    return out


def signature(templates: dict[str, Template]) -> str:
    shape = {
        "loader": LOADER_VERSION,
        "finished": FINISHED,
        "stuck": STUCK,
        "templates": {k: templates[k].shape() for k in sorted(templates)},
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


# -- the synthetic population -----------------------------------------------------------------


@dataclass
class Plan:
    """Which instance is what, and when: deterministic from SEED."""

    total: int
    stuck_at: set[int]
    sample_at: set[int]  # finished instance numbers whose ids are kept aside
    t0: float
    step: float

    @staticmethod
    def make(now: float) -> Plan:
        total = FINISHED + STUCK
        rng = random.Random(SEED)
        return Plan(
            total=total,
            stuck_at=set(rng.sample(range(total), STUCK)),
            sample_at=set(rng.sample(range(FINISHED), SAMPLE)),
            t0=now - SPAN_DAYS * 86400,
            step=SPAN_DAYS * 86400 / total,
        )


def generate(
    templates: dict[str, Template], plan: Plan
) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[str]]]:
    """Batches of (instance rows, history rows, sample ids) in creation order."""
    rng = random.Random(SEED + 1)
    finished = 0
    for start in range(0, plan.total, BATCH):
        instances: list[tuple[Any, ...]] = []
        history: list[tuple[Any, ...]] = []
        sample: list[str] = []
        group: list[list[tuple[Any, ...]]] = []
        for k in range(start, min(plan.total, start + BATCH)):
            at = plan.t0 + k * plan.step + rng.random() * plan.step
            # Time-ordered as sagakit.ids makes them (UUID v7): the creation millisecond, the
            # version, 12 random bits, the variant, 62 random bits.
            rand = rng.getrandbits(74)
            value = (int(at * 1000) << 80) | (7 << 76) | ((rand >> 62) << 64) | (2 << 62)
            sid = f"{value | (rand & ((1 << 62) - 1)):032x}"
            if k in plan.stuck_at:
                t = templates["stuck"]
            else:
                t = templates["failed" if finished % 5 == 4 else "completed"]
                if finished in plan.sample_at:
                    sample.append(sid)
                finished += 1
            oid = f"order-m-{k}"
            assert t.make_instance is not None and t.make_history is not None
            instances.append(t.make_instance(sid, oid, at))
            group.append([make(sid, oid, at) for make in t.make_history])
            if len(group) == INTERLEAVE:
                history.extend(_interleave(group))
                group = []
        history.extend(_interleave(group))
        yield instances, history, sample


def _interleave(group: list[list[tuple[Any, ...]]]) -> Iterator[tuple[Any, ...]]:
    longest = max((len(g) for g in group), default=0)
    for i in range(longest):
        for rows in group:
            if i < len(rows):
                yield rows[i]


def expected_history(templates: dict[str, Template]) -> int:
    failed = FINISHED // 5  # finished instance f fails when f % 5 == 4
    return (
        (FINISHED - failed) * len(templates["completed"].hist_rows)
        + failed * len(templates["failed"].hist_rows)
        + STUCK * len(templates["stuck"].hist_rows)
    )


_STALE = "the loader or the rows the current code writes changed since it was built"


def built(meta: dict[str, str]) -> dict[str, Any]:
    """When and how fast the cached store was built, from its meta table."""
    seconds = meta.get("build_seconds")
    return {"built_at": meta.get("built_at"), "build_seconds": float(seconds) if seconds else None}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- SQLite -----------------------------------------------------------------------------------


def sqlite_templates() -> dict[str, Template]:
    path = c.sqlite_file(str(c.CACHE), "million-template")
    try:
        t_ref, ids = asyncio.run(_run_templates(f"sqlite:///{path}"))
        conn = sqlite3.connect(path)
        try:
            cur = conn.execute("SELECT * FROM sagakit_instances")
            inst_cols = [d[0] for d in cur.description]
            inst_rows = cur.fetchall()
            cur = conn.execute("SELECT * FROM sagakit_history ORDER BY id")
            hist_cols = [d[0] for d in cur.description]
            by_saga: dict[str, list[tuple[Any, ...]]] = {}
            sid = hist_cols.index("saga_id")
            for r in cur.fetchall():
                by_saga.setdefault(r[sid], []).append(r)
        finally:
            conn.close()
    finally:
        c.remove_sqlite(path)
    return _templates_from(inst_cols, inst_rows, hist_cols, by_saga, t_ref, ids)


def sqlite_check(path: Path, sig: str, history_rows: int) -> tuple[bool, str]:
    if not path.exists():
        return False, "missing"
    conn = sqlite3.connect(path)
    try:
        meta = dict(conn.execute(f"SELECT key, value FROM {META}").fetchall())
        if meta.get("signature") != sig:
            return False, _STALE
        n = conn.execute("SELECT count(*) FROM sagakit_instances").fetchone()[0]
        stuck = conn.execute(
            "SELECT count(*) FROM sagakit_instances WHERE status = 'stuck'"
        ).fetchone()[0]
        h = conn.execute("SELECT count(*) FROM sagakit_history").fetchone()[0]
    except sqlite3.Error as exc:
        return False, f"unreadable: {exc}"
    finally:
        conn.close()
    if (n, stuck, h) != (FINISHED + STUCK, STUCK, history_rows):
        return (
            False,
            f"row counts {n}/{stuck}/{h}, expected {FINISHED + STUCK}/{STUCK}/{history_rows}",
        )
    return True, "ok"


def sqlite_build(path: Path, templates: dict[str, Template], sig: str) -> dict[str, Any]:
    c.remove_sqlite(path)
    t_start = time.perf_counter()

    async def create() -> None:  # the schema, exactly as the store creates it
        store = open_store(f"sqlite:///{path}", create=True)
        await store.close()

    asyncio.run(create())
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -262144")
        conn.execute("PRAGMA temp_store = MEMORY")
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            " AND tbl_name IN ('sagakit_instances', 'sagakit_history')"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        t = templates["completed"]
        inst_sql = (
            f"INSERT INTO sagakit_instances ({', '.join(t.inst_cols)})"
            f" VALUES ({', '.join('?' * len(t.inst_cols))})"
        )
        hist_sql = (
            f"INSERT INTO sagakit_history ({', '.join(t.hist_cols)})"
            f" VALUES ({', '.join('?' * len(t.hist_cols))})"
        )
        conn.execute(f"CREATE TABLE {SAMPLE_TABLE} (saga_id TEXT PRIMARY KEY)")
        plan = Plan.make(time.time())
        loaded = 0
        for instances, history, sample in generate(templates, plan):
            conn.execute("BEGIN")
            conn.executemany(inst_sql, instances)
            conn.executemany(hist_sql, history)
            conn.executemany(f"INSERT INTO {SAMPLE_TABLE} VALUES (?)", [(s,) for s in sample])
            conn.execute("COMMIT")
            loaded += len(instances)
            if loaded % 200_000 == 0:
                log(f"  sqlite: {loaded:,} instances ({time.perf_counter() - t_start:.0f} s)")
        t_rows = time.perf_counter() - t_start
        for _, sql in indexes:
            conn.execute(sql)
        history_rows = conn.execute("SELECT count(*) FROM sagakit_history").fetchone()[0]
        seconds = time.perf_counter() - t_start
        conn.execute(f"CREATE TABLE {META} (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        meta = {
            "signature": sig,
            "finished": str(FINISHED),
            "stuck": str(STUCK),
            "history_rows": str(history_rows),
            "build_seconds": f"{seconds:.1f}",
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        conn.executemany(f"INSERT INTO {META} VALUES (?, ?)", list(meta.items()))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return {
        "build_seconds": round(time.perf_counter() - t_start, 1),
        "rows_seconds": round(t_rows, 1),
        "history_rows": history_rows,
    }


def sqlite_ensure(path: Path = SQLITE_FILE, force: bool = False) -> dict[str, Any]:
    """Check the cached SQLite store; (re)build it when needed. Returns what was done."""
    t0 = time.perf_counter()
    templates = sqlite_templates()
    sig = signature(templates)
    history_rows = expected_history(templates)
    ok, why = (False, "forced") if force else sqlite_check(path, sig, history_rows)
    info: dict[str, Any] = {
        "location": str(path.relative_to(c.HERE.parent)),
        "signature": sig,
        "finished": FINISHED,
        "stuck": STUCK,
        "history_rows": history_rows,
        "history_per_instance": {k: len(t.hist_rows) for k, t in templates.items()},
        "state_bytes": {k: _state_bytes(t) for k, t in templates.items()},
    }
    if ok:
        conn = sqlite3.connect(path)
        try:
            meta = dict(conn.execute(f"SELECT key, value FROM {META}").fetchall())
        finally:
            conn.close()
        info.update(reused=True, check_seconds=round(time.perf_counter() - t0, 1), **built(meta))
    else:
        log(f"sqlite: building {path.name} ({why}): {FINISHED:,} finished + {STUCK} stuck ...")
        info.update(reused=False, rebuilt_because=why, **sqlite_build(path, templates, sig))
        ok, why = sqlite_check(path, sig, history_rows)
        if not ok:
            raise RuntimeError(f"the SQLite bulk load is wrong: {why}")
        log(f"sqlite: built in {info['build_seconds']} s")
    info["size_mb"] = round(
        sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 2**20
    )
    return info


def _state_bytes(t: Template) -> int:
    return max((len(v) for v in t.inst_row if isinstance(v, (str, bytes))), default=0)


def sqlite_sample(path: Path = SQLITE_FILE) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute(f"SELECT saga_id FROM {SAMPLE_TABLE}")]
    finally:
        conn.close()


# -- PostgreSQL -------------------------------------------------------------------------------


def pg_url(server: str, database: str, schema: str) -> str:
    return f"{server}/{database}?schema={schema}"


async def _pg_connect(server: str, database: str, schema: str) -> Any:
    import asyncpg

    return await asyncpg.connect(f"{server}/{database}", server_settings={"search_path": schema})


async def pg_templates(server: str, database: str) -> dict[str, Template]:
    schema = f"bench_tpl_{uuid.uuid4().hex[:8]}"
    try:
        t_ref, ids = await _run_templates(pg_url(server, database, schema))
        conn = await _pg_connect(server, database, schema)
        try:
            stmt = await conn.prepare("SELECT * FROM sagakit_instances")
            inst_cols = [a.name for a in stmt.get_attributes()]
            inst_rows = [tuple(r) for r in await stmt.fetch()]
            stmt = await conn.prepare("SELECT * FROM sagakit_history ORDER BY id")
            hist_cols = [a.name for a in stmt.get_attributes()]
            by_saga: dict[str, list[tuple[Any, ...]]] = {}
            sid = hist_cols.index("saga_id")
            for r in await stmt.fetch():
                by_saga.setdefault(r[sid], []).append(tuple(r))
        finally:
            await conn.close()
    finally:
        c.psql(server, database, f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    return _templates_from(inst_cols, inst_rows, hist_cols, by_saga, t_ref, ids)


async def pg_check(
    server: str, database: str, schema: str, sig: str, history_rows: int
) -> tuple[bool, str]:
    conn = await _pg_connect(server, database, schema)
    try:
        if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.{META}"):
            return False, "missing"
        meta = dict(await conn.fetch(f"SELECT key, value FROM {META}"))
        if meta.get("signature") != sig:
            return False, _STALE
        n = await conn.fetchval("SELECT count(*) FROM sagakit_instances")
        stuck = await conn.fetchval("SELECT count(*) FROM sagakit_instances WHERE status = 'stuck'")
        h = await conn.fetchval("SELECT count(*) FROM sagakit_history")
    finally:
        await conn.close()
    if (n, stuck, h) != (FINISHED + STUCK, STUCK, history_rows):
        return (
            False,
            f"row counts {n}/{stuck}/{h}, expected {FINISHED + STUCK}/{STUCK}/{history_rows}",
        )
    return True, "ok"


async def pg_build(
    server: str, database: str, schema: str, templates: dict[str, Template], sig: str
) -> dict[str, Any]:
    t_start = time.perf_counter()
    c.psql(server, database, f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    store = open_store(pg_url(server, database, schema), owner=True)  # migrates itself
    await store.migrate()
    await store.close()
    conn = await _pg_connect(server, database, schema)
    try:
        await conn.execute("SET synchronous_commit = off")
        await conn.execute("SET maintenance_work_mem = '512MB'")
        indexes = await conn.fetch(
            "SELECT i.indexname, i.indexdef FROM pg_indexes AS i"
            " WHERE i.schemaname = $1 AND i.tablename IN ('sagakit_instances', 'sagakit_history')"
            " AND NOT EXISTS (SELECT 1 FROM pg_constraint AS k"
            "   WHERE k.conindid = (quote_ident(i.schemaname) || '.' ||"
            "   quote_ident(i.indexname))::regclass)",
            schema,
        )
        for name, _ in indexes:
            await conn.execute(f'DROP INDEX "{name}"')
        await conn.execute(f"CREATE TABLE {SAMPLE_TABLE} (saga_id text PRIMARY KEY)")
        t = templates["completed"]
        plan = Plan.make(time.time())
        loaded = 0
        for instances, history, sample in generate(templates, plan):
            await conn.copy_records_to_table(
                "sagakit_instances", records=instances, columns=t.inst_cols, schema_name=schema
            )
            await conn.copy_records_to_table(
                "sagakit_history", records=history, columns=t.hist_cols, schema_name=schema
            )
            await conn.copy_records_to_table(
                SAMPLE_TABLE, records=[(s,) for s in sample], schema_name=schema
            )
            loaded += len(instances)
            if loaded % 200_000 == 0:
                log(f"  postgres: {loaded:,} instances ({time.perf_counter() - t_start:.0f} s)")
        t_rows = time.perf_counter() - t_start
        for _, sql in indexes:
            await conn.execute(sql)
        await conn.execute("VACUUM ANALYZE sagakit_instances")
        await conn.execute("VACUUM ANALYZE sagakit_history")
        history_rows = await conn.fetchval("SELECT count(*) FROM sagakit_history")
        seconds = time.perf_counter() - t_start
        await conn.execute(f"CREATE TABLE {META} (key text PRIMARY KEY, value text NOT NULL)")
        meta = {
            "signature": sig,
            "finished": str(FINISHED),
            "stuck": str(STUCK),
            "history_rows": str(history_rows),
            "build_seconds": f"{seconds:.1f}",
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        await conn.executemany(f"INSERT INTO {META} VALUES ($1, $2)", list(meta.items()))
    finally:
        await conn.close()
    return {
        "build_seconds": round(time.perf_counter() - t_start, 1),
        "rows_seconds": round(t_rows, 1),
        "history_rows": history_rows,
    }


async def pg_ensure(
    server: str, database: str = "test", schema: str = PG_SCHEMA, force: bool = False
) -> dict[str, Any]:
    t0 = time.perf_counter()
    templates = await pg_templates(server, database)
    sig = signature(templates)
    history_rows = expected_history(templates)
    ok, why = (
        (False, "forced") if force else await pg_check(server, database, schema, sig, history_rows)
    )
    info: dict[str, Any] = {
        "location": f"schema {schema} of database {database}",
        "signature": sig,
        "finished": FINISHED,
        "stuck": STUCK,
        "history_rows": history_rows,
        "history_per_instance": {k: len(t.hist_rows) for k, t in templates.items()},
        "state_bytes": {k: _state_bytes(t) for k, t in templates.items()},
    }
    if ok:
        conn = await _pg_connect(server, database, schema)
        try:
            meta = dict(await conn.fetch(f"SELECT key, value FROM {META}"))
        finally:
            await conn.close()
        info.update(reused=True, check_seconds=round(time.perf_counter() - t0, 1), **built(meta))
    else:
        log(f"postgres: building {schema} ({why}): {FINISHED:,} finished + {STUCK} stuck ...")
        info.update(
            reused=False,
            rebuilt_because=why,
            **await pg_build(server, database, schema, templates, sig),
        )
        ok, why = await pg_check(server, database, schema, sig, history_rows)
        if not ok:
            raise RuntimeError(f"the PostgreSQL bulk load is wrong: {why}")
        log(f"postgres: built in {info['build_seconds']} s")
    size = c.psql(
        server,
        database,
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class AS c"
        f" JOIN pg_namespace AS n ON n.oid = c.relnamespace WHERE n.nspname = '{schema}'"
        " AND c.relkind = 'r'",
    )
    info["size_mb"] = round(int(size) / 2**20)
    return info


async def pg_sample(server: str, database: str = "test", schema: str = PG_SCHEMA) -> list[str]:
    conn = await _pg_connect(server, database, schema)
    try:
        return [r[0] for r in await conn.fetch(f"SELECT saga_id FROM {SAMPLE_TABLE}")]
    finally:
        await conn.close()


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--pg-database", default="test")
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache is good")
    args = parser.parse_args()
    if args.store == "sqlite":
        info = sqlite_ensure(force=args.force)
    else:
        info = asyncio.run(pg_ensure(args.pg_url, args.pg_database, force=args.force))
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
