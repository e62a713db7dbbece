"""``sagakit worker``: import an App and run a worker for it until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from sagakit import App, Worker
from sagakit.cli.common import PROG, db_url, load_app, run
from sagakit.retention import RetentionPolicy
from sagakit.storage import open_store


def cmd_worker(args: argparse.Namespace) -> int:
    app = load_app(str(args.app))
    logging.basicConfig(
        stream=sys.stderr,
        level=str(args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return run(_worker(app, str(args.app), db_url(args), args.lease, args.retention))


async def _worker(app: App, ref: str, url: str, lease: float, args_retention: float | None) -> int:
    store = open_store(url, owner=True)
    try:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        try:
            retention = RetentionPolicy.of_seconds(args_retention) if args_retention else None
            worker = Worker(app, store, lease=lease, retention=retention)
            await worker.start()
            try:
                names = ", ".join(f"{d.name} v{d.version}" for d in app.definitions) or "none"
                print(
                    f"{PROG} worker (pid {os.getpid()}) running {ref} on {url}: sagas {names}; "
                    f"{len(app.participants)} participant(s); stop with Ctrl-C or SIGTERM",
                    file=sys.stderr,
                    flush=True,
                )
                await stop.wait()
                print(f"{PROG} worker: stopping", file=sys.stderr, flush=True)
            finally:
                await worker.stop()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
    finally:
        await store.close()
    print(f"{PROG} worker: stopped", file=sys.stderr, flush=True)
    return 0
