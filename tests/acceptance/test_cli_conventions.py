"""Acceptance tests of the CLI's conventions and its newer commands, in a subprocess: ``start``,
``describe``, ``--json`` everywhere, one-line errors for bad input (and nothing changed), and
output cut short by its reader.

Every wait is a condition polled against a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_cli import (  # the helpers of the CLI's first acceptance tests
    READY,
    Background,
    _env,
    one_line_error,
    sagakit,
    url,
)

pytestmark = pytest.mark.timeout(90)

ORDERS = "sagakit.examples.orders:app"


@pytest.fixture
def background() -> Iterator[Callable[..., Background]]:
    started: list[Background] = []

    def start(*args: str) -> Background:
        process = Background([sys.executable, "-m", "sagakit", *args], _env())
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database holding finished demo sagas, completed and failed."""
    db = url(tmp_path_factory.mktemp("demo") / "demo.db")
    result = sagakit("demo", "--sagas", "12", "--fail-rate", "0.5", "--seed", "3", "--db", db)
    assert result.returncode == 0, result.stderr
    return db


def order(order_id: str, card: str = "tok_visa") -> str:
    return json.dumps(
        {"order_id": order_id, "sku": "SKU-1", "quantity": 1, "amount_cents": 500, "card": card}
    )


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- start --------------------------------------------------------------------------------


def test_start_is_queued_for_a_worker_and_waits_for_its_outcome(
    tmp_path: Path, background: Callable[..., Background]
) -> None:
    db = url(tmp_path / "s.db")
    assert sagakit("migrate", "--json", "--db", db).returncode == 0
    queued = sagakit("start", "order_fulfillment", "--data", order("o-1"), "--key", "o-1",
                     "--json", "--db", db)  # fmt: skip
    assert queued.returncode == 0, queued.stderr
    first = json.loads(queued.stdout)
    assert first["queued"] is True and first["saga_type"] == "order_fulfillment"
    listed = json.loads(sagakit("list", "--json", "--db", db).stdout)
    assert [(i["saga_id"], i["status"], i["version"]) for i in listed] == [
        (first["saga_id"], "queued", None)  # not started yet, by name: the newest version
    ]

    worker = background("worker", "--app", ORDERS, "--db", db)
    worker.wait_for_line(READY, 20)
    done = sagakit("start", "order_fulfillment", "--data", order("o-1"), "--key", "o-1",
                   "--wait", "--json", "--db", db)  # fmt: skip
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["status"] == "completed" and shown["saga_id"] == first["saga_id"]

    declined = sagakit("start", "order_fulfillment", "--data", order("o-2", "tok_declined"),
                       "--wait", "--db", db)  # fmt: skip
    assert declined.returncode == 1 and "is failed" in declined.stdout
    assert "card declined" in one_line_error(declined)

    # The same key with other data is refused at once, and nothing is queued.
    conflict = sagakit("start", "order_fulfillment", "--data", order("o-9"), "--key", "o-1",
                       "--db", db)  # fmt: skip
    assert "different input" in one_line_error(conflict)
    assert worker.terminate() == 0, worker.stderr


@pytest.mark.parametrize(
    "data", ["{bad", "@/no/such/file.json", ""], ids=["not-json", "no-file", "empty"]
)
def test_start_with_bad_data_is_a_usage_error_that_changes_nothing(
    tmp_path: Path, data: str
) -> None:
    db = tmp_path / "s.db"
    assert sagakit("migrate", "--db", url(db)).returncode == 0
    result = sagakit("start", "order_fulfillment", "--data", data, "--db", url(db))
    assert result.returncode == 2 and "--data" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert sagakit("list", "--json", "--db", url(db)).stdout.strip() == "[]"


def test_start_reads_data_from_a_file_and_never_creates_a_database(tmp_path: Path) -> None:
    (tmp_path / "order.json").write_text(order("o-1"))
    missing = tmp_path / "typo.db"
    result = sagakit("start", "order_fulfillment", "--data", f"@{tmp_path / 'order.json'}",
                     "--db", url(missing))  # fmt: skip
    assert "not found" in one_line_error(result)
    assert not missing.exists()


# -- describe -----------------------------------------------------------------------------


def test_describe_from_the_app_as_text_json_and_mermaid() -> None:
    text = sagakit("describe", "order_fulfillment", "--app", ORDERS)
    assert text.returncode == 0, text.stderr
    for word in ("reserve_inventory", "compensatable", "retriable", "inventory.release",
                 "5 attempts", "undo"):  # fmt: skip
        assert word in text.stdout, word

    as_json = json.loads(sagakit("describe", "order_fulfillment", "--app", ORDERS, "--json").stdout)
    assert as_json["name"] == "order_fulfillment" and as_json["version"] == 1
    assert [s["kind"] for s in as_json["steps"]] == [
        "compensatable", "compensatable", "compensatable", "retriable",
    ]  # fmt: skip
    assert as_json["steps"][0]["compensation"] == {
        "where": "remote",
        "participant": "inventory",
        "command": "inventory.release",
    }
    assert as_json["steps"][3]["retry"]["max_attempts"] == 10

    drawn = sagakit("describe", "order_fulfillment", "--app", ORDERS, "--mermaid")
    assert drawn.stdout.startswith("flowchart LR")
    assert "s3 --> completed((completed))" in drawn.stdout


