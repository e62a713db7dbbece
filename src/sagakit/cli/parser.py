"""The command line's grammar: every command, its options and their types, and the handler
each one runs (a ``cmd_*`` function of its command group's module)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import sagakit
from sagakit import SagaStatus
from sagakit.cli.common import DEFAULT_WAIT_TIMEOUT, ENV_DB, PROG
from sagakit.cli.definitions import cmd_describe
from sagakit.cli.demo import cmd_demo
from sagakit.cli.inspection import cmd_dead_letters, cmd_history, cmd_list, cmd_show
from sagakit.cli.maintenance import cmd_migrate, cmd_purge
from sagakit.cli.operations import cmd_operator
from sagakit.cli.render import QUEUED
from sagakit.cli.starting import cmd_start
from sagakit.cli.worker import cmd_worker
from sagakit.encoding import JSON
from sagakit.retention import parse_duration
from sagakit.storage import DEFAULT_URL


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run, inspect and operate sagas.",
        epilog=f"The database URL defaults to ${ENV_DB}, else {DEFAULT_URL}. "
        "Exit codes: 0 ok, 1 error or refused, 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {sagakit.__version__}")
    parser.add_argument("--db", metavar="URL", default=None, help=argparse.SUPPRESS)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db",
        metavar="URL",
        default=argparse.SUPPRESS,
        help=f"database URL: sqlite:///relative.db, sqlite:////absolute/path.db or "
        f"postgresql://user@host/db (default: ${ENV_DB}, else {DEFAULT_URL})",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON instead of text")
    wide = argparse.ArgumentParser(add_help=False)
    wide.add_argument(
        "--wide",
        action="store_true",
        help="on a terminal, print whole lines instead of fitting its width",
    )

    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        parents=[common, as_json],
        help="run the order-fulfillment example saga N times and check the ledgers",
        description="Run the order-fulfillment saga N times in this process (worker, "
        "participants and store together), finish whatever an earlier run left, and check "
        "the ledgers of every order in the database. Progress goes to stderr.",
    )
    demo.add_argument(
        "--sagas",
        type=_non_negative_int,
        default=100,
        metavar="N",
        help="new sagas to start (default 100; 0 only finishes what is there)",
    )
    demo.add_argument(
        "--fail-rate",
        type=_fraction,
        default=0.2,
        metavar="F",
        help="share of orders paid with a declined card, 0..1 (default 0.2)",
    )
    demo.add_argument(
        "--concurrency",
        type=_positive_int,
        default=16,
        metavar="C",
        help="sagas in flight at once (default 16)",
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="S",
        help="seed for the choice of declined cards (default: random)",
    )
    demo.set_defaults(handler=cmd_demo)

    worker = commands.add_parser(
        "worker",
        parents=[common],
        help="run an app's sagas and participants until SIGINT or SIGTERM",
        description="Import an App and run a worker for it on the database until SIGINT or "
        "SIGTERM, then stop cleanly. One worker per SQLite file.",
    )
    worker.add_argument(
        "--app",
        required=True,
        type=_app_ref,
        metavar="MODULE:ATTR",
        help="the App to run, e.g. sagakit.examples.orders:app",
    )
    worker.add_argument(
        "--lease",
        type=_positive_float,
        default=10.0,
        metavar="SECONDS",
        help="lease length: another worker takes over this one's sagas this long after it "
        "dies (default 10)",
    )
    worker.add_argument(
        "--retention",
        type=_duration,
        default=None,
        metavar="AGE",
        help="purge completed and failed sagas older than AGE (e.g. 30d) every hour",
    )
    worker.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level on stderr (default INFO)",
    )
    worker.set_defaults(handler=cmd_worker)

    start = commands.add_parser(
        "start",
        parents=[common, as_json],
        help="start a saga by its type, queued for a worker",
        description="Start a saga of type TYPE with --data as its input. The CLI runs no "
        "worker: the start is queued in the database and a worker running TYPE starts it "
        "(the newest version it runs, unless --saga-version). A --key already used answers "
        "with its saga at once (the same key with other data is refused).",
    )
    start.add_argument("saga_type", metavar="TYPE", help="the saga type (the saga's name)")
    start.add_argument(
        "--data",
        required=True,
        type=_json_data,
        metavar="JSON",
        help="the saga's input: JSON text, or @FILE to read it from a file",
    )
    start.add_argument("--key", metavar="K", default=None, help="idempotency key")
    start.add_argument("--correlation-id", metavar="ID", default=None, help="correlation id")
    start.add_argument(
        "--saga-version",
        type=_positive_int,
        default=None,
        metavar="N",
        help="the definition version (default: the newest the worker runs)",
    )
    start.add_argument(
        "--wait",
        action="store_true",
        help="wait until the saga is completed, failed or stuck (exit 1 unless completed)",
    )
    start.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_WAIT_TIMEOUT,
        metavar="SECONDS",
        help=f"with --wait, give up after this long (default {DEFAULT_WAIT_TIMEOUT:g})",
    )
    start.set_defaults(handler=cmd_start)

    listing = commands.add_parser(
        "list",
        parents=[common, as_json, wide],
        help="list saga instances, most recently updated first",
        description="List saga instances, most recently updated first, after the starts "
        "still queued for a worker (status queued), oldest first.",
    )
    listing.add_argument(
        "--status",
        choices=[QUEUED, *(s.value for s in SagaStatus)],
        help="only instances with this status (queued: only queued starts)",
    )
    listing.add_argument(
        "--type", dest="saga_type", metavar="T", help="only instances of this saga type"
    )
    listing.add_argument(
        "--correlation-id", metavar="ID", help="only instances with this correlation id"
    )
    listing.add_argument(
        "--limit",
        type=_positive_int,
        default=100,
        metavar="N",
        help="at most N instances (default 100)",
    )
    listing.set_defaults(handler=cmd_list)

    show = commands.add_parser(
        "show",
        parents=[common, as_json, wide],
        help="show one instance (or queued start): status, data, steps and history",
        description="Show one saga instance: status, data, steps and history. For the id of "
        "a start still queued (or refused), show that start.",
    )
    show.add_argument("saga_id", metavar="SAGA_ID")
    show.set_defaults(handler=cmd_show)

    history = commands.add_parser(
        "history",
        parents=[common, as_json, wide],
        help="show the history of one instance",
        description="Show the history of one saga instance, oldest first.",
    )
    history.add_argument("saga_id", metavar="SAGA_ID")
    history.set_defaults(handler=cmd_history)

    operator = argparse.ArgumentParser(add_help=False)
    operator.add_argument(
        "--reason", required=True, metavar="TEXT", help="why (recorded in the instance's history)"
    )
    operator.add_argument(
        "--wait", action="store_true", help="wait until a worker has applied the command"
    )
    operator.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_WAIT_TIMEOUT,
        metavar="SECONDS",
        help=f"with --wait, give up after this long (default {DEFAULT_WAIT_TIMEOUT:g})",
    )
    operator.add_argument(
        "--by",
        default=os.environ.get("USER") or "operator",
        metavar="NAME",
        help="who gives the command (default: $USER, else 'operator')",
    )

    abort = commands.add_parser(
        "abort",
        parents=[common, operator, as_json],
        help="compensate an instance now, or cancel a queued start",
        description="Abort a running or stuck instance: compensate what it did. Refused for "
        "an instance that is completed, failed, already compensating, stuck compensating, "
        "or past its point of no return. For a start still queued (no worker has applied "
        "it), cancel it at once: no worker will start it.",
    )
    abort.add_argument("saga_id", metavar="SAGA_ID")
    abort.set_defaults(handler=cmd_operator, operation="abort")

    retry = commands.add_parser(
        "retry",
        parents=[common, operator, as_json],
        help="give the step a stuck instance waits on a fresh attempt budget",
        description="Retry a stuck instance: the step (or compensation) it is stuck on gets "
        "a fresh attempt budget. Refused unless the instance is stuck.",
    )
    retry.add_argument("saga_id", metavar="SAGA_ID")
    retry.set_defaults(handler=cmd_operator, operation="retry")

    resolve = commands.add_parser(
        "resolve",
        parents=[common, operator, as_json],
        help="declare by hand that the step a stuck instance waits on is settled",
        description="Resolve a stuck instance: declare by hand that STEP (or its "
        "compensation), the one the instance is stuck on, is settled, and carry on. Refused "
        "unless the instance is stuck on STEP.",
    )
    resolve.add_argument("saga_id", metavar="SAGA_ID")
    resolve.add_argument("step", metavar="STEP")
    resolve.set_defaults(handler=cmd_operator, operation="resolve")

    letters = commands.add_parser(
        "dead-letters",
        parents=[common, as_json, wide],
        help="list messages that were rejected, newest first",
        description="List dead-lettered messages (malformed, unknown or oversized), newest first.",
    )
    letters.add_argument(
        "--limit",
        type=_positive_int,
        default=100,
        metavar="N",
        help="at most N messages (default 100)",
    )
    letters.set_defaults(handler=cmd_dead_letters)

    describe = commands.add_parser(
        "describe",
        parents=[common, as_json, wide],
        help="show a saga definition: steps, kinds, pivot, timeouts, policies, diagram",
        description="Show the newest version (or --saga-version) of the saga definition "
        "TYPE: its steps in order, each one's kind, handlers, timeout and retry policy, its "
        "compensation, the pivot and the deadline; or its Mermaid flowchart (--mermaid). "
        "From the app with --app, else from what workers recorded in the database.",
    )
    describe.add_argument("saga_type", metavar="TYPE", help="the saga type (the saga's name)")
    describe.add_argument(
        "--saga-version", type=_positive_int, default=None, metavar="N", help="this version"
    )
    describe.add_argument(
        "--mermaid", action="store_true", help="print the Mermaid flowchart instead"
    )
    describe.add_argument(
        "--app",
        type=_app_ref,
        default=None,
        metavar="MODULE:ATTR",
        help="read the definition from this App (imported, as `worker` does)",
    )
    describe.set_defaults(handler=cmd_describe)

    migrate = commands.add_parser(
        "migrate",
        parents=[common, as_json],
        help="create or upgrade the database schema",
        description="Apply every schema migration not applied yet (PostgreSQL); create the "
        "schema of a SQLite file. Safe to run again, and from several processes at once.",
    )
    migrate.set_defaults(handler=cmd_migrate)

    purge = commands.add_parser(
        "purge",
        parents=[common, as_json],
        help="delete completed and failed sagas older than an age",
        description="Delete completed and failed sagas (never stuck or running ones) that "
        "finished more than AGE ago, in bounded batches, with their history. Their idempotency "
        "keys, and participants' inbox keys, are kept longer (--keys-older-than), so a purge "
        "never lets a duplicate start or effect through. Ages: 90s, 45m, 12h, 30d, 2w, 1d12h.",
    )
    purge.add_argument(
        "--older-than", required=True, type=_duration, metavar="AGE", help="instance age"
    )
    purge.add_argument(
        "--keys-older-than",
        type=_duration,
        default=None,
        metavar="AGE",
        help="key age (default: AGE + 1d; never less)",
    )
    purge.add_argument(
        "--archive",
        metavar="FILE",
        default=None,
        help="append each purged instance and its history to FILE as a JSON line first",
    )
    purge.add_argument(
        "--batch", type=_positive_int, default=500, metavar="N", help="instances per batch"
    )
    purge.set_defaults(handler=cmd_purge)
    return parser


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _fraction(text: str) -> float:
    value = _float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


def _positive_float(text: str) -> float:
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _json_data(text: str) -> JSON:
    source = "--data"
    if text.startswith("@"):
        source = text[1:]
        try:
            text = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise argparse.ArgumentTypeError(f"cannot read {source}: {exc}") from None
    try:
        value: JSON = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{source} is not JSON: {exc}") from None
    return value


def _app_ref(text: str) -> str:
    module, sep, attr = text.partition(":")
    if not sep or not module or not attr:
        raise argparse.ArgumentTypeError(f"expected MODULE:ATTR, not {text!r}")
    return text
