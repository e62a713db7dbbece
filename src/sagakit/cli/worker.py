"""``sagakit worker``: import an App and run a worker for it until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable

from sagakit import App, Worker
from sagakit.cli.common import PROG, db_url, load_app, run
from sagakit.logs import JsonFormatter
from sagakit.retention import RetentionPolicy
from sagakit.storage import open_store

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def cmd_worker(args: argparse.Namespace) -> int:
    app = load_app(str(args.app))
    handler = logging.StreamHandler(sys.stderr)
    if args.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=str(args.log_level), handlers=[handler])
    say = _log_line if args.log_format == "json" else _text_line
    return run(_worker(app, str(args.app), db_url(args), args.lease, args.retention, say))


def _text_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _log_line(text: str) -> None:
    # With JSON logs every line on stderr is one JSON object, this command's own lines too.
    logging.getLogger("sagakit.cli").info(text)


async def _worker(
    app: App,
    ref: str,
    url: str,
    lease: float,
    args_retention: float | None,
    say: Callable[[str], None],
) -> int:
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
                say(
                    f"{PROG} worker (pid {os.getpid()}) running {ref} on {url}: sagas {names}; "
                    f"{len(app.participants)} participant(s); stop with Ctrl-C or SIGTERM"
                )
                await stop.wait()
                say(f"{PROG} worker: stopping")
            finally:
                await worker.stop()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
    finally:
        await store.close()
    say(f"{PROG} worker: stopped")
    return 0
