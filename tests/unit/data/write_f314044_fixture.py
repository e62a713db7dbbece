"""Writes ``sagakit_f314044.db``: a database as sagakit at commit f314044 leaves it, with
instances in flight that carry fingerprints v1. Kept to show how the fixture was made; run
it with that commit's code, never as a test::

    git archive f314044 | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src python tests/unit/data/write_f314044_fixture.py OUT.db

It leaves, for ``legacy_app``'s sagas:
- a ``legacy-local`` instance (key ``k-local``) whose local step was running when the worker
  stopped;
- a ``legacy-remote`` instance whose first command waits in the outbox (no participant took
  it);
- a ``legacy-remote`` start (key ``k-queued``) queued by a client without a worker.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sqlite3
import sys
import time
from pathlib import Path

from sagakit import App, Client, SqliteStore, Worker

# Loaded under the module name its tests load it by (legacy_app.MODULE).
_spec = importlib.util.spec_from_file_location(
    "sagakit_legacy_app", Path(__file__).parent / "legacy_app.py"
)
assert _spec is not None and _spec.loader is not None
app_module = importlib.util.module_from_spec(_spec)
sys.modules["sagakit_legacy_app"] = app_module
_spec.loader.exec_module(app_module)


async def write(path: str) -> None:
    setattr(app_module, "WAIT_FOREVER", True)  # noqa: B010 - a module loaded by path
    local, remote = app_module.sagas()
    store = SqliteStore(path, owner=True)
    async with Worker(App(sagas=[local, remote]), store) as worker:
        await worker.client.start(local, {"order": "o-1"}, key="k-local")
        await worker.client.start(remote, {"order": "o-2"})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pending = [i.saga_id for i in await worker.client.list(status="pending")]
            if len(pending) == 2:
                break
            await asyncio.sleep(0.05)
    queued = await Client(store).start(remote, {"order": "o-3"}, key="k-queued")
    await store.close()
    print("queued start", queued.saga_id)


def compact(path: str) -> None:
    """Small pages, no WAL: a small file that holds everything."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute("PRAGMA page_size = 512")
    conn.execute("VACUUM")
    conn.close()
    Path(f"{path}-sagakit.lock").unlink(missing_ok=True)


if __name__ == "__main__":
    asyncio.run(write(sys.argv[1]))
    compact(sys.argv[1])
