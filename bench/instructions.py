"""Instructions per saga, counted by valgrind (callgrind): a measure that machine noise leaves
alone, for comparing two versions of the engine when wall-clock numbers swing.

    .venv/bin/python bench/instructions.py                  # SQLite, C=64, this checkout
    .venv/bin/python bench/instructions.py --loop asyncio   # on the standard event loop
    .venv/bin/python bench/instructions.py --log-level DEBUG  # with every saga event logged

One process runs the order saga (SPEC.md section 1) with a worker on a fresh SQLite file:
a warm-up round of N sagas, then a measured round of N. Two such processes run under
callgrind, with N = --small and N = --large; the difference of their instruction counts over
2 x (large - small) sagas is the engine's (and the driver's) instructions per saga, without
the interpreter's start-up and imports. Logging is set up as ``sagakit worker`` sets it up
(text lines on stderr, at INFO unless --log-level says otherwise), so the count includes what
the worker logs about the sagas that fail. Needs valgrind (apt install valgrind); slow (about
a minute).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def child(sagas: int, concurrency: int, path: str, log_level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import _common as c
    import sagakit_bench as b

    from sagakit import App, Worker, open_store, runtime

    async def main() -> None:
        store = open_store(f"sqlite:///{path}", owner=True, synchronous="FULL")
        try:
            async with Worker(App(sagas=[b.definition]), store) as worker:
                for _ in range(2):  # warm-up, then the measured round
                    run_id = uuid.uuid4().hex[:8]

                    async def one(i: int, run_id: str = run_id) -> str:
                        handle = await worker.client.start(b.definition, c.order(i, run_id))
                        return (await handle.result()).status.value

                    await c.drive(sagas, concurrency, one)
        finally:
            await store.close()

    runtime.run(main())


def count(sagas: int, args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        env = {**os.environ, "SAGAKIT_LOOP": args.loop}
        done = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--child",
                str(sagas),
                "--concurrency",
                str(args.concurrency),
                "--db",
                str(Path(tmp) / "saga.db"),
                "--log-level",
                args.log_level,
            ],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        found = re.search(r"Collected\s*:\s*(\d+)", done.stderr)
        if done.returncode != 0 or found is None:
            raise SystemExit(f"valgrind run failed: {done.stderr[-1500:]}")
        return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument(
        "--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default="INFO"
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.concurrency, args.db, args.log_level)
        return 0
    small, large = count(args.small, args), count(args.large, args)
    per_saga = (large - small) / (2 * (args.large - args.small))
    print(
        f"{per_saga / 1e6:.2f} M instructions per saga "
        f"(SQLite, C={args.concurrency}, {args.loop} loop, logging at {args.log_level}; "
        f"{small:,} for 2 x {args.small} sagas, {large:,} for 2 x {args.large})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
