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

The URL, the schema and its migrations are in :mod:`sagakit.storage.postgres_schema`; the
batch commit in :mod:`sagakit.storage.postgres_commit`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import asyncpg

from sagakit.catalog import DEAD_WORKER_RETENTION, DefinitionRecord
from sagakit.definition import Phase
from sagakit.encoding import JSON, dumps, loads
from sagakit.errors import StorageError, StoreRefused
from sagakit.ports import (
    Batch,
    Claimed,
    CommandState,
    DeadLetter,
    DefinitionRef,
    InstanceFilter,
    OutboxMessage,
    ParticipantTx,
    QueuedCommand,
    RetiredKey,
    Timer,
    WorkerRecord,
)
from sagakit.state import HistoryEntry, HistoryKind, SagaInstance, SagaStatus
from sagakit.storage import postgres_workers as roster
from sagakit.storage.postgres_commit import (
    columns,
    commit_at_once,
    commit_in_rounds,
    starts_queued,
)
from sagakit.storage.postgres_schema import (
    Conn,
    Q,
    apply_migrations,
    migrations,
    new_schema_url,
    parse_url,
    split_url,
)
from sagakit.storage.queries import fill
from sagakit.storage.rows import (
    command_from_row,
    definitions_text,
    fingerprints_of,
    instance_from_row,
    published,
)
from sagakit.transitions import TimerKind

T = TypeVar("T")

_LIVE = ("started", "pending", "compensating", "stuck")
NOTIFY_CHANNEL = "sagakit_work"  # named in the queries notify_command and notify_released


