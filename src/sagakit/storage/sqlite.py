"""The SQLite store: the zero-set-up default (F1).

WAL journal with ``synchronous=FULL`` by default, so every commit is durable before the worker
acts on it. One connection writes on its own thread (under an asyncio lock, since a
participant's transaction spans awaits), another reads on a second thread, so a read never sees
uncommitted rows. The one exception is a small batch of transitions while commits are fast: it
commits on the event loop's thread (see :meth:`SqliteStore.commit`). A worker owns the file
through an exclusive lock on ``<file>-sagakit.lock`` (held by the kernel, so it is released the
moment the owning process dies); readers and the CLI open the file alongside it. The statements
are named queries in ``sql/sqlite/queries.sql`` (``Q["name"]``).

Opening the file (its lock, connections and schema) is in :mod:`sagakit.storage.sqlite_file`;
the batch commit in :mod:`sagakit.storage.sqlite_commit`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeVar, cast

from sagakit.catalog import DefinitionRecord
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
from sagakit.storage import sqlite_workers as roster
from sagakit.storage.queries import fill
from sagakit.storage.rows import (
    command_from_row,
    fingerprints_of,
    instance_from_row,
    published,
)
from sagakit.storage.sqlite_commit import commit_batch
from sagakit.storage.sqlite_file import (
    SCHEMA_VERSION,
    Q,
    open_reader,
    open_writer,
    sqlite_path,
    take_lock,
    transaction,
)
from sagakit.transitions import TimerKind

T = TypeVar("T")

_LIVE = tuple(s.value for s in SagaStatus if not s.terminal)

#: A batch of at most this many transitions may commit on the event loop's thread ...
INLINE_BATCH = 4
#: ... while recent commits took less than this (seconds).
INLINE_SECONDS = 0.002


class SqliteStore:
    """Every store port on one SQLite file.

    ``owner=True`` takes the worker's exclusive lock (one worker per file). A missing file is
    created only when told to: ``create=True``, or by an owner (a worker); anyone else (a
    client, the read commands) gets an error, so a mistyped path never becomes a new empty
    database where starts would queue for ever. A file of an older schema version is
    upgraded when an owner opens it, or with ``upgrade=True`` (``sagakit migrate``), under the
    worker's lock, so never under a running worker; other openers are refused with a message
    that says so.
    """

    def __init__(
        self,
        path: str,
        *,
        owner: bool = False,
        create: bool | None = None,
        synchronous: str = "FULL",
        clock: Callable[[], float] = time.time,
        upgrade: bool | None = None,
    ) -> None:
        self.path = path
        upgrade = owner if upgrade is None else upgrade
        create = owner if create is None else create
        self._upgraded: builtins.list[int] = []  # the upgrades applied when it was opened
        self._clock = clock
        self._lock_file: IO[str] | None = None
        self.worker_id: str | None = None
        self._lease = 10.0
        memory = path == ":memory:"
        if not memory and not create and not os.path.exists(path):
            raise StorageError(
                f"database file not found: {path} (create it with `sagakit migrate`, or "
                "open_store(url, create=True))"
            )
        if not memory and create:
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot open SQLite database {path}: {exc}") from exc
        if owner and not memory:
            self._lock_file = take_lock(path)
        # One connection writes, on its own thread, under an asyncio lock (a participant's
        # transaction spans awaits); another reads, so a read never sees uncommitted rows.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sagakit-sqlite-w")
        self._reader = (
            self._writer if memory else ThreadPoolExecutor(1, thread_name_prefix="sagakit-sqlite-r")
        )
        self._write_lock: asyncio.Lock | None = None
        self._commit_time = 0.0  # recent commit duration, in seconds (see commit)
        try:
            self._conn, self._upgraded = self._writer.submit(
                open_writer, path, synchronous, upgrade=upgrade, locked=owner and not memory
            ).result()
            self._rconn = self._conn if memory else self._reader.submit(open_reader, path).result()
        except (sqlite3.Error, StorageError) as exc:
            self._release()
            self._writer.shutdown(wait=False)
            self._reader.shutdown(wait=False)
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"cannot open SQLite database {path}: {exc}") from exc

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SqliteStore:
        return cls(sqlite_path(url), **options)

    def _lock(self) -> asyncio.Lock:
        if self._write_lock is None:
            self._write_lock = asyncio.Lock()
        return self._write_lock

    async def _run(self, fn: Callable[[], T], *, write: bool = False) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._writer if write else self._reader, fn)
        except sqlite3.Error as exc:
            raise StorageError(f"SQLite error: {exc}") from exc

    async def _write(self, fn: Callable[[], T]) -> T:
        async with self._lock():
            return await self._run(fn, write=True)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._run(self._conn.close, write=True)
        if self._rconn is not self._conn:
            with contextlib.suppress(Exception):
                await self._run(self._rconn.close)
            self._reader.shutdown(wait=True)
        self._writer.shutdown(wait=True)
        self._release()

    def _release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # -- TransitionStore ------------------------------------------------------------------

    async def commit(self, batch: Batch) -> builtins.list[bool]:
        try:
            return await self._commit_batch(batch)
        except StorageError as exc:
            if isinstance(exc.__cause__, sqlite3.DataError):
                raise StoreRefused(f"SQLite refused a value: {exc.__cause__}") from exc.__cause__
            raise
        except (OverflowError, UnicodeError, TypeError, ValueError) as exc:
            # What the driver cannot bind (an integer past 64 bits, a lone surrogate) or the
            # encoder cannot write: that batch's fault, not the store's.
            raise StoreRefused(f"SQLite refused a value: {exc}") from exc

    async def _commit_batch(self, batch: Batch) -> builtins.list[bool]:
        async with self._lock():
            if (
                len(batch.transitions) <= INLINE_BATCH
                and self._commit_time < INLINE_SECONDS
                and self._rconn is not self._conn
            ):
                # Handing a small batch to the writer thread and back costs two thread
                # wake-ups, more than its own SQL and fsync (measured: 0.14 ms of 0.39 ms a
                # commit, and a third of the worker's CPU at one saga in flight). Under load
                # batches are large and go to the thread, so the loop decides the next batch
                # meanwhile; after a commit slower than INLINE_SECONDS (a disk slow to sync)
                # every batch goes there until the slow one is forgotten. An in-memory
                # database reads on its writer's one connection: that stays on one thread.
                try:
                    return self._commit(batch)
                except sqlite3.Error as exc:
                    raise StorageError(f"SQLite error: {exc}") from exc
            return await self._run(lambda: self._commit(batch), write=True)

    def _commit(self, batch: Batch) -> builtins.list[bool]:
        now = self._clock()
        began = time.perf_counter()
        results = commit_batch(self._conn, batch, now)
        took = time.perf_counter() - began
        # A decaying maximum: one slow commit keeps batches off the loop for a while.
        self._commit_time = max(took, self._commit_time * 0.9)
        return results

    # -- Leases ---------------------------------------------------------------------------
    # One worker owns a SQLite file (the flock), so a lease is the lock itself: attaching
    # claims every unsettled instance, and nothing can be taken over while the owner lives.
    # The lease rows, claims and catalog are in sqlite_workers.

    async def attach(
        self, worker_id: str, lease: float, definitions: Sequence[DefinitionRef] = ()
    ) -> None:
        self.worker_id = worker_id
        self._lease = lease
        now = self._clock()
        await self._write(lambda: roster.attach(self._conn, worker_id, lease, definitions, now))

    async def heartbeat(self) -> bool:
        # The file lock is the real lease; this one lets readers see that a worker is alive.
        now = self._clock()
        await self._write(lambda: roster.renew(self._conn, self.worker_id, self._lease, now))
        return True

    async def _published(self) -> builtins.list[DefinitionRef | str]:
        rows = await self._query(Q["live_fingerprints"], (self._clock(),))
        return [entry for r in rows for entry in published(cast(str, r[0]))]

    async def live_fingerprints(self) -> set[str]:
        return fingerprints_of(await self._published())

    async def live_definitions(self) -> builtins.list[DefinitionRef]:
        return [e for e in await self._published() if isinstance(e, DefinitionRef)]

    async def unsettled_definitions(
        self, saga_types: Sequence[str]
    ) -> builtins.list[DefinitionRef]:
        sql = fill(Q["unsettled_definitions"], live=_marks(len(_LIVE)))
        rows = await self._query(sql, (dumps(list[JSON](saga_types)), *_LIVE))
        return [DefinitionRef(cast(str, r[0]), cast(int, r[1]), cast(str, r[2])) for r in rows]

    async def claim(
        self, limit: int, definitions: Sequence[DefinitionRef]
    ) -> builtins.list[Claimed]:
        # Stuck instances are claimed too: an operator's retry or resolve needs an owner.
        if not definitions:
            return []
        now = self._clock()
        return await self._write(
            lambda: roster.claim(self._conn, self.worker_id, limit, definitions, now)
        )

    async def detach(self) -> None:
        if self.worker_id is not None:
            worker_id, now = self.worker_id, self._clock()
            await self._write(lambda: roster.detach(self._conn, worker_id, now))
        self.worker_id = None

    async def migrate(self) -> builtins.list[int]:
        """The schema versions this store upgraded the file to when it opened it (the schema
        is created, and an older one upgraded, when the file is opened; see the class)."""
        applied, self._upgraded = self._upgraded, []
        return applied

    async def listen(self, callback: Callable[[], None]) -> None:
        """Nothing to listen to: only the owning worker writes work to a SQLite file."""

    # -- Catalog --------------------------------------------------------------------------

    async def record_definitions(self, definitions: Sequence[DefinitionRecord]) -> None:
        now = self._clock()
        await self._write(lambda: roster.record_definitions(self._conn, definitions, now))

    async def definitions(self) -> builtins.list[DefinitionRecord]:
        return await self._run(lambda: roster.read_definitions(self._rconn))

    async def workers(self) -> builtins.list[WorkerRecord]:
        now = self._clock()
        return await self._run(lambda: roster.read_workers(self._rconn, now))

    # -- Retention ------------------------------------------------------------------------

    async def finished_before(self, age: float, limit: int) -> builtins.list[str]:
        rows = await self._query(Q["finished_before"], (self._clock() - age, limit))
        return [cast(str, r[0]) for r in rows]

    async def purge(self, saga_ids: Sequence[str]) -> int:
        ids = [(i,) for i in saga_ids]

        def write() -> int:
            with transaction(self._conn):
                conn = self._conn
                conn.execute(Q["create_purge_table"])
                conn.execute(Q["clear_purge_table"])
                conn.executemany(Q["add_purge_id"], ids)
                conn.execute(Q["keep_finished_purge_ids"])
                conn.execute(Q["retire_purged_keys"], (self._clock(),))
                conn.execute(Q["purge_history"])
                conn.execute(Q["purge_timers"])
                conn.execute(Q["purge_instances"])
                count = conn.execute(Q["count_purged"]).fetchone()[0]
                return int(count)

        return await self._write(write)

    async def purge_keys(self, age: float) -> int:
        cutoff = self._clock() - age

        def write() -> int:
            with transaction(self._conn):
                conn = self._conn
                count = conn.execute(Q["purge_retired_keys"], (cutoff,)).rowcount
                # An inbox key outlives its age while its saga is still live (running or
                # stuck): an operator's retry must still find it.
                count += conn.execute(Q["purge_inbox"], (cutoff,)).rowcount
                count += conn.execute(Q["purge_commands"], (cutoff,)).rowcount
                return int(count)

        return await self._write(write)

    async def retired_key(self, saga_type: str, key: str) -> RetiredKey | None:
        rows = await self._query(Q["retired_key"], (saga_type, key))
        return RetiredKey(cast(str, rows[0][0]), cast(str, rows[0][1])) if rows else None

    # -- InstanceQueries ------------------------------------------------------------------

    async def get(self, saga_id: str) -> SagaInstance | None:
        rows = await self._query(Q["get_instance"], (saga_id,))
        return instance_from_row(rows[0]) if rows else None

    async def find_by_key(self, saga_type: str, key: str) -> SagaInstance | None:
        rows = await self._query(Q["find_by_key"], (saga_type, key))
        return instance_from_row(rows[0]) if rows else None

    async def list(self, filter: InstanceFilter) -> builtins.list[SagaInstance]:
        # The WHERE clause is built here: it names only the filters given, so each query
        # keeps the plan (and index) of its own filters, which one fixed statement of
        # "(? IS NULL OR column = ?)" terms would not. The rest of the statement is in the file.
        where: list[str] = []
        params: list[object] = []
        if filter.status is not None:
            where.append("status = ?")
            params.append(filter.status.value)
        if filter.saga_type is not None:
            where.append("saga_type = ?")
            params.append(filter.saga_type)
        if filter.correlation_id is not None:
            where.append("correlation_id = ?")
            params.append(filter.correlation_id)
        if filter.created_after is not None:
            where.append("created_at >= ?")
            params.append(filter.created_after)
        if filter.created_before is not None:
            where.append("created_at < ?")
            params.append(filter.created_before)
        sql = fill(Q["list_instances"], where=(" WHERE " + " AND ".join(where)) if where else "")
        params.append(filter.limit)
        return [instance_from_row(r) for r in await self._query(sql, params)]

    async def history(self, saga_id: str) -> builtins.list[HistoryEntry]:
        rows = await self._query(Q["history"], (saga_id,))
        return [
            HistoryEntry(
                cast(float, r[0]),
                HistoryKind(cast(str, r[1])),
                cast("str | None", r[2]),
                cast("str | None", r[3]),
                cast("int | None", r[4]),
                cast(dict[str, JSON], loads(cast(str, r[5]))),
            )
            for r in rows
        ]

    async def count_by_status(self) -> dict[SagaStatus, int]:
        rows = await self._query(Q["count_by_status"])
        return {SagaStatus(cast(str, r[0])): cast(int, r[1]) for r in rows}

    # -- TimerQueue -----------------------------------------------------------------------

    async def now(self) -> float:
        return self._clock()

    async def due(self, limit: int) -> builtins.list[Timer]:
        rows = await self._query(Q["due_timers"], (self._clock(), limit))
        return [
            Timer(
                saga_id=cast(str, r[0]),
                name=cast(str, r[1]),
                kind=TimerKind(cast(str, r[2])),
                step=cast("str | None", r[3]),
                phase=Phase(cast(str, r[4])),
                attempt=cast(int, r[5]),
                due_at=cast(float, r[6]),
            )
            for r in rows
        ]

    async def next_due(self) -> float | None:
        rows = await self._query(Q["next_due"])
        return cast("float | None", rows[0][0]) if rows else None

    # -- Outbox ---------------------------------------------------------------------------

    async def pending(self, source: str, limit: int) -> builtins.list[OutboxMessage]:
        rows = await self._query(Q["pending_outbox"], (source, limit))
        return [
            OutboxMessage(
                cast(str, r[0]),
                cast(str, r[1]),
                cast(str, r[2]),
                bytes(cast(bytes, r[3])),
                cast(str, r[4]),
            )
            for r in rows
        ]

    # -- CommandQueue ---------------------------------------------------------------------

    async def enqueue(self, saga_id: str, kind: str, body: dict[str, JSON]) -> int:
        def write() -> int:
            with transaction(self._conn):
                cur = self._conn.execute(
                    Q["enqueue_command"],
                    (saga_id, kind, dumps(body), CommandState.PENDING.value, self._clock()),
                )
                return cast(int, cur.lastrowid)

        return await self._write(write)

    async def pending_commands(self, limit: int, after: int = 0) -> builtins.list[QueuedCommand]:
        rows = await self._query(Q["pending_commands"], (CommandState.PENDING.value, after, limit))
        return [command_from_row(r) for r in rows]

    async def command(self, command_id: int) -> QueuedCommand | None:
        rows = await self._query(Q["get_command"], (command_id,))
        return command_from_row(rows[0]) if rows else None

    # -- StartQueue -----------------------------------------------------------------------

    async def queued_start(self, saga_type: str, key: str) -> QueuedCommand | None:
        rows = await self._query(Q["queued_start"], (saga_type, key))
        return command_from_row(rows[0]) if rows else None

    async def start_command(self, saga_id: str) -> QueuedCommand | None:
        rows = await self._query(Q["start_command"], (saga_id,))
        return command_from_row(rows[0]) if rows else None

    async def queued_starts(self, limit: int) -> builtins.list[QueuedCommand]:
        return [command_from_row(r) for r in await self._query(Q["queued_starts"], (limit,))]

    async def cancel_start(self, command_id: int, reason: str) -> bool:
        def write() -> bool:
            with transaction(self._conn):
                cur = self._conn.execute(Q["cancel_start"], (reason, self._clock(), command_id))
                return cur.rowcount == 1

        return await self._write(write)

    # -- DeadLetters ----------------------------------------------------------------------

    async def dead_letters(self, limit: int) -> builtins.list[DeadLetter]:
        rows = await self._query(Q["dead_letters"], (limit,))
        return [
            DeadLetter(
                cast(str, r[2]),
                cast(str, r[3]),
                bytes(cast(bytes, r[4])),
                cast(float, r[1]),
                cast(int, r[0]),
            )
            for r in rows
        ]

    # -- ParticipantStore -----------------------------------------------------------------

    async def transaction(self, fn: Callable[[ParticipantTx], Awaitable[T]]) -> T:
        async with self._lock():
            try:
                # BEGIN and COMMIT inside the try: a cancelled await does not stop them on the
                # thread, and a failed COMMIT leaves the transaction open. Either way it is
                # rolled back (on the same FIFO thread, so after them) before the lock is freed.
                await self._run(lambda: self._conn.execute(Q["begin_immediate"]), write=True)
                result = await fn(_SqliteTx(self))
                await self._run(lambda: self._conn.execute(Q["commit"]), write=True)
            except BaseException:
                await asyncio.shield(self._run(self._rollback, write=True))
                raise
            return result

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute(Q["rollback"])

    # -- helpers --------------------------------------------------------------------------

    async def _query(
        self, sql: str, params: Sequence[object] = ()
    ) -> builtins.list[tuple[object, ...]]:
        return await self._run(lambda: self._rconn.execute(sql, params).fetchall())


class _SqliteTx:
    dialect = "sqlite"

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self._conn = store._conn

    async def _do(self, fn: Callable[[], T]) -> T:
        return await self._store._run(fn, write=True)

    async def execute(
        self, sql: str, params: Sequence[object] = ()
    ) -> builtins.list[tuple[object, ...]]:
        return await self._do(lambda: self._conn.execute(sql, params).fetchall())

    async def inbox_get(self, participant: str, key: str) -> bytes | None:
        row = await self._do(
            lambda: self._conn.execute(Q["inbox_get"], (participant, key)).fetchone()
        )
        return bytes(row[0]) if row else None

    async def inbox_put(self, participant: str, key: str, reply: bytes) -> None:
        await self._do(
            lambda: self._conn.execute(Q["inbox_put"], (participant, key, reply, time.time()))
        )

    async def inbox_touch(self, participant: str, key: str) -> None:
        await self._do(
            lambda: self._conn.execute(Q["inbox_touch"], (time.time(), participant, key))
        )

    async def outbox_put(self, message: OutboxMessage) -> None:
        await self._do(
            lambda: self._conn.execute(
                Q["insert_outbox"],
                (message.id, message.source, message.destination, message.saga_id, message.body),
            )
        )

    async def outbox_done(self, message_ids: Sequence[str]) -> None:
        await self._do(
            lambda: self._conn.executemany(Q["delete_outbox"], [(i,) for i in message_ids])
        )

    async def dead_letter(self, letter: DeadLetter) -> None:
        await self._do(
            lambda: self._conn.execute(
                Q["insert_dead_letter"],
                (letter.at, letter.source, letter.reason, letter.body),
            )
        )


def _marks(count: int) -> str:
    """``count`` ``?`` placeholders for an ``IN`` list."""
    return ",".join("?" * count)


__all__ = ["INLINE_BATCH", "INLINE_SECONDS", "SCHEMA_VERSION", "Q", "SqliteStore", "sqlite_path"]
