"""SIGKILL at random moments: a demo process is killed again and again while it runs
hundreds of sagas with failures; a final run finishes what is left and the ledgers hold.
(SIGKILL does not test power loss; that rests on synchronous=FULL.)"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def demo(url: str, sagas: int, seed: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sagakit",
        "demo",
        "--sagas",
        str(sagas),
        "--fail-rate",
        "0.2",
        "--concurrency",
        "32",
        "--db",
        url,
        "--json",
        "--seed",
        str(seed),
    ]


def instances(path: Path) -> int:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            return int(conn.execute("SELECT count(*) FROM sagakit_instances").fetchone()[0])
    except sqlite3.Error:  # not created yet
        return 0


def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "killed.db"
    url = f"sqlite:///{path}"
    chooser = random.Random(20261126)  # the kill moments are random but reproducible
    killed = 0
    for round_ in range(6):
        before = instances(path)
        proc = subprocess.Popen(
            demo(url, 120, round_), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        # The kill falls at a random moment after the run has begun starting sagas (how long
        # the interpreter takes to start depends on the machine, not on sagakit).
        deadline = time.monotonic() + 30
        while instances(path) == before and proc.poll() is None:
            assert time.monotonic() < deadline, "the demo started no saga in 30 s"
            time.sleep(0.01)
        # Not a synchronisation: the moment of the kill is the random variable under test.
        time.sleep(chooser.uniform(0.0, 0.6))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait(timeout=60)
    assert killed >= 3, "the runs finished before they could be killed; raise --sagas"
    final = subprocess.run(demo(url, 0, 99), capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr[-2000:]
    summary = json.loads(final.stdout)
    assert summary["ledger_ok"], summary["ledger_problems"]
    assert summary["unsettled"] == 0
    assert summary["stuck"] == 0
    assert summary["started"] >= 120
    assert summary["completed"] + summary["failed"] == summary["started"]
    assert summary["failed"] > 0 and summary["completed"] > 0
