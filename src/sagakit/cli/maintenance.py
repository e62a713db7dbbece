"""Looking after the database: ``migrate`` (create or upgrade the schema) and ``purge``
(delete finished sagas by age, optionally archiving them first)."""

from __future__ import annotations

import argparse
import json
import os
from typing import TextIO

from sagakit import HistoryEntry, SagaInstance
from sagakit.cli.common import CliError, db_url, reader, run
from sagakit.cli.render import detail_json
from sagakit.retention import RetentionPolicy
from sagakit.storage import open_store


def cmd_migrate(args: argparse.Namespace) -> int:
    return run(_migrate(db_url(args)))


async def _migrate(url: str) -> int:
    if url.startswith("postgres"):
        store = open_store(url, migrate=False)
    else:
        store = open_store(url, upgrade=True)
    try:
        applied = await store.migrate()
    finally:
        await store.close()
    if applied:
        print(f"applied migration(s) {', '.join(map(str, applied))} to {url}")
    else:
        print(f"{url} is up to date")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    try:
        policy = RetentionPolicy.of_seconds(args.older_than, args.keys_older_than, batch=args.batch)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    if args.archive is None:
        return run(_purge(db_url(args), policy, None, bool(args.json)))
    with open(args.archive, "a", encoding="utf-8") as sink:
        return run(_purge(db_url(args), policy, sink, bool(args.json)))


async def _purge(url: str, policy: RetentionPolicy, sink: TextIO | None, as_json: bool) -> int:
    async def write(instance: SagaInstance, history: list[HistoryEntry]) -> None:
        assert sink is not None
        sink.write(json.dumps(detail_json(instance, history), sort_keys=True) + "\n")
        # On disk before the instance is deleted: a crash mid-purge loses no archived line.
        sink.flush()
        os.fsync(sink.fileno())

    async with reader(url) as client:
        purged, keys = await client.purge(policy, archive=write if sink else None)
    if as_json:
        print(json.dumps({"instances": purged, "keys": keys}))
    else:
        print(f"purged {purged} instance(s) and {keys} expired key(s)")
    return 0
