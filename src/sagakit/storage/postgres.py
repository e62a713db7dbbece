"""The PostgreSQL store: many workers on many machines share one database (F2–F4).

Driver: asyncpg. Measured on this project's group-commit statement (one UPDATE ... FROM
unnest of 32 instances plus 64 history rows per transaction), asyncpg spent 0.4 ms of client CPU
per batch against psycopg 3's 1.3 ms, at equal or better latency; client CPU is what caps a
worker, so asyncpg it is (docs/explanation/architecture.md).

Every batch of transitions is one transaction of a handful of set-based statements, whatever
its size. Workers hold leases in ``sagakit_workers``; an instance's ``owner`` says which worker
advances it, and a claim bumps its revision, so a worker that comes back after its lease
expired cannot commit over the new owner (its revision check fails). Due timers and expired
leases are judged by the database's clock (Semantics 13).

Schema changes are numbered SQL files in ``sql/postgres``, applied in order under an advisory
lock by :meth:`PostgresStore.migrate` (``sagakit migrate``); a store opened by a worker applies
them itself. The statements are named queries in ``sql/postgres/queries.sql`` (``Q["name"]``).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import os
import re
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from sagakit.definition import Phase
from sagakit.encoding import JSON, dumps, loads
from sagakit.errors import StorageError
from sagakit.ports import (
    Batch,
    CommandState,
    DeadLetter,
    InstanceFilter,
    OutboxMessage,
    ParticipantTx,
    QueuedCommand,
    RetiredKey,
    Timer,
    TimerOpKind,
    Transition,
)
from sagakit.state import HistoryEntry, HistoryKind, SagaInstance, SagaStatus
from sagakit.storage.queries import fill, load_queries
from sagakit.storage.rows import (
    STATUS_TEXT,
    command_from_row,
    history_row,
    instance_from_row,
    transition_state,
)
from sagakit.transitions import TimerKind

T = TypeVar("T")

_LIVE = ("started", "pending", "compensating", "stuck")
#: The statements of this module, by name, from ``sql/postgres/queries.sql``.
Q = load_queries("postgres")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
NOTIFY_CHANNEL = "sagakit_work"  # named in the queries notify_command and notify_released
_Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


def split_url(url: str) -> tuple[str, str | None]:
    """The asyncpg DSN and the schema of a ``postgresql://…[?schema=name]`` URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise StorageError(f"not a PostgreSQL URL: {url!r}")
    query = parse_qsl(parts.query)
    schema = next((v for k, v in query if k == "schema"), None)
    if schema is not None and not _IDENT.match(schema):
        raise StorageError(f"bad schema name {schema!r} (lower-case letters, digits, _)")
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment)), schema


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, SQL) of every migration shipped, in order."""
    folder = resources.files("sagakit.storage").joinpath("sql/postgres")
    found = []
    for item in folder.iterdir():
        match = re.match(r"^(\d{4})_(\w+)\.sql$", item.name)
        if match:
            found.append((int(match.group(1)), match.group(2), item.read_text()))
    return sorted(found)


class PostgresStore:
    """Every store port on PostgreSQL. Connects lazily; ``migrate=True`` applies migrations."""

    def __init__(
        self,
        url: str,
        *,
        owner: bool = False,
        create: bool = True,
        migrate: bool | None = None,
        pool_size: int = 4,
    ) -> None:
        self.url = url
        self._dsn, self.schema = split_url(url)
        self._migrate = owner if migrate is None else migrate
        self._create = create
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._opening: asyncio.Lock | None = None
        self._listener: asyncpg.Connection | None = None
        self._commit_conn: asyncpg.pool.PoolConnectionProxy | None = None
        self.worker_id: str | None = None
        self._lease = 10.0

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresStore:
        return cls(url, **options)

    # -- connections ----------------------------------------------------------------------

    async def _connect(self, **kwargs: Any) -> asyncpg.Connection:
        settings = {"search_path": self.schema} if self.schema else {}
        try:
            return await asyncpg.connect(self._dsn, server_settings=settings, **kwargs)
        except (OSError, asyncpg.PostgresError) as exc:
            raise StorageError(f"cannot connect to PostgreSQL ({self._dsn}): {exc}") from exc

    async def _ready(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                if self._migrate:
                    await self.migrate()
                settings = {"search_path": self.schema} if self.schema else {}
                try:
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=1,
                        max_size=self._pool_size,
                        server_settings=settings,
                    )
                except (OSError, asyncpg.PostgresError) as exc:
                    raise StorageError(f"cannot connect to PostgreSQL: {exc}") from exc
                if not self._migrate and not await self._has_schema(self._pool):
                    await self._pool.close()
                    self._pool = None
                    raise StorageError(
                        "the database has no sagakit schema: run `sagakit migrate --db URL`"
                    )
        assert self._pool is not None
        return self._pool

    async def _has_schema(self, pool: asyncpg.Pool) -> bool:
        found = await pool.fetchval(Q["has_schema"])
        return bool(found)

    async def migrate(self) -> list[int]:
        """Apply every migration not applied yet, in order, under an advisory lock."""
        conn = await self._connect()
        applied: list[int] = []
        try:
            async with conn.transaction():
                await conn.execute(Q["lock_migrations"])
                if self.schema:
                    # An identifier is no bound parameter: the name (checked by split_url
                    # against _IDENT) is put into the statement.
                    await conn.execute(fill(Q["create_schema"], schema=self.schema))
                await conn.execute(Q["create_migrations_table"])
                done = {r[0] for r in await conn.fetch(Q["applied_migrations"])}
                for version, name, sql in migrations():
                    if version in done:
                        continue
                    await conn.execute(sql)
                    await conn.execute(Q["record_migration"], version, name)
                    applied.append(version)
        except asyncpg.PostgresError as exc:
            raise StorageError(f"migration failed: {exc}") from exc
        finally:
            await conn.close()
        return applied

    async def close(self) -> None:
        if self._pool is not None:
            await self._drop_commit_connection(self._pool)
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        pool = await self._ready()
        try:
            return await pool.fetch(sql, *args)
        except asyncpg.PostgresError as exc:
            raise StorageError(f"PostgreSQL error: {exc}") from exc

    async def listen(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever another process queues work (LISTEN/NOTIFY)."""
        await self._ready()
        if self._listener is not None:  # a worker started again on this store
            await self._listener.close()
        self._listener = await self._connect()
        await self._listener.add_listener(NOTIFY_CHANNEL, lambda *_: callback())

    # -- TransitionStore ------------------------------------------------------------------

    async def commit(self, batch: Batch) -> builtins.list[bool]:
        pool = await self._ready()
        try:
            ids = [t.saga_id for t in batch.transitions]
            if len(set(ids)) == len(ids):
                # The usual batch (one transition per instance): one statement, one round trip,
                # on a connection kept for commits (no pool hand-off on the hot path).
                conn = await self._commit_connection(pool)
                try:
                    return await self._commit_at_once(conn, batch)
                except (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, OSError) as exc:
                    if isinstance(exc, asyncpg.InterfaceError) and not conn.is_closed():
                        # The driver refused the call itself (say, a wrong argument count):
                        # a bug, not the network; the connection is fine and is kept.
                        raise StorageError(f"PostgreSQL driver refused the commit: {exc}") from exc
                    await self._drop_commit_connection(pool)
                    raise StorageError(f"PostgreSQL connection lost during commit: {exc}") from exc
            async with pool.acquire() as conn, conn.transaction():
                return await self._commit(conn, batch)
        except asyncpg.PostgresError as exc:
            raise StorageError(f"PostgreSQL error: {exc}") from exc

    async def _commit_connection(self, pool: asyncpg.Pool) -> asyncpg.pool.PoolConnectionProxy:
        if self._commit_conn is None:
            self._commit_conn = await pool.acquire()
        return self._commit_conn

    async def _drop_commit_connection(self, pool: asyncpg.Pool) -> None:
        conn, self._commit_conn = self._commit_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await pool.release(conn)

    async def _commit_at_once(self, conn: _Conn, batch: Batch) -> builtins.list[bool]:
        one = _one_step(batch)
        if one is not None:
            inst = cast(SagaInstance, one.instance)
            rows = await conn.fetch(
                Q["commit_one_update"],
                inst.saga_id,
                one.expected_revision,
                STATUS_TEXT[inst.status],
                inst.updated_at,
                inst.revision,
                transition_state(one),
                *_columns([history_row(inst.saga_id, e)[1:] for e in one.history], 6),
                bool(one.timer_ops),  # only "cancel all" can be there (_one_step)
            )
            return [bool(rows)]
        transitions = batch.transitions
        inserts = [t for t in transitions if t.instance and t.expected_revision is None]
        updates = [t for t in transitions if t.instance and t.expected_revision is not None]
        # Side records are filtered in SQL to the transitions that wrote ("ok").
        clear, names, fired, upserts = _timer_changes(transitions)
        parts: list[tuple[str, Sequence[Sequence[object]]]] = [
            ("ins", _columns([_insert_row(t) for t in inserts], 12)),
            ("upd", _columns([_update_row(t) for t in updates], 6)),
            (
                "hist",
                _columns([history_row(t.saga_id, e) for t in transitions for e in t.history], 7),
            ),
            (
                "obx",
                _columns(
                    [
                        (
                            m.id,
                            m.source,
                            m.destination,
                            m.saga_id,
                            m.body,
                            self.worker_id,
                            t.saga_id,
                        )
                        for t in transitions
                        for m in t.outbox
                    ],
                    7,
                ),
            ),
            ("tclr", [clear, [u[0] for u in upserts], [u[1] for u in upserts]] if clear else []),
            ("tdel", _columns(names, 2)),
            ("tfir", _columns(fired, 5)),
            ("tset", _columns(upserts, 8)),
            ("done", [list(batch.outbox_done)] if batch.outbox_done else []),
            ("cons", _columns([(t.saga_id, i) for t in transitions for i in t.consumed], 2)),
            (
                "cmd",
                _columns(
                    [(c.id, c.state.value, c.error, None) for c in batch.commands]
                    + [
                        (c.id, c.state.value, c.error, t.saga_id)
                        for t in transitions
                        for c in t.commands
                    ],
                    4,
                ),
            ),
            (
                "dl",
                _columns([(d.source, d.reason, d.body) for d in batch.dead_letters], 3),
            ),
        ]
        present = [(name, args) for name, args in parts if args and args[0]]
        if not present:  # transitions without a state change or a record: nothing to write
            return [True] * len(transitions)
        side_only = [t.saga_id for t in transitions if t.instance is None]
        if side_only and any(name not in _WITHOUT_OK for name, _ in present):
            present.append(("side", [side_only]))  # only a part that reads "ok" binds it
        names_present = tuple(name for name, _ in present)
        rows = await conn.fetch(
            _commit_statement(names_present), *(a for _, args in present for a in args)
        )
        written = {r[0] for r in rows}
        return [t.instance is None or t.saga_id in written for t in transitions]

    async def _commit(self, conn: _Conn, batch: Batch) -> builtins.list[bool]:
        transitions = batch.transitions
        results = [t.instance is None for t in transitions]
        # One statement per round; a saga that appears twice in a batch goes in two rounds,
        # so its second transition is checked against what its first one wrote.
        for round_ in _rounds(transitions):
            inserts = [i for i in round_ if transitions[i].expected_revision is None]
            updates = [i for i in round_ if transitions[i].expected_revision is not None]
            written: set[str] = set()
            if inserts:
                rows = await conn.fetch(
                    Q["insert_instances"],
                    *_columns(
                        [_insert_row(transitions[i]) for i in inserts],
                        12,
                    ),
                )
                written.update(r[0] for r in rows)
            if updates:
                rows = await conn.fetch(
                    Q["update_instances"],
                    *_columns([_update_row(transitions[i]) for i in updates], 6),
                )
                written.update(r[0] for r in rows)
            for i in round_:
                results[i] = transitions[i].saga_id in written
        ok = [t for t, good in zip(transitions, results, strict=True) if good]
        await self._side_records(conn, batch, ok)
        return results

    async def _side_records(self, conn: _Conn, batch: Batch, ok: builtins.list[Transition]) -> None:
        history = [history_row(t.saga_id, e) for t in ok for e in t.history]
        if history:
            await conn.execute(Q["insert_history"], *_columns(history, 7))
        outbox = [
            (m.id, m.source, m.destination, m.saga_id, m.body, self.worker_id)
            for t in ok
            for m in t.outbox
        ]
        if outbox:
            await conn.execute(Q["insert_outbox"], *_columns(outbox, 6))
        await self._timers(conn, ok)
        consumed = [*batch.outbox_done, *(i for t in ok for i in t.consumed)]
        if consumed:
            await conn.execute(Q["delete_outbox"], consumed)
        commands = [*batch.commands, *(c for t in ok for c in t.commands)]
        if commands:
            await conn.execute(
                Q["apply_commands"],
                [c.id for c in commands],
                [c.state.value for c in commands],
                [c.error for c in commands],
            )
        if batch.dead_letters:
            await conn.execute(
                Q["insert_dead_letters"],
                [d.source for d in batch.dead_letters],
                [d.reason for d in batch.dead_letters],
                [d.body for d in batch.dead_letters],
            )

    @staticmethod
    async def _timers(conn: _Conn, ok: builtins.list[Transition]) -> None:
        clear, names, fired, upserts = _timer_changes(ok)
        if clear:
            await conn.execute(
                Q["clear_timers"],
                clear,
                [u[0] for u in upserts],
                [u[1] for u in upserts],
            )
        if names:
            await conn.execute(Q["delete_timers"], *_columns(names, 2))
        if fired:
            await conn.execute(Q["delete_fired_timers"], *_columns(fired, 4))
        if upserts:
            await conn.execute(Q["set_timers"], *_columns(upserts, 7))

    # -- Leases ---------------------------------------------------------------------------

    async def attach(self, worker_id: str, lease: float, fingerprints: Sequence[str] = ()) -> None:
        self.worker_id = worker_id
        self._lease = lease
        await self._fetch(
            Q["attach_worker"],
            worker_id,
            socket.gethostname(),
            os.getpid(),
            lease,
            dumps(list[JSON](sorted(fingerprints))),
        )

    async def live_fingerprints(self) -> set[str]:
        rows = await self._fetch(Q["live_fingerprints"])
        return {str(p) for r in rows for p in cast(list[JSON], loads(r[0]))}

    async def heartbeat(self) -> bool:
        rows = await self._fetch(Q["heartbeat"], self.worker_id, self._lease)
        return bool(rows and rows[0][0])

    async def claim(self, limit: int, fingerprints: Sequence[str]) -> builtins.list[SagaInstance]:
        rows = await self._fetch(
            Q["claim_instances"],
            self.worker_id,
            list(_LIVE),
            list(fingerprints),
            limit,
        )
        return [instance_from_row(r) for r in rows]

    async def detach(self) -> None:
        if self.worker_id is None or self._pool is None:
            return
        pool = self._pool
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(Q["release_instances"], self.worker_id, list(_LIVE))
            await conn.execute(Q["delete_worker"], self.worker_id)
            await conn.execute(Q["notify_released"])
        self.worker_id = None

    # -- Retention ------------------------------------------------------------------------

    async def finished_before(self, age: float, limit: int) -> builtins.list[str]:
        rows = await self._fetch(Q["finished_before"], age, limit)
        return [r[0] for r in rows]

    async def purge(self, saga_ids: Sequence[str]) -> int:
        pool = await self._ready()
        async with pool.acquire() as conn, conn.transaction():
            gone = await conn.fetch(Q["purge_instances"], list(saga_ids))
            ids = [r[0] for r in gone]
            keys = [
                (r[1], r[2], r[0], str(cast(dict[str, JSON], loads(r[3]))["input_digest"]))
                for r in gone
                if r[2] is not None
            ]
            if keys:
                await conn.execute(Q["retire_keys"], *_columns(keys, 4))
            await conn.execute(Q["purge_history"], ids)
            await conn.execute(Q["purge_timers"], ids)
        return len(ids)

    async def purge_keys(self, age: float) -> int:
        pool = await self._ready()
        counts = []
        async with pool.acquire() as conn, conn.transaction():
            statements: tuple[tuple[str, tuple[object, ...]], ...] = (
                (Q["purge_retired_keys"], (age,)),
                # An inbox key outlives its age while its saga is still live (running or
                # stuck): an operator's retry must still find it.
                (Q["purge_inbox"], (age, list(_LIVE))),
                (Q["purge_commands"], (age,)),
                (Q["purge_workers"], (age,)),
            )
            for sql, args in statements:
                status = await conn.execute(sql, *args)
                counts.append(int(status.split()[-1]))
        return sum(counts[:3])

    async def retired_key(self, saga_type: str, key: str) -> RetiredKey | None:
        rows = await self._fetch(Q["retired_key"], saga_type, key)
        return RetiredKey(rows[0][0], rows[0][1]) if rows else None

    # -- InstanceQueries ------------------------------------------------------------------

    async def get(self, saga_id: str) -> SagaInstance | None:
        rows = await self._fetch(Q["get_instance"], saga_id)
        return instance_from_row(rows[0]) if rows else None

    async def find_by_key(self, saga_type: str, key: str) -> SagaInstance | None:
        rows = await self._fetch(Q["find_by_key"], saga_type, key)
        return instance_from_row(rows[0]) if rows else None

    async def list(self, filter: InstanceFilter) -> builtins.list[SagaInstance]:
        # The WHERE clause is built here: it names only the filters given, so each query
        # keeps the plan (and index) of its own filters, which one fixed statement of
        # "($n IS NULL OR column = $n)" terms would not. The rest of the statement is in the
        # file, with the limit as $1 and the filters' values from $2 on.
        where: list[str] = []
        args: list[object] = [filter.limit]

        def add(clause: str, value: object) -> None:
            args.append(value)
            where.append(clause.format(f"${len(args)}"))

        if filter.status is not None:
            add("status = {}", filter.status.value)
        if filter.saga_type is not None:
            add("saga_type = {}", filter.saga_type)
        if filter.correlation_id is not None:
            add("correlation_id = {}", filter.correlation_id)
        if filter.created_after is not None:
            add("created_at >= {}", filter.created_after)
        if filter.created_before is not None:
            add("created_at < {}", filter.created_before)
        sql = fill(Q["list_instances"], where=(" WHERE " + " AND ".join(where)) if where else "")
        return [instance_from_row(r) for r in await self._fetch(sql, *args)]

    async def history(self, saga_id: str) -> builtins.list[HistoryEntry]:
        rows = await self._fetch(Q["history"], saga_id)
        return [
            HistoryEntry(
                r[0], HistoryKind(r[1]), r[2], r[3], r[4], cast(dict[str, JSON], loads(r[5]))
            )
            for r in rows
        ]

    async def count_by_status(self) -> dict[SagaStatus, int]:
        rows = await self._fetch(Q["count_by_status"])
        return {SagaStatus(r[0]): int(r[1]) for r in rows}

    # -- TimerQueue -----------------------------------------------------------------------

    async def now(self) -> float:
        rows = await self._fetch(Q["now"])
        return float(rows[0][0])

    async def due(self, limit: int) -> builtins.list[Timer]:
        rows = await self._fetch(Q["due_timers"], self.worker_id, limit)
        return [Timer(r[0], r[1], TimerKind(r[2]), r[6], r[3], Phase(r[4]), r[5]) for r in rows]

    async def next_due(self) -> float | None:
        rows = await self._fetch(Q["next_due"], self.worker_id)
        return cast("float | None", rows[0][0]) if rows else None

    # -- Outbox ---------------------------------------------------------------------------

    async def pending(self, source: str, limit: int) -> builtins.list[OutboxMessage]:
        # An orchestrator message is sent by its instance's owner; a participant's reply by
        # the worker that wrote it, or by anyone once that worker's lease is gone.
        rows = await self._fetch(
            Q["pending_outbox"],
            source,
            self.worker_id,
            source == "sagakit.orchestrator",
            limit,
        )
        return [OutboxMessage(r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows]

    # -- CommandQueue ---------------------------------------------------------------------

    async def enqueue(self, saga_id: str, kind: str, body: dict[str, JSON]) -> int:
        pool = await self._ready()
        async with pool.acquire() as conn, conn.transaction():
            command_id = await conn.fetchval(
                Q["enqueue_command"],
                saga_id,
                kind,
                dumps(body),
                CommandState.PENDING.value,
            )
            await conn.execute(Q["notify_command"])
        return int(command_id)

    async def pending_commands(self, limit: int, after: int = 0) -> builtins.list[QueuedCommand]:
        rows = await self._fetch(Q["pending_commands"], self.worker_id, limit, after)
        return [command_from_row(r) for r in rows]

    async def command(self, command_id: int) -> QueuedCommand | None:
        rows = await self._fetch(Q["get_command"], command_id)
        return command_from_row(rows[0]) if rows else None

    # -- DeadLetters ----------------------------------------------------------------------

    async def dead_letters(self, limit: int) -> builtins.list[DeadLetter]:
        rows = await self._fetch(Q["dead_letters"], limit)
        return [DeadLetter(r[2], r[3], bytes(r[4]), r[1], r[0]) for r in rows]

    # -- ParticipantStore -----------------------------------------------------------------

    async def transaction(self, fn: Callable[[ParticipantTx], Awaitable[T]]) -> T:
        pool = await self._ready()
        try:
            async with pool.acquire() as conn, conn.transaction():
                return await fn(PostgresTx(conn, self.worker_id))
        except asyncpg.PostgresError as exc:
            raise StorageError(f"PostgreSQL error: {exc}") from exc


class PostgresTx:
    """A participant's transaction on PostgreSQL (the ParticipantTx port)."""

    dialect = "postgresql"

    def __init__(self, conn: _Conn, owner: str | None) -> None:
        self._conn = conn
        self._owner = owner

    async def execute(
        self, sql: str, params: Sequence[object] = ()
    ) -> builtins.list[tuple[object, ...]]:
        try:
            rows = await self._conn.fetch(qmark_to_dollar(sql), *params)
        except asyncpg.PostgresError as exc:
            raise StorageError(f"PostgreSQL error: {exc}") from exc
        return [tuple(r) for r in rows]

    async def inbox_get(self, participant: str, key: str) -> bytes | None:
        value = await self._conn.fetchval(Q["inbox_get"], participant, key)
        return bytes(value) if value is not None else None

    async def inbox_put(self, participant: str, key: str, reply: bytes) -> None:
        await self._execute(Q["inbox_put"], participant, key, reply)

    async def outbox_put(self, message: OutboxMessage) -> None:
        await self._execute(
            Q["insert_outbox_message"],
            message.id,
            message.source,
            message.destination,
            message.saga_id,
            message.body,
            self._owner,
        )

    async def outbox_done(self, message_ids: Sequence[str]) -> None:
        await self._execute(Q["delete_outbox"], list(message_ids))

    async def dead_letter(self, letter: DeadLetter) -> None:
        await self._execute(
            Q["insert_dead_letter"],
            letter.at,
            letter.source,
            letter.reason,
            letter.body,
        )

    async def _execute(self, sql: str, *args: object) -> None:
        try:
            await self._conn.execute(sql, *args)
        except asyncpg.PostgresError as exc:
            raise StorageError(f"PostgreSQL error: {exc}") from exc


def qmark_to_dollar(sql: str) -> str:
    """``?`` placeholders to ``$1, $2, …``, leaving quoted text alone; SQL that already uses
    ``$n`` is returned unchanged."""
    if "?" not in sql or re.search(r"\$\d", sql):
        return sql
    out: list[str] = []
    count = 0
    quote: str | None = None
    for char in sql:
        if quote:
            if char == quote:
                quote = None
        elif char in ("'", '"'):
            quote = char
        elif char == "?":
            count += 1
            out.append(f"${count}")
            continue
        out.append(char)
    return "".join(out)


_PARAM = re.compile(r"\$(\d+)")
#: The parts that do not read "ok" (the instances whose write passed its check).
_WITHOUT_OK = frozenset({"ins", "upd", "done", "dl"})
#: The parts of a batch's one statement, by name (see _commit_statement).
_COMMIT_PARTS = {
    "ins": Q["commit_ins"],
    "upd": Q["commit_upd"],
    "hist": Q["commit_hist"],
    "obx": Q["commit_obx"],
    "tclr": Q["commit_tclr"],
    "tdel": Q["commit_tdel"],
    "tfir": Q["commit_tfir"],
    "tset": Q["commit_tset"],
    "done": Q["commit_done"],
    "cons": Q["commit_cons"],
    "cmd": Q["commit_cmd"],
    "dl": Q["commit_dl"],
}


@functools.cache
def _commit_statement(parts: tuple[str, ...]) -> str:
    """One statement of the ``commit_<part>`` CTEs a batch has rows for, in the order given,
    their parameters numbered on; ``side`` is the ids of transitions with only side records.

    A batch at rest has two or three parts (an update and its history, say): leaving out the
    empty ones halves the commit's latency against one statement of every part, whose empty
    CTEs PostgreSQL would still plan and run. The shapes are few, and asyncpg keeps each one
    prepared."""
    ctes: list[str] = []
    offset = 0
    ok: list[str] = [f"SELECT saga_id FROM {name}" for name in ("ins", "upd") if name in parts]
    written = list(ok)
    for name in parts:
        if name == "side":
            offset += 1
            ok.append(f"SELECT unnest(${offset}::text[]) AS saga_id")
            continue
        sql = _COMMIT_PARTS[name]
        ctes.append(_renumber(sql, offset))
        offset += max(int(n) for n in _PARAM.findall(sql))
    if any(name not in _WITHOUT_OK for name in parts if name != "side"):
        # Every branch names its column saga_id: an unnamed one would let "SELECT saga_id
        # FROM ok" bind to the outer query's saga_id instead.
        branches = " UNION ALL ".join(ok) or "SELECT NULL::text AS saga_id WHERE false"
        ctes.insert(len(written), f"ok AS ({branches})")
    result = " UNION ALL ".join(written) or "SELECT NULL::text WHERE false"
    return "WITH " + ",\n".join(ctes) + "\n" + result


def _renumber(sql: str, offset: int) -> str:
    """``sql`` with every ``$n`` made ``$(n + offset)``."""
    return _PARAM.sub(lambda m: f"${int(m.group(1)) + offset}", sql)


_TimerChanges = tuple[
    builtins.list[str],
    builtins.list[tuple[str, str]],
    builtins.list[tuple[str, str, float, int, str]],
    builtins.list[tuple[object, ...]],
]


def _timer_changes(transitions: Sequence[Transition]) -> _TimerChanges:
    """Each transition's ordered timer operations, collapsed per instance into: instances to
    clear, timers to delete by name, fired timers to delete exactly, and timers to upsert —
    with no timer both deleted and upserted, so they can run as one statement."""
    clear: list[str] = []
    names: list[tuple[str, str]] = []
    fired: list[tuple[str, str, float, int, str]] = []
    upserts: list[tuple[object, ...]] = []
    for t in transitions:
        if not t.timer_ops:
            continue
        cleared = False
        deleted: set[str] = set()
        exact: list[Timer] = []
        latest: dict[str, Timer] = {}
        for op in t.timer_ops:
            if op.kind is TimerOpKind.SET and op.timer is not None:
                latest[op.timer.name] = op.timer
                deleted.discard(op.timer.name)
            elif op.kind is TimerOpKind.CANCEL and op.names is None:
                cleared, deleted, exact, latest = True, set(), [], {}
            elif op.kind is TimerOpKind.CANCEL and op.names is not None:
                for name in op.names:
                    latest.pop(name, None)
                    deleted.add(name)
            elif op.kind is TimerOpKind.FIRED and op.timer is not None:
                exact.append(op.timer)
        if cleared:
            clear.append(t.saga_id)
        names.extend((t.saga_id, n) for n in deleted)
        # A timer set again replaces the row anyway: never delete what is upserted.
        fired.extend(
            (x.saga_id, x.name, x.due_at, x.attempt, t.saga_id)
            for x in exact
            if x.name not in latest
        )
        upserts.extend(
            (x.saga_id, x.name, x.kind.value, x.step, x.phase.value, x.attempt, x.due_at, t.saga_id)
            for x in latest.values()
        )
    return clear, names, fired, upserts


def _rounds(transitions: Sequence[Transition]) -> builtins.list[builtins.list[int]]:
    """Indexes of the transitions that write an instance, grouped so that no round names a
    saga twice; a saga's k-th transition is in round k."""
    rounds: list[list[int]] = []
    seen: dict[str, int] = {}
    for i, t in enumerate(transitions):
        if t.instance is None:
            continue
        k = seen.get(t.saga_id, 0)
        seen[t.saga_id] = k + 1
        if k == len(rounds):
            rounds.append([])
        rounds[k].append(i)
    return rounds


def _one_step(batch: Batch) -> Transition | None:
    """The batch's one transition when it is one step of one saga: an update, its history
    and at most the cancelling of all its timers (commit_one_update)."""
    if len(batch.transitions) != 1 or batch.outbox_done or batch.commands or batch.dead_letters:
        return None
    t = batch.transitions[0]
    if t.instance is None or t.expected_revision is None or t.outbox or t.consumed or t.commands:
        return None
    for op in t.timer_ops:
        if op.kind is not TimerOpKind.CANCEL or op.names is not None:
            return None
    return t


def _columns(rows: Sequence[Sequence[object]], width: int) -> builtins.list[builtins.list[object]]:
    return [[row[i] for row in rows] for i in range(width)]


def _insert_row(t: Transition) -> tuple[object, ...]:
    inst = cast(SagaInstance, t.instance)
    return (
        inst.saga_id,
        inst.saga_type,
        inst.version,
        inst.fingerprint,
        STATUS_TEXT[inst.status],
        inst.correlation_id,
        inst.idempotency_key,
        inst.created_at,
        inst.updated_at,
        inst.revision,
        transition_state(t),
        inst.owner,
    )


def _update_row(t: Transition) -> tuple[object, ...]:
    inst = cast(SagaInstance, t.instance)
    return (
        inst.saga_id,
        t.expected_revision,
        STATUS_TEXT[inst.status],
        inst.updated_at,
        inst.revision,
        transition_state(t),
    )


def new_schema_url(url: str, prefix: str = "t") -> str:
    """``url`` with a fresh ``schema=`` (tests isolate themselves this way)."""
    dsn, _ = split_url(url)
    glue = "&" if "?" in dsn else "?"
    return f"{dsn}{glue}schema={prefix}_{uuid.uuid4().hex[:12]}"
