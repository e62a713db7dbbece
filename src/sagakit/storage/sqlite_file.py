"""Opening a SQLite file: its URL, the worker's lock on it, its connections, its schema
(created, and upgraded from an older version) and its transactions.

The statements are named queries in ``sql/sqlite/queries.sql`` (``Q["name"]``); the schema is
``sql/sqlite/schema.sql``, and ``sql/sqlite/upgrade_<N>.sql`` brings version N-1 to N.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import IO

from sagakit.errors import StorageError, StoreLocked
from sagakit.storage.queries import fill, load_queries

#: The statements of the SQLite store, by name, from ``sql/sqlite/queries.sql``.
Q = load_queries("sqlite")

#: The schema version schema.sql creates; sql/sqlite/upgrade_<N>.sql brings N-1 to N.
SCHEMA_VERSION = 3


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///relative`` or ``sqlite:////absolute`` URL."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise StorageError(f"not a SQLite URL: {url!r} (expected sqlite:///path.db)")
    path = url[len(prefix) :]
    if not path:
        raise StorageError(f"SQLite URL without a file path: {url!r}")
    return path


def open_reader(path: str) -> sqlite3.Connection:
    """A connection that only reads (the schema is the writer's business)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(Q["set_busy_timeout"])
    return conn


def open_writer(
    path: str, synchronous: str, *, upgrade: bool, locked: bool
) -> tuple[sqlite3.Connection, list[int]]:
    """The writing connection, in WAL mode, on a file whose schema is made current, and the
    schema versions it was upgraded to. ``upgrade`` allows upgrading an older file; ``locked``
    says the caller already holds the worker's lock on it."""
    conn = open_reader(path)
    conn.execute(Q["set_journal_mode_wal"])
    # A PRAGMA takes no bound parameter: the level is put into the statement.
    conn.execute(fill(Q["set_synchronous"], level=synchronous))
    upgraded: list[int] = []
    try:
        with transaction(conn):
            version = schema_version(conn)
            if version is not None and version != SCHEMA_VERSION:
                upgraded = _upgrade(conn, path, version, upgrade=upgrade, locked=locked)
            run_script(conn, "schema.sql")
    except BaseException:
        conn.close()
        raise
    return conn, upgraded


def _upgrade(
    conn: sqlite3.Connection, path: str, version: int, *, upgrade: bool, locked: bool
) -> list[int]:
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"{path} has sagakit schema version {version}, newer than this sagakit's "
            f"({SCHEMA_VERSION}): upgrade sagakit to open it"
        )
    if not upgrade:
        raise StorageError(
            f"{path} has sagakit schema version {version} and this sagakit needs "
            f"{SCHEMA_VERSION}: stop its worker, then run `sagakit migrate --db "
            f"sqlite:///{path}` (or start a worker on it) to upgrade it"
        )
    # Never under a running worker: an older one would go on writing the old layout.
    lock = None if locked or path == ":memory:" else take_lock(path)
    upgraded: list[int] = []
    try:
        for step in range(version + 1, SCHEMA_VERSION + 1):
            run_script(conn, f"upgrade_{step}.sql")
            upgraded.append(step)
    finally:
        if lock is not None:
            lock.close()
    return upgraded


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction (``BEGIN IMMEDIATE``), rolled back on any exception."""
    conn.execute(Q["begin_immediate"])
    try:
        yield
        conn.execute(Q["commit"])
    except BaseException:
        if conn.in_transaction:
            conn.execute(Q["rollback"])
        raise


def schema_version(conn: sqlite3.Connection) -> int | None:
    """The file's sagakit schema version; None for a file without sagakit's tables yet."""
    try:
        row = conn.execute(Q["schema_version"]).fetchone()
    except sqlite3.OperationalError:  # no sagakit_meta table: a new file
        return None
    return int(row[0]) if row else None


def run_script(conn: sqlite3.Connection, name: str) -> None:
    """Run the statements of sql/sqlite/``name`` one by one, in the open transaction."""
    script = resources.files("sagakit.storage").joinpath(f"sql/sqlite/{name}").read_text()
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def take_lock(path: str) -> IO[str]:
    """The worker's exclusive lock on ``<path>-sagakit.lock``, held by the kernel (so released
    the moment the holding process dies), with the holder's pid written in the file."""
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