def test_describe_errors_are_one_line(tmp_path: Path, demo_db: str) -> None:
    unknown = sagakit("describe", "nope", "--app", ORDERS)
    assert "known: order_fulfillment" in one_line_error(unknown)
    version = sagakit("describe", "order_fulfillment", "--saga-version", "7", "--app", ORDERS)
    assert "v7" in one_line_error(version)
    # Until workers record their definitions in the store, the store cannot describe one.
    assert "--app" in one_line_error(sagakit("describe", "order_fulfillment", "--db", demo_db))


# -- output -------------------------------------------------------------------------------


def test_output_cut_short_by_its_reader_is_no_error(demo_db: str) -> None:
    # As `sagakit list | head -1` once the reader has its line: the pipe is closed before
    # the command writes, so its first write finds no reader.
    for command in (["list"], ["list", "--json"]):
        proc = subprocess.Popen(
            [sys.executable, "-m", "sagakit", *command, "--db", demo_db],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(),
        )
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        err = proc.stderr.read()
        proc.stderr.close()
        assert proc.wait(60) == 0 and err == b"", err


def test_history_and_list_never_cut_a_reason_or_a_status_change(demo_db: str) -> None:
    failed = json.loads(sagakit("list", "--status", "failed", "--json", "--db", demo_db).stdout)
    saga_id = failed[0]["saga_id"]
    history = sagakit("history", saga_id, "--db", demo_db)
    assert history.returncode == 0, history.stderr
    assert "pending → compensating" in history.stdout
    assert "compensating → failed" in history.stdout
    assert "step 'process_payment' failed: card declined" in history.stdout
    assert "\x1b[" not in history.stdout  # no colour on a pipe
    listed = sagakit("list", "--status", "failed", "--db", demo_db)
    assert "step 'process_payment' failed: card declined" in listed.stdout
    wide = sagakit("show", saga_id, "--wide", "--db", demo_db)
    assert wide.returncode == 0 and "compensating → failed" in wide.stdout


@pytest.mark.parametrize(
    "command",
    [
        ["demo"],
        ["start", "t", "--data", "{}"],
        ["list"],
        ["show", "x"],
        ["history", "x"],
        ["describe", "t"],
        ["abort", "x", "--reason", "r"],
        ["retry", "x", "--reason", "r"],
        ["resolve", "x", "s", "--reason", "r"],
        ["dead-letters"],
        ["migrate"],
        ["purge", "--older-than", "1d"],
    ],
)
def test_every_command_but_the_worker_takes_json(command: list[str]) -> None:
    result = sagakit(command[0], "--help")
    assert result.returncode == 0 and "--json" in result.stdout


def test_migrate_json_and_operator_json(tmp_path: Path, demo_db: str) -> None:
    fresh = tmp_path / "fresh.db"
    migrated = sagakit("migrate", "--json", "--db", url(fresh))
    assert migrated.returncode == 0 and json.loads(migrated.stdout) == {"applied": []}
    assert fresh.exists()
    done = json.loads(sagakit("list", "--status", "completed", "--json", "--db", demo_db).stdout)
    refused = sagakit("abort", done[0]["saga_id"], "--reason", "r", "--json", "--db", demo_db)
    assert refused.stdout == "" and "completed" in one_line_error(refused)


# -- bad input: one line, exit 1, nothing changed --------------------------------------------


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("postgresql://postgres@127.0.0.1:abc/test", "port 'abc'"),
        ("postgresql://postgres@127.0.0.1/test?sslmode=bogus", "sslmode"),
        ("postgresql://postgres@[::1/test", "IPv6"),
        ("postgresql://postgres@[::1]x/test", "IPv6"),
        ("postgresql://postgres@127.0.0.1/test?connect_timeout=soon", "connect_timeout"),
    ],
)
def test_a_bad_postgresql_url_is_a_one_line_error(bad: str, says: str) -> None:
    assert says in one_line_error(sagakit("list", "--db", bad))


async def test_connect_timeout_in_a_postgresql_url_is_accepted(pg_url: str) -> None:
    with_timeout = f"{pg_url}&connect_timeout=5"
    migrated = await asyncio.to_thread(sagakit, "migrate", "--json", "--db", with_timeout)
    assert migrated.returncode == 0, migrated.stderr
    listed = await asyncio.to_thread(sagakit, "list", "--json", "--db", with_timeout)
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr


def test_purge_into_a_missing_folder_is_a_one_line_error(
    tmp_path: Path,
    demo_db: str,
) -> None:
    archive = tmp_path / "no" / "such" / "archive.jsonl"
    result = sagakit("purge", "--older-than", "1s", "--archive", str(archive), "--db", demo_db)
    assert "no folder" in one_line_error(result)
    assert files(tmp_path) == []
    # A missing database leaves no empty archive behind either.
    result = sagakit("purge", "--older-than", "1s", "--archive", str(tmp_path / "a.jsonl"),
                     "--db", url(tmp_path / "missing.db"))  # fmt: skip
    assert "not found" in one_line_error(result)
    assert files(tmp_path) == []


def test_a_demo_under_a_held_lock_says_only_why(
    tmp_path: Path, background: Callable[..., Background]
) -> None:
    db = url(tmp_path / "held.db")
    worker = background("worker", "--app", ORDERS, "--db", db)
    worker.wait_for_line(READY, 20)
    demo = sagakit("demo", "--sagas", "1", "--db", db)
    assert "owned by a running worker" in one_line_error(demo)
    assert worker.terminate() == 0, worker.stderr
