"""``sagakit start``: start a saga by its type's name, queued for a worker (Semantics 11)."""

from __future__ import annotations

import argparse

from sagakit import SagaStatus
from sagakit.cli.common import CliError, db_url, reader, run
from sagakit.cli.render import emit, print_json, summary_json
from sagakit.encoding import JSON


def cmd_start(args: argparse.Namespace) -> int:
    return run(
        _start(
            db_url(args),
            str(args.saga_type),
            args.data,
            key=args.key,
            correlation_id=args.correlation_id,
            version=args.saga_version,
            wait=bool(args.wait),
            wait_timeout=float(args.timeout),
            as_json=bool(args.json),
        )
    )


async def _start(
    url: str,
    saga_type: str,
    data: JSON,
    *,
    key: str | None,
    correlation_id: str | None,
    version: int | None,
    wait: bool,
    wait_timeout: float,
    as_json: bool,
) -> int:
    async with reader(url) as client:
        # The CLI runs no worker: the start is a durable command that a worker running this
        # saga type applies; a key already used answers at once (Semantics 15).
        handle = await client.start(
            saga_type, data, key=key, correlation_id=correlation_id, version=version
        )
        which = f"{saga_type}" + ("" if version is None else f" v{version}")
        if not wait:
            if as_json:
                print_json(
                    {"saga_id": handle.saga_id, "saga_type": saga_type, "queued": handle.queued}
                )
            elif handle.queued:
                emit(f"start of {which} queued: saga {handle.saga_id}")
                emit("a worker running this saga type will start it")
            else:
                emit(f"key {key!r} already started saga {handle.saga_id}")
            return 0
        try:
            instance = await handle.result(wait_timeout)
        except TimeoutError:
            state = "queued" if handle.queued else "running"
            raise CliError(
                f"saga {handle.saga_id} did not settle within {wait_timeout:g} s (is a worker "
                f"running {saga_type} on this database?); it stays {state}"
            ) from None
    if as_json:
        print_json(summary_json(instance))
    else:
        emit(f"saga {instance.saga_id} ({which}) is {instance.status.value}")
    if instance.status is not SagaStatus.COMPLETED:
        raise CliError(f"saga {instance.saga_id} is {instance.status.value}: {instance.reason}")
    return 0
