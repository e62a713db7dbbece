"""Looking after the database: ``migrate`` (create or upgrade the schema) and ``purge``
(delete finished sagas by age, optionally archiving them first)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path
from typing import TextIO

from sagakit import HistoryEntry, SagaInstance
from sagakit.cli.common import CliError, db_url, reader, run
from sagakit.cli.render import ProgressBar, detail_json, emit, print_json
from sagakit.retention import RetentionPolicy
from sagakit.storage import open_store


def cmd_migrate(args: argparse.Namespace) -> int:
    return run(_migrate(db_url(args), bool(args.json)))


async def _migrate(url: str, as_json: bool) -> int:
    # The one command besides a worker that may create a database (a SQLite file, the
    # PostgreSQL schema): the others open an existing one only.
    if url.startswith("postgres"):
        store = open_store(url, migrate=False)
    else:
        store = open_store(url, upgrade=True, create=True)
    try:
        applied = await store.migrate()
    finally:
        await store.close()
    if as_json:
        print_json({"applied": applied})
    elif applied:
        emit(f"applied migration(s) {', '.join(map(str, applied))} to {url}")
    else:
        emit(f"{url} is up to date")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    try:
        policy = RetentionPolicy.of_seconds(args.older_than, args.keys_older_than, batch=args.batch)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    archive = None if args.archive is None else Path(args.archive)
    if archive is not None and not archive.parent.is_dir():
        raise CliError(f"cannot write the archive {archive}: no folder {archive.parent}")
    return run(_purge(db_url(args), policy, archive, bool(args.json)))


async def _purge(url: str, policy: RetentionPolicy, archive: Path | None, as_json: bool) -> int:
    async with reader(url) as client, contextlib.AsyncExitStack() as stack:
        # The archive is opened once the database is: a purge refused for a missing or
        # locked database leaves no empty archive behind.
        sink: TextIO | None = None
        if archive is not None:
            try:
                sink = stack.enter_context(archive.open("a", encoding="utf-8"))
            except OSError as exc:
                raise CliError(f"cannot write the archive {archive}: {exc.strerror}") from exc

        async def write(instance: SagaInstance, history: list[HistoryEntry]) -> None:
            assert sink is not None
            sink.write(json.dumps(detail_json(instance, history), sort_keys=True) + "\n")
            # On disk before the instance is deleted: a crash mid-purge loses no archived line.
            sink.flush()
            os.fsync(sink.fileno())

        bar = stack.enter_context(ProgressBar("instances purged", None))
        purged, keys = await client.purge(
            policy, archive=write if sink else None, progress=bar.update
        )
    if as_json:
        print(json.dumps({"instances": purged, "keys": keys}))
    else:
        emit(f"purged {purged} instance(s) and {keys} expired key(s)")
    return 0
