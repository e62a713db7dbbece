"""``sagakit demo``: run the order-fulfillment example and check its ledgers."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Mapping
from typing import TextIO

from sagakit import runtime
from sagakit.cli.common import PROG, db_url
from sagakit.cli.render import ProgressBar, print_json
from sagakit.examples.demo import DemoProgress, run_demo


def cmd_demo(args: argparse.Namespace) -> int:
    # A fifth of the demo's orders fail on purpose: the worker's warning for each would bury
    # the progress and the ledger check (`sagakit worker` logs them as usual). Stuck sagas,
    # which the demo never expects, still show.
    logging.getLogger("sagakit.saga").setLevel(logging.ERROR)
    url = db_url(args)
    sagas = int(args.sagas)
    as_json = bool(args.json)
    with contextlib.ExitStack() as stack:
        bar: list[ProgressBar] = []

        def opened() -> None:
            # Announced once the database is open and its worker lock held: a demo that
            # cannot run says only why.
            print(f"{PROG} demo: {sagas} new order saga(s) on {url}", file=sys.stderr, flush=True)
            bar.append(stack.enter_context(ProgressBar("order sagas settled", sagas)))

        def progress(done: DemoProgress) -> None:
            if bar:
                bar[0].update(done.settled, note=_note(done))

        summary = runtime.run(
            run_demo(
                url,
                sagas=sagas,
                fail_rate=float(args.fail_rate),
                concurrency=int(args.concurrency),
                seed=None if args.seed is None else int(args.seed),
                on_open=opened,
                on_progress=progress,
            )
        )
    ok = (
        summary.get("ledger_ok") is True
        and _count(summary, "unsettled") == 0
        and _count(summary, "stuck") == 0
    )
    if as_json:
        print_json(summary)
        _print_demo_summary(summary, sys.stderr)
    else:
        _print_demo_summary(summary, sys.stdout)
    return 0 if ok else 1


def _note(done: DemoProgress) -> str:
    parts = [f"{n} {status}" for status, n in sorted(done.by_status.items())]
    if done.leftover:
        parts.append(f"finishing {done.leftover} left by an earlier run")
    return ", ".join(parts)


def _count(summary: Mapping[str, object], key: str) -> int:
    value = summary.get(key, 0)
    return value if isinstance(value, int) else 0


def _print_demo_summary(summary: Mapping[str, object], out: TextIO) -> None:
    new = _count(summary, "new")
    print(
        f"demo: {new} new saga(s) in {summary.get('seconds')} s "
        f"({summary.get('sagas_per_second')} sagas/s)",
        file=out,
    )
    print(
        f"database: {_count(summary, 'started')} saga(s): "
        f"{_count(summary, 'completed')} completed, {_count(summary, 'failed')} failed, "
        f"{_count(summary, 'stuck')} stuck, {_count(summary, 'unsettled')} unsettled",
        file=out,
    )
    if summary.get("ledger_ok") is True:
        print("ledgers: ok", file=out)
    else:
        print("ledgers: NOT OK", file=out)
        problems = summary.get("ledger_problems")
        for problem in problems if isinstance(problems, list) else []:
            print(f"  {problem}", file=out)
    out.flush()
