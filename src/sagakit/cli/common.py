"""What every command shares: the program's name, the database URL, the one-line error, a
client on an existing database, and the app a command imports."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import AsyncIterator, Coroutine

from sagakit import App, Client, runtime
from sagakit.errors import SagakitError
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


def load_app(ref: str) -> App:
    """The App named by ``MODULE:ATTR`` (``ATTR`` may be dotted); the current directory is
    importable, as with ``python -m``."""
    module_name, _, attr = ref.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # like `python -m`: modules in the current directory import
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import {module_name!r}: {exc}") from exc
    except SagakitError:
        raise
    except Exception as exc:
        raise CliError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    value: object = module
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise CliError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(value, App):
        raise CliError(f"{ref} is a {type(value).__name__}, not a sagakit.App")
    return value
