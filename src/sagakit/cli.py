"""The ``sagakit`` command: parse -> call the client -> print.

Every command takes ``--db URL`` (default: ``$SAGAKIT_DB``, else ``sqlite:///sagakit.db``).
Read and operator commands open an existing database only; ``demo`` and ``worker`` create it.

Exit codes: 0 success; 1 an error (missing database, bad URL, unknown saga, a refused or
unapplied operator command, a demo whose ledgers or instances are not all right); 2 a usage
error. Errors are one line on stderr, never a traceback. See docs/cli.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from typing import TextIO

import sagakit
from sagakit import App, Client, HistoryEntry, SagaInstance, SagaStatus, Worker, runtime
from sagakit.errors import CommandRefused, SagakitError
from sagakit.examples.demo import run_demo
from sagakit.retention import RetentionPolicy, parse_duration
from sagakit.storage import DEFAULT_URL, open_store

PROG = "sagakit"
ENV_DB = "SAGAKIT_DB"
DEFAULT_WAIT_TIMEOUT = 30.0


class CliError(Exception):
    """A failure the CLI reports in one line and exits 1 for (not a usage error)."""


# -- entry point --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except CommandRefused as exc:
        _error(f"refused: {exc}")
        return 1
    except (SagakitError, CliError, OSError) as exc:  # OSError includes TimeoutError
        _error(str(exc) or type(exc).__name__)
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


def _error(message: str) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    print(f"{PROG}: error: {first}", file=sys.stderr, flush=True)


# -- the parser ---------------------------------------------------------------------------


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
    demo.set_defaults(handler=_cmd_demo)

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
    worker.set_defaults(handler=_cmd_worker)

    listing = commands.add_parser(
        "list",
        parents=[common, as_json],
        help="list saga instances, most recently updated first",
        description="List saga instances, most recently updated first.",
    )
    listing.add_argument(
        "--status", choices=[s.value for s in SagaStatus], help="only instances with this status"
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
    listing.set_defaults(handler=_cmd_list)

    show = commands.add_parser(
        "show",
        parents=[common, as_json],
        help="show one instance: status, data, steps and history",
        description="Show one saga instance: status, data, steps and history.",
    )
    show.add_argument("saga_id", metavar="SAGA_ID")
    show.set_defaults(handler=_cmd_show)

    history = commands.add_parser(
        "history",
        parents=[common, as_json],
        help="show the history of one instance",
        description="Show the history of one saga instance, oldest first.",
    )
    history.add_argument("saga_id", metavar="SAGA_ID")
    history.set_defaults(handler=_cmd_history)

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
        parents=[common, operator],
        help="compensate an instance now (refused past the point of no return)",
        description="Abort a running or stuck instance: compensate what it did. Refused for "
        "an instance that is completed, failed, already compensating, stuck compensating, "
        "or past its point of no return.",
    )
    abort.add_argument("saga_id", metavar="SAGA_ID")
    abort.set_defaults(handler=_cmd_operator, operation="abort")

    retry = commands.add_parser(
        "retry",
        parents=[common, operator],
        help="give the step a stuck instance waits on a fresh attempt budget",
        description="Retry a stuck instance: the step (or compensation) it is stuck on gets "
        "a fresh attempt budget. Refused unless the instance is stuck.",
    )
    retry.add_argument("saga_id", metavar="SAGA_ID")
    retry.set_defaults(handler=_cmd_operator, operation="retry")

    resolve = commands.add_parser(
        "resolve",
        parents=[common, operator],
        help="declare by hand that the step a stuck instance waits on is settled",
        description="Resolve a stuck instance: declare by hand that STEP (or its "
        "compensation), the one the instance is stuck on, is settled, and carry on. Refused "
        "unless the instance is stuck on STEP.",
    )
    resolve.add_argument("saga_id", metavar="SAGA_ID")
    resolve.add_argument("step", metavar="STEP")
    resolve.set_defaults(handler=_cmd_operator, operation="resolve")

    letters = commands.add_parser(
        "dead-letters",
        parents=[common, as_json],
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
    letters.set_defaults(handler=_cmd_dead_letters)

    migrate = commands.add_parser(
        "migrate",
        parents=[common],
        help="create or upgrade the database schema",
        description="Apply every schema migration not applied yet (PostgreSQL); create the "
        "schema of a SQLite file. Safe to run again, and from several processes at once.",
    )
    migrate.set_defaults(handler=_cmd_migrate)

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
    purge.set_defaults(handler=_cmd_purge)
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


def _app_ref(text: str) -> str:
    module, sep, attr = text.partition(":")
    if not sep or not module or not attr:
        raise argparse.ArgumentTypeError(f"expected MODULE:ATTR, not {text!r}")
    return text


def _db_url(args: argparse.Namespace) -> str:
    url = getattr(args, "db", None)
    if url:
        return str(url)
    return os.environ.get(ENV_DB) or DEFAULT_URL


def _run(coroutine: Coroutine[object, object, int]) -> int:
    return runtime.run(coroutine)


@contextlib.asynccontextmanager
async def _reader(url: str) -> AsyncIterator[Client]:
    """A client on an existing database (never creates the file)."""
    store = open_store(url, create=False)
    try:
        yield Client(store)
    finally:
        await store.close()


# -- demo ---------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    url = _db_url(args)
    sagas = int(args.sagas)
    as_json = bool(args.json)
    print(f"{PROG} demo: {sagas} new order saga(s) on {url}", file=sys.stderr, flush=True)
    summary = runtime.run(
        run_demo(
            url,
            sagas=sagas,
            fail_rate=float(args.fail_rate),
            concurrency=int(args.concurrency),
            seed=None if args.seed is None else int(args.seed),
            progress=sys.stderr,
        )
    )
    ok = (
        summary.get("ledger_ok") is True
        and _count(summary, "unsettled") == 0
        and _count(summary, "stuck") == 0
    )
    if as_json:
        _print_json(summary)
        _print_demo_summary(summary, sys.stderr)
    else:
        _print_demo_summary(summary, sys.stdout)
    return 0 if ok else 1


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


# -- worker -------------------------------------------------------------------------------


def _cmd_worker(args: argparse.Namespace) -> int:
    app = _load_app(str(args.app))
    logging.basicConfig(
        stream=sys.stderr,
        level=str(args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return _run(_worker(app, str(args.app), _db_url(args), args.lease, args.retention))


def _load_app(ref: str) -> App:
    module_name, _, attr = ref.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # like `python -m`: modules in the current directory import
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import {module_name!r}: {exc}") from exc
    except SagakitError:
        raise
    except Exception as exc:
        raise CliError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    value: object = module
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise CliError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(value, App):
        raise CliError(f"{ref} is a {type(value).__name__}, not a sagakit.App")
    return value


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


# -- queries ------------------------------------------------------------------------------


def _cmd_list(args: argparse.Namespace) -> int:
    return _run(
        _list(
            _db_url(args),
            status=args.status,
            saga_type=args.saga_type,
            correlation_id=args.correlation_id,
            limit=int(args.limit),
            as_json=bool(args.json),
        )
    )


async def _list(
    url: str,
    *,
    status: str | None,
    saga_type: str | None,
    correlation_id: str | None,
    limit: int,
    as_json: bool,
) -> int:
    async with _reader(url) as client:
        instances = await client.list(
            status=status, saga_type=saga_type, correlation_id=correlation_id, limit=limit
        )
        stalled = await client.stalled_many(instances)
    if as_json:
        _print_json(
            [
                {**_summary_json(i), "stalled": why}
                for i, why in zip(instances, stalled, strict=True)
            ]
        )
        return 0
    rows = [
        [
            i.saga_id,
            f"{i.saga_type} v{i.version}",
            i.status.value,
            _human_time(i.updated_at),
            _clip(i.status_reason or (f"not advancing: {why}" if why else ""), 60),
        ]
        for i, why in zip(instances, stalled, strict=True)
    ]
    _print_table(["SAGA ID", "TYPE", "STATUS", "UPDATED (UTC)", "REASON"], rows)
    print(f"({len(instances)} instance(s))")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    return _run(_show(_db_url(args), str(args.saga_id), as_json=bool(args.json)))


async def _show(url: str, saga_id: str, *, as_json: bool) -> int:
    async with _reader(url) as client:
        instance = await client.get(saga_id)
        history = await client.history(saga_id)
        stalled = await client.stalled(instance)
    if as_json:
        _print_json({**_detail_json(instance, history), "stalled": stalled})
        return 0
    fields = [
        ("saga", instance.saga_id),
        ("type", f"{instance.saga_type} v{instance.version}"),
        ("status", instance.status.value),
        ("reason", instance.status_reason or "-"),
        ("owner", instance.owner or "-"),
        ("not advancing", stalled or "-"),
        ("stuck step", instance.stuck_step or "-"),
        ("point of no return", instance.point_of_no_return or "-"),
        ("correlation id", instance.correlation_id),
        ("created", _human_time(instance.created_at)),
        ("updated", _human_time(instance.updated_at)),
        ("data", json.dumps(instance.data, sort_keys=True)),
    ]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        print(f"{name:<{width}}  {value}")
    print()
    print("steps:")
    step_rows = []
    for s in instance.steps:
        comp = "-"
        if s.compensation is not None:
            comp = f"{s.compensation.status.value} ({s.compensation.attempts})"
            if s.compensation.error:
                comp += f": {s.compensation.error}"
        outcome = s.error if s.error else json.dumps(s.result) if s.result is not None else ""
        step_rows.append(
            [s.name, s.status.value, str(s.attempts), _clip(outcome or "-", 50), _clip(comp, 50)]
        )
    _print_table(
        ["STEP", "STATUS", "ATTEMPTS", "RESULT / ERROR", "COMPENSATION"], step_rows, indent="  "
    )
    print()
    print("history:")
    _print_history(history, indent="  ")
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    return _run(_history(_db_url(args), str(args.saga_id), as_json=bool(args.json)))


async def _history(url: str, saga_id: str, *, as_json: bool) -> int:
    async with _reader(url) as client:
        history = await client.history(saga_id)
    if as_json:
        _print_json([_entry_json(e) for e in history])
    else:
        _print_history(history)
    return 0


def _cmd_dead_letters(args: argparse.Namespace) -> int:
    return _run(_dead_letters(_db_url(args), limit=int(args.limit), as_json=bool(args.json)))


async def _dead_letters(url: str, *, limit: int, as_json: bool) -> int:
    async with _reader(url) as client:
        letters = await client.dead_letters(limit)
    items = [
        {
            "id": letter.id,
            "at": _iso(letter.at),
            "source": letter.source,
            "reason": letter.reason,
            "body": letter.body.decode("utf-8", errors="replace"),
        }
        for letter in letters
    ]
    if as_json:
        _print_json(items)
        return 0
    rows = [
        [str(item["id"]), _human_time(letter.at), letter.source, _clip(letter.reason, 70)]
        for item, letter in zip(items, letters, strict=True)
    ]
    _print_table(["ID", "AT (UTC)", "SOURCE", "REASON"], rows)
    print(f"({len(letters)} dead letter(s))")
    return 0


# -- operator commands --------------------------------------------------------------------


def _cmd_operator(args: argparse.Namespace) -> int:
    return _run(
        _operate(
            _db_url(args),
            str(args.operation),
            str(args.saga_id),
            step=str(args.step) if args.operation == "resolve" else None,
            reason=str(args.reason),
            by=str(args.by),
            wait=bool(args.wait),
            wait_timeout=float(args.timeout),
        )
    )


async def _operate(
    url: str,
    operation: str,
    saga_id: str,
    *,
    step: str | None,
    reason: str,
    by: str,
    wait: bool,
    wait_timeout: float,
) -> int:
    async with _reader(url) as client:
        try:
            if operation == "abort":
                handle = await client.abort(saga_id, reason, by=by)
            elif operation == "retry":
                handle = await client.retry(saga_id, reason, by=by)
            else:
                assert step is not None
                handle = await client.resolve(saga_id, step, reason, by=by)
        except CommandRefused as exc:
            raise CliError(f"{operation} refused: {exc}") from exc
        print(f"{operation} of saga {saga_id} accepted (command {handle.id})", flush=True)
        if not wait:
            print("a worker running on this database will apply it", file=sys.stderr, flush=True)
            return 0
        try:
            await handle.wait(wait_timeout)
        except CommandRefused as exc:
            raise CliError(f"{operation} refused by the worker: {exc}") from exc
        except TimeoutError:
            raise CliError(
                f"command {handle.id} was not applied within {wait_timeout:g} s "
                "(is a worker running on this database?); it stays queued"
            ) from None
        instance = await client.get(saga_id)
    print(f"{operation} of saga {saga_id} applied: the saga is {instance.status.value}")
    return 0


# -- rendering ----------------------------------------------------------------------------


def _iso(timestamp: float | None) -> str | None:
    """A Unix timestamp as ISO 8601 in UTC, e.g. ``2025-01-31T12:00:00.123Z``."""
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _human_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _summary_json(instance: SagaInstance) -> dict[str, object]:
    return {
        "saga_id": instance.saga_id,
        "saga_type": instance.saga_type,
        "version": instance.version,
        "status": instance.status.value,
        "reason": instance.status_reason,
        "stuck_step": instance.stuck_step,
        "correlation_id": instance.correlation_id,
        "created_at": _iso(instance.created_at),
        "updated_at": _iso(instance.updated_at),
    }


def _detail_json(instance: SagaInstance, history: Sequence[HistoryEntry]) -> dict[str, object]:
    steps: list[object] = []
    for s in instance.steps:
        compensation: dict[str, object] | None = None
        if s.compensation is not None:
            compensation = {
                "status": s.compensation.status.value,
                "attempts": s.compensation.attempts,
                "error": s.compensation.error,
            }
        steps.append(
            {
                "name": s.name,
                "status": s.status.value,
                "attempts": s.attempts,
                "outcome_known": s.outcome_known,
                "result": s.result,
                "error": s.error,
                "compensation": compensation,
            }
        )
    return {
        **_summary_json(instance),
        "idempotency_key": instance.idempotency_key,
        "point_of_no_return": instance.point_of_no_return,
        "deadline_at": _iso(instance.deadline_at),
        "revision": instance.revision,
        "data": instance.data,
        "steps": steps,
        "history": [_entry_json(e) for e in history],
    }


def _entry_json(entry: HistoryEntry) -> dict[str, object]:
    return {
        "at": _iso(entry.at),
        "kind": entry.kind.value,
        "step": entry.step,
        "phase": entry.phase,
        "attempt": entry.attempt,
        "detail": entry.detail,
    }


def _print_history(history: Sequence[HistoryEntry], *, indent: str = "") -> None:
    rows = [
        [
            _iso(e.at) or "",
            e.kind.value,
            e.step or "-",
            e.phase or "-",
            "-" if e.attempt is None else str(e.attempt),
            _clip(json.dumps(e.detail, sort_keys=True) if e.detail else "", 70),
        ]
        for e in history
    ]
    _print_table(["AT (UTC)", "KIND", "STEP", "PHASE", "ATTEMPT", "DETAIL"], rows, indent=indent)


def _print_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, indent: str = ""
) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    for row in [list(headers), *rows]:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=True)]
        print(indent + "  ".join(cells).rstrip())


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))
    sys.stdout.flush()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


# -- schema and retention -------------------------------------------------------------------


def _cmd_migrate(args: argparse.Namespace) -> int:
    return _run(_migrate(_db_url(args)))


async def _migrate(url: str) -> int:
    if url.startswith("postgres"):
        store = open_store(url, migrate=False)
    else:
        store = open_store(url, upgrade=True)
    try:
        applied = await store.migrate()
    finally:
        await store.close()
    if applied:
        print(f"applied migration(s) {', '.join(map(str, applied))} to {url}")
    else:
        print(f"{url} is up to date")
    return 0


def _cmd_purge(args: argparse.Namespace) -> int:
    try:
        policy = RetentionPolicy.of_seconds(args.older_than, args.keys_older_than, batch=args.batch)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    if args.archive is None:
        return _run(_purge(_db_url(args), policy, None, bool(args.json)))
    with open(args.archive, "a", encoding="utf-8") as sink:
        return _run(_purge(_db_url(args), policy, sink, bool(args.json)))


async def _purge(url: str, policy: RetentionPolicy, sink: TextIO | None, as_json: bool) -> int:
    async def write(instance: SagaInstance, history: list[HistoryEntry]) -> None:
        assert sink is not None
        sink.write(json.dumps(_detail_json(instance, history), sort_keys=True) + "\n")
        # On disk before the instance is deleted: a crash mid-purge loses no archived line.
        sink.flush()
        os.fsync(sink.fileno())

    async with _reader(url) as client:
        purged, keys = await client.purge(policy, archive=write if sink else None)
    if as_json:
        print(json.dumps({"instances": purged, "keys": keys}))
    else:
        print(f"purged {purged} instance(s) and {keys} expired key(s)")
    return 0
