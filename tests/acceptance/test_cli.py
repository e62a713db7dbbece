"""Acceptance tests: the real ``sagakit`` command in a subprocess, on throw-away databases.

Every wait is a condition polled against a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

COMMAND_TIMEOUT = 60.0


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SAGAKIT_DB"}
    env.update(extra)
    return env


def url(path: Path) -> str:
    """``sqlite:////absolute/path.db`` for an absolute path."""
    assert path.is_absolute()
    return f"sqlite:///{path}"


def sagakit(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sagakit", *args],
        capture_output=True,
        text=True,
        env=env or _env(),
        cwd=cwd,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The result failed with exit 1 and a single ``sagakit: error:`` line, no traceback."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sagakit: error: "), lines[0]
    return lines[0]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


def is_iso_utc(value: object) -> bool:
    if not isinstance(value, str):
        return False
    parsed = datetime.fromisoformat(value)
    offset = parsed.utcoffset()
    return offset is not None and offset.total_seconds() == 0


class Background:
    """A long-running subprocess whose stderr is collected line by line by a thread."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._eof = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def stderr(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def wait_for_line(self, text: str, timeout: float) -> None:
        def seen() -> bool:
            return any(text in line for line in self.lines)

        with self._changed:
            self._changed.wait_for(lambda: seen() or self._eof, timeout)
            if not seen():
                raise AssertionError(f"{text!r} not seen on stderr:\n{''.join(self.lines)}")

    def terminate(self, timeout: float = 15.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr is not None:
            self._reader.join(5)
            self.proc.stderr.close()


@pytest.fixture
def background() -> Iterator[Callable[..., Background]]:
    started: list[Background] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Background:
        process = Background([sys.executable, "-m", "sagakit", *args], env or _env())
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


# -- demo -------------------------------------------------------------------------------

DEMO_SAGAS = 30


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database holding DEMO_SAGAS finished demo sagas (completed and failed)."""
    db = url(tmp_path_factory.mktemp("demo") / "demo.db")
    result = sagakit(
        "demo", "--sagas", str(DEMO_SAGAS), "--fail-rate", "0.3", "--seed", "7",
        "--json", "--db", db,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    for key in ("started", "completed", "failed", "stuck", "seconds", "sagas_per_second",
                "ledger_ok"):  # fmt: skip
        assert key in summary, key
    assert summary["ledger_ok"] is True
    assert summary["completed"] + summary["failed"] == DEMO_SAGAS
    assert summary["failed"] > 0 and summary["completed"] > 0
    assert summary["stuck"] == 0
    assert "ledgers: ok" in result.stderr  # the human summary goes to stderr with --json
    return db


def test_demo_again_with_zero_sagas_reports_the_whole_database(demo_db: str) -> None:
    result = sagakit("demo", "--sagas", "0", "--json", "--db", demo_db)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["started"] == DEMO_SAGAS
    assert summary["completed"] + summary["failed"] == DEMO_SAGAS
    assert summary["ledger_ok"] is True

    human = sagakit("demo", "--sagas", "0", "--db", demo_db)
    assert human.returncode == 0, human.stderr
    assert f"database: {DEMO_SAGAS} saga(s)" in human.stdout
    assert "ledgers: ok" in human.stdout


def test_demo_default_url_comes_from_the_environment(tmp_path: Path) -> None:
    db = tmp_path / "from-env.db"
    result = sagakit("demo", "--sagas", "3", "--json", env=_env(SAGAKIT_DB=url(db)))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["started"] == 3
    assert db.exists()


def test_relative_sqlite_url_is_relative_to_the_working_directory(tmp_path: Path) -> None:
    result = sagakit("demo", "--sagas", "2", "--db", "sqlite:///rel.db", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "rel.db").exists()
    listed = sagakit("list", "--json", cwd=tmp_path, env=_env(SAGAKIT_DB="sqlite:///rel.db"))
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 2


# -- queries ----------------------------------------------------------------------------


def test_list_json_and_table(demo_db: str) -> None:
    result = sagakit("list", "--json", "--db", demo_db)
    assert result.returncode == 0, result.stderr
    items = json.loads(result.stdout)
    assert isinstance(items, list) and len(items) == DEMO_SAGAS
    for item in items:
        assert {"saga_id", "saga_type", "status", "created_at", "updated_at", "reason"} <= set(item)
        assert item["saga_type"] == "order_fulfillment"
        assert item["status"] in ("completed", "failed")
        assert is_iso_utc(item["created_at"]) and is_iso_utc(item["updated_at"])
        assert (item["reason"] is None) == (item["status"] == "completed")

    failed = json.loads(sagakit("list", "--status", "failed", "--json", "--db", demo_db).stdout)
    assert failed and all(i["status"] == "failed" for i in failed)
    assert len(json.loads(sagakit("list", "--limit", "5", "--json", "--db", demo_db).stdout)) == 5
    one = items[0]
    by_correlation = sagakit(
        "list", "--correlation-id", one["correlation_id"], "--type", "order_fulfillment",
        "--json", "--db", demo_db,
    )  # fmt: skip
    assert [i["saga_id"] for i in json.loads(by_correlation.stdout)] == [one["saga_id"]]

    table = sagakit("list", "--db", demo_db)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["SAGA", "ID"]
    assert sum(1 for line in lines if line.split()[0] in {i["saga_id"] for i in items}) == 30
    status_column = lines[0].index("STATUS")
    assert all(
        line[status_column:].split()[0] in ("completed", "failed") for line in lines[1:-1]
    )  # the table is aligned


def test_show_json_shape(demo_db: str) -> None:
    failed = json.loads(sagakit("list", "--status", "failed", "--json", "--db", demo_db).stdout)
    saga_id = failed[0]["saga_id"]
    result = sagakit("show", saga_id, "--json", "--db", demo_db)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert {
        "saga_id", "saga_type", "version", "status", "reason", "stuck_step", "correlation_id",
        "created_at", "updated_at", "data", "steps", "history",
    } <= set(shown)  # fmt: skip
    assert shown["saga_id"] == saga_id and shown["version"] == 1
    assert shown["fingerprint"].startswith("v2:")
    assert shown["status"] == "failed" and "card declined" in shown["reason"]
    assert shown["stuck_step"] is None
    assert shown["data"]["card"] == "tok_declined"
    assert is_iso_utc(shown["created_at"]) and is_iso_utc(shown["updated_at"])
    steps = {s["name"]: s for s in shown["steps"]}
    assert list(steps) == [
        "reserve_inventory", "process_payment", "create_shipment", "send_confirmation",
    ]  # fmt: skip
    for step in shown["steps"]:
        assert {"name", "status", "attempts", "result", "error", "compensation"} <= set(step)
    assert steps["reserve_inventory"]["status"] == "compensated"
    assert steps["reserve_inventory"]["compensation"]["status"] == "done"
    assert set(steps["reserve_inventory"]["compensation"]) >= {"status", "attempts", "error"}
    assert steps["process_payment"]["status"] == "failed"
    assert steps["process_payment"]["error"] == "card declined"
    assert steps["process_payment"]["compensation"] is None
    assert shown["history"]
    for entry in shown["history"]:
        assert {"at", "kind", "step", "phase", "attempt", "detail"} <= set(entry)
        assert is_iso_utc(entry["at"])
    assert shown["history"][0]["kind"] == "created"

    history = sagakit("history", saga_id, "--json", "--db", demo_db)
    assert history.returncode == 0, history.stderr
    assert json.loads(history.stdout) == shown["history"]

    human = sagakit("show", saga_id, "--db", demo_db)
    assert human.returncode == 0, human.stderr
    assert saga_id in human.stdout and "process_payment" in human.stdout
    assert "card declined" in human.stdout
    human_history = sagakit("history", saga_id, "--db", demo_db)
    assert human_history.returncode == 0 and "dispatched" in human_history.stdout


def test_dead_letters(demo_db: str) -> None:
    result = sagakit("dead-letters", "--json", "--db", demo_db)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    table = sagakit("dead-letters", "--db", demo_db)
    assert table.returncode == 0 and "REASON" in table.stdout


# -- operator commands refused ----------------------------------------------------------


def test_abort_of_a_completed_saga_is_refused(demo_db: str) -> None:
    done = json.loads(sagakit("list", "--status", "completed", "--json", "--db", demo_db).stdout)
    result = sagakit("abort", done[0]["saga_id"], "--reason", "test", "--db", demo_db)
    assert "completed" in one_line_error(result)


def test_retry_and_resolve_of_an_instance_that_is_not_stuck_are_refused(demo_db: str) -> None:
    failed = json.loads(sagakit("list", "--status", "failed", "--json", "--db", demo_db).stdout)
    saga_id = failed[0]["saga_id"]
    retry = sagakit("retry", saga_id, "--reason", "test", "--by", "ops", "--db", demo_db)
    assert "not stuck" in one_line_error(retry)
    resolve = sagakit("resolve", saga_id, "process_payment", "--reason", "t", "--db", demo_db)
    assert "not stuck" in one_line_error(resolve)


# -- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["list"],
        ["show", "x"],
        ["history", "x"],
        ["dead-letters"],
        ["abort", "x", "--reason", "r"],
        ["retry", "x", "--reason", "r"],
        ["resolve", "x", "step", "--reason", "r"],
    ],
)
def test_a_missing_database_is_an_error_and_is_not_created(
    tmp_path: Path, command: list[str]
) -> None:
    db = tmp_path / "missing.db"
    line = one_line_error(sagakit(*command, "--db", url(db)))
    assert "not found" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", ["mysql://x", "sqlite://", "nonsense"])
