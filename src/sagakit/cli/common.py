"""What every command shares: the program's name, the database URL, the one-line error, and a
client on an existing database."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator, Coroutine

from sagakit import Client, runtime
from sagakit.storage import DEFAULT_URL, open_store

PROG = "sagakit"
ENV_DB = "SAGAKIT_DB"
DEFAULT_WAIT_TIMEOUT = 30.0


class CliError(Exception):
    """A failure the CLI reports in one line and exits 1 for (not a usage error)."""


def db_url(args: argparse.Namespace) -> str:
    url = getattr(args, "db", None)
    if url:
        return str(url)
    return os.environ.get(ENV_DB) or DEFAULT_URL


def run(coroutine: Coroutine[object, object, int]) -> int:
    return runtime.run(coroutine)


@contextlib.asynccontextmanager
async def reader(url: str) -> AsyncIterator[Client]:
    """A client on an existing database (never creates the file)."""
    store = open_store(url, create=False)
    try:
        yield Client(store)
    finally:
        await store.close()
