"""SIGKILL at random moments: a demo process is killed again and again while it runs
hundreds of sagas with failures; a final run finishes what is left and the ledgers hold.
(SIGKILL does not test power loss; that rests on synchronous=FULL.)"""

from __future__ import annotations

import json
import random
import signal
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


def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/killed.db"
    chooser = random.Random(20261126)  # the kill moments are random but reproducible
    killed = 0
    for round_ in range(6):
        proc = subprocess.Popen(
            demo(url, 120, round_), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        # Not a synchronisation: the moment of the kill is the random variable under test.
        time.sleep(chooser.uniform(0.25, 0.9))
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
