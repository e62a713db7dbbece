"""Profile one sagakit run with py-spy and print where the time goes.

    .venv/bin/pip install py-spy        # once, into the project's venv
    .venv/bin/python bench/profile.py --sagas 6000 --concurrency 64

py-spy samples every thread of the benchmark process (the event loop and the store's SQLite
thread) at --rate Hz, only while a thread is running (not idle), with little overhead. This
script sums the samples per thread, per function (self: the sampled frame itself) and per
function including its callees (inclusive), and prints the tops. The raw samples stay in
bench/cache/pyspy-<store>-<C>.txt (collapsed stacks, for flamegraph.pl or speedscope).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^():]*)(?::(?P<line>\d+))?\)$")


def frame_name(frame: str) -> str:
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "lib/python3.11/", "src/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m.group('fn')} ({path})"


def analyse(raw: Path, top: int) -> str:
    threads: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, _, count_s = line.rpartition(" ")
        count = int(count_s)
        frames = stack.split(";")
        thread = re.sub(r"^thread \(\d+\): ", "", frames[0])
        thread = re.sub(r"_\d+$", "", thread)
        threads[thread] += count
        total += count
        names = [frame_name(f) for f in frames[1:]]
        if names:
            self_time[f"{names[-1]}  [{thread}]"] += count
        for name in set(names):
            inclusive[f"{name}  [{thread}]"] += count
    out = [f"{total} samples (active threads only)", "", "per thread:"]
    for thread, n in threads.most_common():
        out.append(f"  {n / total:6.1%}  {thread}")
    out += ["", f"top {top} by self time:"]
    for name, n in self_time.most_common(top):
        out.append(f"  {n / total:6.1%}  {name}")
    out += ["", f"top {top} by inclusive time (function and its callees):"]
    for name, n in inclusive.most_common(top * 2):
        if any(
            s in name
            for s in (
                "<module>",
                "run_forever",
                "_run_once",
                "Runner.run",
                "run_until_complete",
                "Handle._run",
                "Thread._bootstrap",
                "Thread.run",
                "_worker (concurrent",
                "asyncio.run",
                "main (",
            )
        ):
            continue
        out.append(f"  {n / total:6.1%}  {name}")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="sqlite")
    parser.add_argument("--sagas", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--raw", help="analyse an existing raw file instead of running")
    parser.add_argument(
        "--gil",
        action="store_true",
        help="sample only the thread holding the GIL (where Python CPU goes); by default every "
        "non-idle thread is sampled, so waits in the store (fsync) show too",
    )
    args = parser.parse_args()
    if args.raw:
        print(analyse(Path(args.raw), args.top))
        return 0
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    mode = "gil" if args.gil else "active"
    raw = HERE / "cache" / f"pyspy-{args.store}-{args.concurrency}-{mode}.txt"
    raw.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        py_spy,
        "record",
        "--nonblocking",
        "-r",
        str(args.rate),
        "-f",
        "raw",
        "-o",
        str(raw),
        "--threads",
        *(["--gil"] if args.gil else []),
        "--",
        sys.executable,
        str(HERE / "sagakit_bench.py"),
        "--store",
        args.store,
        "--sagas",
        str(args.sagas),
        "--concurrency",
        str(args.concurrency),
        "--json",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    result = [line for line in done.stdout.splitlines() if line.startswith("{")]
    print(result[-1] if result else done.stderr[-2000:])
    print()
    print(analyse(raw, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
