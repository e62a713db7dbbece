"""The operator commands: ``abort``, ``retry`` and ``resolve``, optionally waiting until a
worker has applied them. ``abort`` of a start still queued cancels it at once."""

from __future__ import annotations

import argparse
import sys

from sagakit.cli.common import CliError, db_url, reader, run
from sagakit.cli.render import emit, print_json
from sagakit.errors import CommandRefused


def cmd_operator(args: argparse.Namespace) -> int:
    return run(
        _operate(
            db_url(args),
            str(args.operation),
            str(args.saga_id),
            step=str(args.step) if args.operation == "resolve" else None,
            reason=str(args.reason),
            by=str(args.by),
            wait=bool(args.wait),
            wait_timeout=float(args.timeout),
            as_json=bool(args.json),
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
    as_json: bool,
) -> int:
    async with reader(url) as client:
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
        if handle.cancelled_start:
            if as_json:
                print_json({"command": handle.id, "saga_id": saga_id, "cancelled_start": True})
            else:
                cancelled = "its queued start is cancelled; no worker will start it"
                emit(f"abort of saga {saga_id}: {cancelled}")
            return 0
        if not as_json:
            emit(f"{operation} of saga {saga_id} accepted (command {handle.id})")
        if not wait:
            if as_json:
                print_json({"command": handle.id, "saga_id": saga_id, "applied": False})
            else:
                print("a worker running on this database will apply it", file=sys.stderr)
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
    if as_json:
        print_json(
            {
                "command": handle.id,
                "saga_id": saga_id,
                "applied": True,
                "status": instance.status.value,
            }
        )
    else:
        emit(f"{operation} of saga {saga_id} applied: the saga is {instance.status.value}")
    return 0
