"""The SQLite store: the zero-set-up default (F1).

WAL journal with ``synchronous=FULL`` by default, so every commit is durable before the worker
acts on it. One connection writes on its own thread (under an asyncio lock, since a
participant's transaction spans awaits), another reads on a second thread, so a read never sees
uncommitted rows. The one exception is a small batch of transitions while commits are fast: it
commits on the event loop's thread (see :meth:`SqliteStore.commit`). A worker owns the file
through an exclusive lock on ``<file>-sagakit.lock`` (held by the kernel, so it is released the
moment the owning process dies); readers and the CLI open the file alongside it. The statements
are named queries in ``sql/sqlite/queries.sql`` (``Q["name"]``).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import IO, Any, TypeVar, cast

from sagakit.definition import Phase
from sagakit.encoding import JSON, dumps, loads
from sagakit.errors import StorageError, StoreLocked
from sagakit.ports import (
    Batch,
    CommandResult,
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

#: The statements of this module, by name, from ``sql/sqlite/queries.sql``.
Q = load_queries("sqlite")

_LIVE = tuple(s.value for s in SagaStatus if not s.terminal)


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///relative`` or ``sqlite:////absolute`` URL."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise StorageError(f"not a SQLite URL: {url!r} (expected sqlite:///path.db)")
    path = url[len(prefix) :]
    if not path:
        raise StorageError(f"SQLite URL without a file path: {url!r}")
    return path


#: The schema version schema.sql creates; sql/sqlite/upgrade_<N>.sql brings N-1 to N.
SCHEMA_VERSION = 2

#: A batch of at most this many transitions may commit on the event loop's thread ...
INLINE_BATCH = 4
#: ... while recent commits took less than this (seconds).
INLINE_SECONDS = 0.002


class SqliteStore:
    """Every store port on one SQLite file.

    ``owner=True`` takes the worker's exclusive lock (one worker per file); ``create=False``
    refuses to create a missing file (read commands). A file of an older schema version is
    upgraded when an owner opens it, or with ``upgrade=True`` (``sagakit migrate``), under the
    worker's lock, so never under a running worker; other openers are refused with a message
    that says so.
    """

    def __init__(
        self,
        path: str,
        *,
        owner: bool = False,
        create: bool = True,
        synchronous: str = "FULL",
        clock: Callable[[], float] = time.time,
        upgrade: bool | None = None,
    ) -> None:
        self.path = path
        self._upgrade = owner if upgrade is None else upgrade
        self._upgraded: builtins.list[int] = []  # the upgrades applied when it was opened
        self._clock = clock
        self._lock_file: IO[str] | None = None
        self.worker_id: str | None = None
        self._lease = 10.0
        memory = path == ":memory:"
        if not memory and not create and not os.path.exists(path):
            raise StorageError(f"database file not found: {path}")
        if not memory and create:
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot open SQLite database {path}: {exc}") from exc
        if owner and not memory:
            self._lock_file = _take_lock(path)
        # One connection writes, on its own thread, under an asyncio lock (a participant's
        # transaction spans awaits); another reads, so a read never sees uncommitted rows.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sagakit-sqlite-w")
        self._reader = (
            self._writer if memory else ThreadPoolExecutor(1, thread_name_prefix="sagakit-sqlite-r")
        )
        self._write_lock: asyncio.Lock | None = None
        self._commit_time = 0.0  # recent commit duration, in seconds (see commit)
        try:
            self._conn = self._writer.submit(self._connect, synchronous, True).result()
            self._rconn = (
                self._conn
                if memory
                else self._reader.submit(self._connect, synchronous, False).result()
            )
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

    def _connect(self, synchronous: str, writer: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(Q["set_busy_timeout"])
        if not writer:
            return conn
        conn.execute(Q["set_journal_mode_wal"])
        # A PRAGMA takes no bound parameter: the level is put into the statement.
        conn.execute(fill(Q["set_synchronous"], level=synchronous))
        try:
            with _transaction(conn):
                version = _schema_version(conn)
                if version is not None and version != SCHEMA_VERSION:
                    self._upgrade_from(conn, version)
                _run_script(conn, "schema.sql")
        except BaseException:
            conn.close()
            raise
        return conn

    def _upgrade_from(self, conn: sqlite3.Connection, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"{self.path} has sagakit schema version {version}, newer than this sagakit's "
                f"({SCHEMA_VERSION}): upgrade sagakit to open it"
            )
        if not self._upgrade:
            raise StorageError(
                f"{self.path} has sagakit schema version {version} and this sagakit needs "
                f"{SCHEMA_VERSION}: stop its worker, then run `sagakit migrate --db "
                f"sqlite:///{self.path}` (or start a worker on it) to upgrade it"
            )
        # Never under a running worker: an older one would go on writing the old layout.
        lock = (
            None
            if self._lock_file is not None or self.path == ":memory:"
            else _take_lock(self.path)
        )
        try:
            for step in range(version + 1, SCHEMA_VERSION + 1):
                _run_script(conn, f"upgrade_{step}.sql")
                self._upgraded.append(step)
        finally:
            if lock is not None:
                lock.close()

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
        conn = self._conn
        results: list[bool] = []
        history: list[tuple[object, ...]] = []
        outbox: list[tuple[object, ...]] = []
        consumed: list[tuple[str]] = [(i,) for i in batch.outbox_done]
        commands: list[CommandResult] = list(batch.commands)
        now = self._clock()
        began = time.perf_counter()
        with _transaction(conn):
            cur = conn.cursor()  # one for the batch: conn.execute makes a cursor per call
            for t in batch.transitions:
                ok = self._write_instance(cur, t)
                results.append(ok)
                if not ok:
                    continue
                history.extend(history_row(t.saga_id, e) for e in t.history)
                if t.outbox:
                    outbox.extend(
                        (m.id, m.source, m.destination, m.saga_id, m.body) for m in t.outbox
                    )
                if t.timer_ops:
                    self._timer_ops(cur, t)
                if t.consumed:
                    consumed.extend((i,) for i in t.consumed)
                if t.commands:
                    commands.extend(t.commands)
            if consumed:
                cur.executemany(Q["delete_outbox"], consumed)
            if history:
                cur.executemany(Q["insert_history"], history)
            if outbox:
                cur.executemany(Q["insert_outbox"], outbox)
            if commands:
                cur.executemany(
                    Q["apply_command"], [(c.state.value, c.error, now, c.id) for c in commands]
                )
            if batch.dead_letters:
                cur.executemany(
                    Q["insert_dead_letter"],
                    [(now, d.source, d.reason, d.body) for d in batch.dead_letters],
                )
        took = time.perf_counter() - began
        # A decaying maximum: one slow commit keeps batches off the loop for a while.
        self._commit_time = max(took, self._commit_time * 0.9)
        return results

    @staticmethod
    def _write_instance(cur: sqlite3.Cursor, t: Transition) -> bool:
        inst = t.instance
        if inst is None:
            return True
        state = transition_state(t)
        if t.expected_revision is None:
            cur.execute(
                Q["insert_instance"],
                (
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
                    state,
                    inst.owner,
                    inst.updated_at,
                ),
            )
            return cur.rowcount == 1
        status = STATUS_TEXT[inst.status]
        # Most transitions keep the status: tried first, that update names no indexed column,
        # so SQLite updates no index (it updates every index on a column a SET names, even
        # to the same value). No row: another status, or another revision (then neither).
        cur.execute(
            Q["update_instance_in_status"],
            (inst.updated_at, inst.revision, state, inst.saga_id, t.expected_revision, status),
        )
        if cur.rowcount == 1:
            return True
        cur.execute(
            Q["update_instance"],
            (
                status,
                inst.updated_at,
                inst.updated_at,
                inst.revision,
                state,
                inst.saga_id,
                t.expected_revision,
            ),
        )
        return cur.rowcount == 1

    @staticmethod
    def _timer_ops(cur: sqlite3.Cursor, t: Transition) -> None:
        for op in t.timer_ops:
            if op.kind is TimerOpKind.SET and op.timer is not None:
                tm = op.timer
                cur.execute(
                    Q["set_timer"],
                    (
                        tm.saga_id,
                        tm.name,
                        tm.kind.value,
                        tm.step,
                        tm.phase.value,
                        tm.attempt,
                        tm.due_at,
                    ),
                )
            elif op.kind is TimerOpKind.CANCEL:
                if op.names is None:
                    cur.execute(Q["delete_timers"], (t.saga_id,))
                else:
                    cur.executemany(Q["delete_timer"], [(t.saga_id, n) for n in op.names])
            elif op.kind is TimerOpKind.FIRED and op.timer is not None:
                tm = op.timer
                cur.execute(Q["delete_fired_timer"], (tm.saga_id, tm.name, tm.due_at, tm.attempt))

    # -- Leases ---------------------------------------------------------------------------
    # One worker owns a SQLite file (the flock), so a lease is the lock itself: attaching
    # claims every unsettled instance, and nothing can be taken over while the owner lives.

    async def attach(self, worker_id: str, lease: float, fingerprints: Sequence[str] = ()) -> None:
        self.worker_id = worker_id
        self._lease = lease
        prints = dumps(list[JSON](sorted(fingerprints)))

        def write() -> None:
            with _transaction(self._conn):
                self._conn.execute(Q["clear_workers"], (worker_id,))
                self._conn.execute(Q["replace_worker"], (worker_id, prints, self._clock() + lease))

        await self._write(write)

    async def heartbeat(self) -> bool:
        # The file lock is the real lease; this one lets readers see that a worker is alive.
        until = self._clock() + self._lease

        def write() -> None:
            with _transaction(self._conn):
                self._conn.execute(Q["renew_worker"], (until, self.worker_id))

        await self._write(write)
        return True

    async def live_fingerprints(self) -> set[str]:
        rows = await self._query(Q["live_fingerprints"], (self._clock(),))
        return {str(p) for r in rows for p in cast(list[JSON], loads(cast(str, r[0])))}

    async def claim(self, limit: int, fingerprints: Sequence[str]) -> builtins.list[SagaInstance]:
        # Stuck instances are claimed too: an operator's retry or resolve needs an owner.
        if not fingerprints:
            return []
        # SQLite binds no list: the IN lists' placeholders are put in here, one per value.
        sql = fill(
            Q["claim_instances"],
            live=_marks(len(_LIVE)),
            fingerprints=_marks(len(fingerprints)),
        )

        def write() -> builtins.list[tuple[object, ...]]:
            with _transaction(self._conn):
                return self._conn.execute(
                    sql, (self.worker_id, *_LIVE, *fingerprints, self.worker_id, limit)
                ).fetchall()

        return [instance_from_row(r) for r in await self._write(write)]

    async def detach(self) -> None:
        if self.worker_id is not None:
            worker_id = self.worker_id

            def write() -> None:
                with _transaction(self._conn):
                    self._conn.execute(Q["delete_worker"], (worker_id,))

            await self._write(write)
        self.worker_id = None

    async def migrate(self) -> builtins.list[int]:
        """The schema versions this store upgraded the file to when it opened it (the schema
        is created, and an older one upgraded, when the file is opened; see the class)."""
        applied, self._upgraded = self._upgraded, []
        return applied

    async def listen(self, callback: Callable[[], None]) -> None:
        """Nothing to listen to: only the owning worker writes work to a SQLite file."""

    # -- Retention ------------------------------------------------------------------------

    async def finished_before(self, age: float, limit: int) -> builtins.list[str]:
        rows = await self._query(Q["finished_before"], (self._clock() - age, limit))
        return [cast(str, r[0]) for r in rows]

    async def purge(self, saga_ids: Sequence[str]) -> int:
        ids = [(i,) for i in saga_ids]

        def write() -> int:
            with _transaction(self._conn):
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
            with _transaction(self._conn):
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
            with _transaction(self._conn):
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


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute(Q["begin_immediate"])
    try:
        yield
        conn.execute(Q["commit"])
    except BaseException:
        if conn.in_transaction:
            conn.execute(Q["rollback"])
        raise


def _schema_version(conn: sqlite3.Connection) -> int | None:
    """The file's sagakit schema version; None for a file without sagakit's tables yet."""
    try:
        row = conn.execute(Q["schema_version"]).fetchone()
    except sqlite3.OperationalError:  # no sagakit_meta table: a new file
        return None
    return int(row[0]) if row else None


def _run_script(conn: sqlite3.Connection, name: str) -> None:
    """Run the statements of sql/sqlite/``name`` one by one, in the open transaction."""
    script = resources.files("sagakit.storage").joinpath(f"sql/sqlite/{name}").read_text()
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _marks(count: int) -> str:
    """``count`` ``?`` placeholders for an ``IN`` list."""
    return ",".join("?" * count)


def _take_lock(path: str) -> IO[str]:
    lock_path = f"{path}-sagakit.lock"
    Path(lock_path).parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_path, "a+")  # noqa: SIM115 - held for the store's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise StoreLocked(
            f"{path} is owned by a running worker (pid {holder}); one worker per SQLite file "
            "(use PostgreSQL for several workers)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