class PostgresStore:
    """Every store port on PostgreSQL. Connects lazily.

    The schema is created, or its missing migrations applied, only when told to: ``create=True``
    (or ``migrate=True``), or by an owner (a worker). Anyone else on a database without the
    schema gets an error that says to run ``sagakit migrate``.
    """

    def __init__(
        self,
        url: str,
        *,
        owner: bool = False,
        create: bool | None = None,
        migrate: bool | None = None,
        pool_size: int = 4,
    ) -> None:
        self.url = url
        parsed = parse_url(url)
        self._dsn, self.schema, self._timeout = parsed.dsn, parsed.schema, parsed.connect_timeout
        if migrate is None:
            migrate = owner if create is None else create
        self._migrate = migrate
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
        if self._timeout is not None:
            kwargs.setdefault("timeout", self._timeout)
        try:
            return await asyncpg.connect(self._dsn, server_settings=settings, **kwargs)
        except (OSError, asyncpg.PostgresError) as exc:
            raise StorageError(f"cannot connect to PostgreSQL ({self._dsn}): {exc}") from exc
        except (asyncpg.InterfaceError, ValueError) as exc:  # what asyncpg refuses in the URL
            raise StorageError(f"bad PostgreSQL URL: {exc}") from exc

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
                        timeout=60.0 if self._timeout is None else self._timeout,
                    )
                except (OSError, asyncpg.PostgresError) as exc:
                    raise StorageError(f"cannot connect to PostgreSQL: {exc}") from exc
                except (asyncpg.InterfaceError, ValueError) as exc:
                    raise StorageError(f"bad PostgreSQL URL: {exc}") from exc
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
        try:
            return await apply_migrations(conn, self.schema)
        except asyncpg.PostgresError as exc:
            raise StorageError(f"migration failed: {exc}") from exc
        finally:
            await conn.close()

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

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        """A pooled connection in a transaction; a database error is a StorageError."""
        pool = await self._ready()
        try:
            async with pool.acquire() as conn, conn.transaction():
                yield conn
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
            if len(set(ids)) == len(ids) and not any(map(starts_queued, batch.transitions)):
                # The usual batch (one transition per instance): one statement, one round trip,
                # on a connection kept for commits (no pool hand-off on the hot path).
                conn = await self._commit_connection(pool)
                try:
                    return await commit_at_once(conn, batch, self.worker_id)
                except (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, OSError) as exc:
                    if isinstance(exc, ValueError):  # the driver's own data error: a value
                        raise StoreRefused(f"PostgreSQL driver refused a value: {exc}") from exc
                    if isinstance(exc, asyncpg.InterfaceError) and not conn.is_closed():
                        # The driver refused the call itself (say, a wrong argument count):
                        # a bug, not the network; the connection is fine and is kept.
                        raise StorageError(f"PostgreSQL driver refused the commit: {exc}") from exc
                    await self._drop_commit_connection(pool)
                    raise StorageError(f"PostgreSQL connection lost during commit: {exc}") from exc
            async with pool.acquire() as conn, conn.transaction():
                return await commit_in_rounds(conn, batch, self.worker_id)
        except asyncpg.DataError as exc:
            # A value the server cannot hold (a NUL in text or jsonb, a number out of range):
            # that batch's fault, not the store's (the committer isolates the culprit).
            raise StoreRefused(f"PostgreSQL refused a value: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise StorageError(f"PostgreSQL error: {exc}") from exc
        except (asyncpg.InterfaceError, ValueError, TypeError) as exc:
            # The driver's own data error (a ValueError), or the JSON encoder's (a TypeError):
            # a value of this batch, not the store.
            if isinstance(exc, (ValueError, TypeError)):
                raise StoreRefused(f"PostgreSQL refused a value: {exc}") from exc
            raise StorageError(f"PostgreSQL driver refused the commit: {exc}") from exc

    async def _commit_connection(self, pool: asyncpg.Pool) -> asyncpg.pool.PoolConnectionProxy:
        if self._commit_conn is None:
            self._commit_conn = await pool.acquire()
        return self._commit_conn

    async def _drop_commit_connection(self, pool: asyncpg.Pool) -> None:
        conn, self._commit_conn = self._commit_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await pool.release(conn)

    # -- Leases ---------------------------------------------------------------------------

    async def attach(
        self, worker_id: str, lease: float, definitions: Sequence[DefinitionRef] = ()
    ) -> None:
        self.worker_id = worker_id
        self._lease = lease
        published_text = definitions_text(definitions)
        async with self._transaction() as conn:
            await conn.execute(Q["forget_dead_workers"], DEAD_WORKER_RETENTION)
            await conn.execute(
                Q["attach_worker"],
                worker_id,
                socket.gethostname(),
                os.getpid(),
                lease,
                published_text,
            )

    async def _published(self) -> builtins.list[DefinitionRef | str]:
        rows = await self._fetch(Q["live_fingerprints"])
        return [entry for r in rows for entry in published(r[0])]

    async def live_fingerprints(self) -> set[str]:
        return fingerprints_of(await self._published())

    async def live_definitions(self) -> builtins.list[DefinitionRef]:
        return [e for e in await self._published() if isinstance(e, DefinitionRef)]

    async def unsettled_definitions(
        self, saga_types: Sequence[str]
    ) -> builtins.list[DefinitionRef]:
        rows = await self._fetch(Q["unsettled_definitions"], list(saga_types), list(_LIVE))
        return [DefinitionRef(r[0], r[1], r[2]) for r in rows]

    async def heartbeat(self) -> bool:
        rows = await self._fetch(Q["heartbeat"], self.worker_id, self._lease)
        return bool(rows and rows[0][0])

    async def claim(
        self, limit: int, definitions: Sequence[DefinitionRef]
    ) -> builtins.list[Claimed]:
        rows = await self._fetch(
            Q["claim_instances"],
            self.worker_id,
            list(_LIVE),
            [d.saga_type for d in definitions],
            [d.version for d in definitions],
            [d.fingerprint for d in definitions],
            [d.legacy_fingerprint for d in definitions],
            limit,
        )
        return [roster.claimed_from_row(r, self.worker_id) for r in rows]

    async def detach(self) -> None:
        if self.worker_id is None or self._pool is None:
            return
        async with self._transaction() as conn:
            await conn.execute(Q["release_instances"], self.worker_id, list(_LIVE))
            await conn.execute(Q["stop_worker"], self.worker_id)
            await conn.execute(Q["notify_released"])
        self.worker_id = None

    # -- Catalog --------------------------------------------------------------------------

    async def record_definitions(self, definitions: Sequence[DefinitionRecord]) -> None:
        if definitions:
            await self._fetch(Q["record_definitions"], *roster.definition_columns(definitions))

    async def definitions(self) -> builtins.list[DefinitionRecord]:
        return [roster.definition_from_row(r) for r in await self._fetch(Q["definitions"])]

    async def workers(self) -> builtins.list[WorkerRecord]:
        return [roster.worker_from_row(r) for r in await self._fetch(Q["workers"])]

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
                await conn.execute(Q["retire_keys"], *columns(keys, 4))
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
                (Q["forget_dead_workers"], (age,)),
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

    # -- StartQueue -----------------------------------------------------------------------

    async def queued_start(self, saga_type: str, key: str) -> QueuedCommand | None:
        rows = await self._fetch(Q["queued_start"], saga_type, key)
        return command_from_row(rows[0]) if rows else None

    async def start_command(self, saga_id: str) -> QueuedCommand | None:
        rows = await self._fetch(Q["start_command"], saga_id)
        return command_from_row(rows[0]) if rows else None

    async def queued_starts(self, limit: int) -> builtins.list[QueuedCommand]:
        return [command_from_row(r) for r in await self._fetch(Q["queued_starts"], limit)]

    async def cancel_start(self, command_id: int, reason: str) -> bool:
        return bool(await self._fetch(Q["cancel_start"], command_id, reason))

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

    def __init__(self, conn: Conn, owner: str | None) -> None:
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

    async def inbox_touch(self, participant: str, key: str) -> None:
        await self._execute(Q["inbox_touch"], participant, key)

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


__all__ = [
    "NOTIFY_CHANNEL",
    "PostgresStore",
    "PostgresTx",
    "Q",
    "migrations",
    "new_schema_url",
    "qmark_to_dollar",
    "split_url",
]