def test_a_bad_url_is_a_one_line_error(bad: str) -> None:
    one_line_error(sagakit("list", "--db", bad))


def test_an_unknown_saga_is_a_one_line_error(demo_db: str) -> None:
    assert "no saga instance" in one_line_error(sagakit("show", "no-such-id", "--db", demo_db))
    one_line_error(sagakit("history", "no-such-id", "--db", demo_db))
    one_line_error(sagakit("abort", "no-such-id", "--reason", "r", "--db", demo_db))


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["frobnicate"],
        ["demo", "--sagas", "-1"],
        ["demo", "--fail-rate", "2"],
        ["demo", "--fail-rate", "-0.1"],
        ["demo", "--concurrency", "0"],
        ["list", "--limit", "0"],
        ["list", "--status", "nope"],
        ["abort", "x"],
        ["worker", "--app", "no-colon"],
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, command: list[str]) -> None:
    result = sagakit(*command, "--db", url(tmp_path / "u.db")) if command else sagakit()
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "usage:" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_version() -> None:
    result = sagakit("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("sagakit ")


# -- the worker -------------------------------------------------------------------------

READY = "stop with Ctrl-C or SIGTERM"


def test_one_worker_per_database_and_sigterm_stops_it(
    tmp_path: Path, background: Callable[..., Background]
) -> None:
    db = url(tmp_path / "w.db")
    first = background("worker", "--app", "sagakit.examples.orders:app", "--db", db)
    first.wait_for_line(READY, 20)

    second = sagakit("worker", "--app", "sagakit.examples.orders:app", "--db", db)
    assert "owned by a running worker" in one_line_error(second)
    demo = sagakit("demo", "--sagas", "1", "--db", db)
    assert demo.returncode == 1 and "Traceback" not in demo.stderr
    assert demo.stderr.splitlines()[-1].startswith("sagakit: error: ")
    assert "owned by a running worker" in demo.stderr

    began = time.monotonic()
    assert first.terminate() == 0, first.stderr
    assert time.monotonic() - began < 10
    assert "stopped" in first.stderr and "Traceback" not in first.stderr


def test_worker_with_a_bad_app_is_a_one_line_error(tmp_path: Path) -> None:
    db = url(tmp_path / "w.db")
    assert "cannot import" in one_line_error(sagakit("worker", "--app", "nope_x:app", "--db", db))
    not_app = sagakit("worker", "--app", "sagakit.examples.orders:order_saga", "--db", db)
    assert "not a sagakit.App" in one_line_error(not_app)


SLOW_APP = """
    import asyncio

    from sagakit import App, RetryPolicy, Saga


    async def wait_forever(ctx):
        await asyncio.sleep(60)


    async def undo(ctx):
        return None


    slow_saga = (
        Saga("slow")
        .local(
            "hang",
            wait_forever,
            compensation=undo,
            timeout=1.0,
            retry=RetryPolicy(max_attempts=1000, initial_delay=0.1, backoff=1.0, jitter=0.0),
        )
        .build()
    )
    app = App(sagas=[slow_saga])
"""

STARTER = """
    import asyncio
    import sys

    from sagakit import Worker, open_store
    from slowapp import app, slow_saga


    async def main(url):
        store = open_store(url, owner=True)
        try:
            async with Worker(app, store) as worker:
                handle = await worker.client.start(slow_saga, {"n": 1})
            print(handle.saga_id, flush=True)
        finally:
            await store.close()


    asyncio.run(main(sys.argv[1]))
"""


def test_abort_with_wait_against_a_running_worker(
    tmp_path: Path, background: Callable[..., Background]
) -> None:
    (tmp_path / "slowapp.py").write_text(textwrap.dedent(SLOW_APP))
    (tmp_path / "starter.py").write_text(textwrap.dedent(STARTER))
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    env = _env(PYTHONPATH=path)
    db = url(tmp_path / "ops.db")

    # Start one instance (its worker stops at once), then let the CLI's worker run it.
    started = subprocess.run(
        [sys.executable, str(tmp_path / "starter.py"), db],
        capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT, check=False,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    saga_id = started.stdout.strip()

    worker = background("worker", "--app", "slowapp:app", "--db", db, env=env)
    worker.wait_for_line(READY, 20)

    def show() -> dict[str, object]:
        result = sagakit("show", saga_id, "--json", "--db", db)
        assert result.returncode == 0, result.stderr
        shown: dict[str, object] = json.loads(result.stdout)
        return shown

    assert show()["status"] == "pending"  # the step keeps timing out and being retried

    aborted = sagakit(
        "abort", saga_id, "--reason", "customer cancelled", "--by", "alice", "--wait",
        "--timeout", "20", "--db", db,
    )  # fmt: skip
    assert aborted.returncode == 0, aborted.stderr
    assert "applied" in aborted.stdout
    assert show()["status"] in ("compensating", "failed")

    # The abort applies at once; the attempt in flight is awaited until its own timeout (1 s),
    # then the step is compensated and the instance fails.
    wait_until(lambda: show()["status"] == "failed", 20, "the aborted saga to fail")
    shown = show()
    assert "customer cancelled" in str(shown["reason"])
    history = shown["history"]
    assert isinstance(history, list)
    operator = [e for e in history if e["kind"] == "operator"]
    assert len(operator) == 1 and operator[0]["detail"]["by"] == "alice", history

    again = sagakit("abort", saga_id, "--reason", "twice", "--db", db)
    assert "failed" in one_line_error(again)

    assert worker.terminate() == 0, worker.stderr


# -- queued starts and definitions (Semantics 1, 11, 15) --------------------------------

GREET_APP = """
    from sagakit import App, RetryPolicy, Saga

    greet = Saga("greet").remote(
        "hello", participant="nobody", command="{command}", compensation="unhello",
        retry=RetryPolicy(max_attempts=1),
    )
    app = App(sagas=[greet])
"""

GREET_STARTER = """
    import asyncio
    import sys

    from sagakit import Client, MemoryTransport, Worker, open_store
    from greet_app import app, greet


    async def swallow(body):  # "nobody" takes the command and never answers
        return None


    async def main(url, how):
        if how == "queued":  # a client with no worker in its process
            store = open_store(url, create=True)
            try:
                handle = await Client(store).start(greet, {"who": "ann"}, key="k1")
            finally:
                await store.close()
        else:
            store = open_store(url, owner=True)
            transport = MemoryTransport()
            await transport.subscribe("nobody", swallow)
            try:
                async with Worker(app, store, transport) as worker:
                    handle = await worker.client.start(greet, {"who": "bob"})
            finally:
                await store.close()
        print(handle.saga_id, flush=True)


    asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def greet_env(tmp_path: Path, command: str = "hi") -> dict[str, str]:
    (tmp_path / "greet_app.py").write_text(textwrap.dedent(GREET_APP).format(command=command))
    (tmp_path / "greet_starter.py").write_text(textwrap.dedent(GREET_STARTER))
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    return _env(PYTHONPATH=path)


def greet_start(tmp_path: Path, db: str, how: str, env: dict[str, str]) -> str:
    started = subprocess.run(
        [sys.executable, str(tmp_path / "greet_starter.py"), db, how],
        capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT, check=False,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    return started.stdout.strip()


def test_a_queued_start_is_listed_shown_and_aborted_by_its_id(tmp_path: Path) -> None:
    env = greet_env(tmp_path)
    db = url(tmp_path / "q.db")
    saga_id = greet_start(tmp_path, db, "queued", env)

    listed = sagakit("list", "--json", "--db", db)
    assert listed.returncode == 0, listed.stderr
    [entry] = json.loads(listed.stdout)
    assert (entry["saga_id"], entry["saga_type"], entry["status"]) == (saga_id, "greet", "queued")
    assert entry["idempotency_key"] == "k1" and "no worker is running" in entry["stalled"]
    table = sagakit("list", "--db", db)
    assert "queued" in table.stdout and "(0 instance(s), 1 queued start(s))" in table.stdout
    only = sagakit("list", "--status", "queued", "--db", db)
    assert saga_id in only.stdout and "(1 queued start(s))" in only.stdout
    assert saga_id not in sagakit("list", "--status", "pending", "--db", db).stdout

    shown = sagakit("show", saga_id, "--json", "--db", db)
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert (detail["status"], detail["data"]) == ("queued", {"who": "ann"})
    assert "queued" in sagakit("show", saga_id, "--db", db).stdout

    aborted = sagakit("abort", saga_id, "--reason", "ordered twice", "--by", "alice", "--db", db)
    assert aborted.returncode == 0, aborted.stderr
    assert "queued start is cancelled" in aborted.stdout
    after = json.loads(sagakit("show", saga_id, "--json", "--db", db).stdout)
    assert after["status"] == "refused"
    assert after["reason"] == "aborted before it started: ordered twice (by alice)"
    assert json.loads(sagakit("list", "--json", "--db", db).stdout) == []
    again = sagakit("abort", saga_id, "--reason", "twice", "--db", db)
    assert "never started" in one_line_error(again)


def test_a_worker_with_other_steps_than_unfinished_instances_is_refused(tmp_path: Path) -> None:
    db = url(tmp_path / "d.db")
    saga_id = greet_start(tmp_path, db, "worker", greet_env(tmp_path, command="hi"))
    changed = greet_env(tmp_path, command="hello")  # same name and version, other steps
    refused = sagakit("worker", "--app", "greet_app:app", "--db", db, env=changed)
    error = one_line_error(refused)
    assert "saga 'greet' v1 has other steps" in error and "new version" in error
    shown = json.loads(sagakit("show", saga_id, "--json", "--db", db).stdout)
    assert shown["status"] == "pending"


# -- workers and the worker's log -------------------------------------------------------

DECLINING_APP = """
    from sagakit import App, Saga, StepFailed


    async def reserve(ctx):
        return {"held": 1}


    async def release(ctx):
        return None


    async def charge(ctx):
        raise StepFailed("card declined")


    async def refund(ctx):
        return None


    declining = (
        Saga("declining")
        .local("reserve", reserve, compensation=release)
        .local("charge", charge, compensation=refund)
        .build()
    )
    app = App(sagas=[declining])
"""

QUEUE_START = """
    import asyncio
    import sys

    from sagakit import Client, open_store
    from declining import declining


    async def main(url):
        store = open_store(url, create=True)
        try:
            handle = await Client(store).start(declining, {"n": 1}, correlation_id="order-7")
            print(handle.saga_id, flush=True)
        finally:
            await store.close()


    asyncio.run(main(sys.argv[1]))
"""


def test_workers_and_the_worker_s_json_log(
    tmp_path: Path, background: Callable[..., Background]
) -> None:
    (tmp_path / "declining.py").write_text(textwrap.dedent(DECLINING_APP))
    (tmp_path / "queue_start.py").write_text(textwrap.dedent(QUEUE_START))
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    env = _env(PYTHONPATH=path)
    db = url(tmp_path / "logs.db")
    queued = subprocess.run(
        [sys.executable, str(tmp_path / "queue_start.py"), db],
        capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT, check=False,
    )  # fmt: skip
    assert queued.returncode == 0, queued.stderr
    saga_id = queued.stdout.strip()
    empty = sagakit("workers", "--json", "--db", db)
    assert empty.returncode == 0 and json.loads(empty.stdout) == []

    worker = background(
        "worker", "--app", "declining:app", "--db", db, "--log-format", "json", env=env
    )
    worker.wait_for_line(READY, 20)
    worker.wait_for_line("failed, every completed step compensated", 20)

    [alive] = json.loads(sagakit("workers", "--json", "--db", db).stdout)
    assert alive["state"] == "alive" and alive["alive"] is True and alive["owned"] == 0
    assert [d["name"] for d in alive["definitions"]] == ["declining"]
    assert alive["definitions"][0]["version"] == 1 and alive["pid"] > 0
    assert is_iso_utc(alive["started_at"]) and alive["stopped_at"] is None
    table = sagakit("workers", "--db", db)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:2] == ["WORKER", "STATE"]
    assert alive["worker_id"] in table.stdout and "declining v1" in table.stdout
    [listed] = json.loads(sagakit("list", "--json", "--db", db).stdout)
    assert listed["owner"] == alive["worker_id"]
    assert (
        f"owner               {alive['worker_id']}" in sagakit("show", saga_id, "--db", db).stdout
    )

    assert worker.terminate() == 0, worker.stderr
    [stopped] = json.loads(sagakit("workers", "--json", "--db", db).stdout)
    assert stopped["state"] == "stopped" and is_iso_utc(stopped["stopped_at"])

    # Every line on stderr is one JSON object; the saga's lines carry its fields.
    logged = [json.loads(line) for line in worker.stderr.splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in logged)
    about = [line for line in logged if line.get("saga_id") == saga_id]
    assert [(line["level"], line["event"]) for line in about] == [
        ("WARNING", "status"),
        ("WARNING", "status"),
    ]
    compensating = about[0]
    assert compensating["logger"] == "sagakit.saga"
    assert compensating["saga_type"] == "declining"
    assert compensating["correlation_id"] == "order-7"
    assert compensating["reason"] == "step 'charge' failed: card declined"
    assert any(READY in line["message"] for line in logged)


def test_workers_of_a_missing_database_is_a_one_line_error(tmp_path: Path) -> None:
    missing = sagakit("workers", "--db", url(tmp_path / "none.db"))
    assert "database file not found" in one_line_error(missing)
    assert list(tmp_path.iterdir()) == []
