"""The read commands: ``list``, ``show``, ``history`` and ``dead-letters``.

``list`` and ``show`` report starts still queued for a worker beside instances, with the
status ``queued``; ``show`` finds one by the id its client returned."""

from __future__ import annotations

import argparse
import json

from rich.console import Group
from rich.text import Text

from sagakit import Client, QueuedStart, SagaNotFound
from sagakit.cli.common import db_url, reader, run
from sagakit.cli.render import (
    QUEUED,
    Cell,
    Column,
    Fit,
    detail_json,
    emit,
    entry_json,
    fields,
    history_table,
    human_time,
    iso,
    print_json,
    print_table,
    queued_json,
    status_text,
    summary_json,
    table,
)


def cmd_list(args: argparse.Namespace) -> int:
    return run(
        _list(
            db_url(args),
            status=args.status,
            saga_type=args.saga_type,
            correlation_id=args.correlation_id,
            limit=int(args.limit),
            as_json=bool(args.json),
            wide=bool(args.wide),
        )
    )


LIST_COLUMNS = (
    Column("SAGA ID"),
    Column("TYPE"),
    Column("STATUS"),
    Column("UPDATED (UTC)"),
    Column("REASON", Fit.WRAP),
)


async def _list(
    url: str,
    *,
    status: str | None,
    saga_type: str | None,
    correlation_id: str | None,
    limit: int,
    as_json: bool,
    wide: bool,
) -> int:
    async with reader(url) as client:
        starts: list[QueuedStart] = []
        if status in (None, QUEUED):
            starts = await client.queued_starts(saga_type=saga_type, limit=limit)
            if correlation_id is not None:
                starts = [s for s in starts if s.correlation_id == correlation_id]
        instances = []
        if status != QUEUED and len(starts) < limit:
            instances = await client.list(
                status=status,
                saga_type=saga_type,
                correlation_id=correlation_id,
                limit=limit - len(starts),
            )
        stalled = await client.stalled_many(instances)
    if as_json:
        print_json(
            [queued_json(s) for s in starts]
            + [
                {**summary_json(i), "stalled": why}
                for i, why in zip(instances, stalled, strict=True)
            ]
        )
        return 0
    queued_rows: list[list[Cell]] = [
        [
            s.saga_id,
            s.what,
            status_text(QUEUED),
            human_time(s.queued_at),
            f"not started: {s.stalled}" if s.stalled else "waiting for a worker",
        ]
        for s in starts
    ]
    rows: list[list[Cell]] = queued_rows + [
        [
            i.saga_id,
            f"{i.saga_type} v{i.version}",
            status_text(i.status.value),
            human_time(i.updated_at),
            i.reason or (f"not advancing: {why}" if why else ""),
        ]
        for i, why in zip(instances, stalled, strict=True)
    ]
    print_table(LIST_COLUMNS, rows, wide=wide)
    if status == QUEUED:
        emit(f"({len(starts)} queued start(s))")
    else:
        queued = f", {len(starts)} queued start(s)" if starts else ""
        emit(f"({len(instances)} instance(s){queued})")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    return run(_show(db_url(args), str(args.saga_id), as_json=bool(args.json), wide=args.wide))


STEP_COLUMNS = (
    Column("STEP"),
    Column("STATUS"),
    Column("ATTEMPTS"),
    Column("RESULT / ERROR", Fit.WRAP),
    Column("COMPENSATION", Fit.WRAP),
)


async def _show(url: str, saga_id: str, *, as_json: bool, wide: bool) -> int:
    async with reader(url) as client:
        try:
            instance = await client.get(saga_id)
        except SagaNotFound:
            start = await client.queued_start(saga_id)
            if start is None:
                raise
            return await _show_start(client, start, as_json=as_json)
        history = await client.history(saga_id)
        stalled = await client.stalled(instance)
    if as_json:
        print_json({**detail_json(instance, history), "stalled": stalled})
        return 0
    about = fields(
        [
            ("saga", instance.saga_id),
            ("type", f"{instance.saga_type} v{instance.version}"),
            ("fingerprint", instance.fingerprint),
            ("status", status_text(instance.status.value)),
            ("reason", instance.reason or "-"),
            ("owner", instance.owner or "-"),
            ("not advancing", stalled or "-"),
            ("stuck step", instance.stuck_step or "-"),
            ("point of no return", instance.point_of_no_return or "-"),
            ("correlation id", instance.correlation_id),
            ("created", human_time(instance.created_at)),
            ("updated", human_time(instance.updated_at)),
            ("data", json.dumps(instance.data, sort_keys=True, ensure_ascii=False)),
        ]
    )
    step_rows: list[list[Cell]] = []
    for s in instance.steps:
        comp = Text("-")
        if s.compensation is not None:
            comp = status_text(s.compensation.status.value)
            comp.append(f" ({s.compensation.attempts})")
            if s.compensation.error:
                comp.append(f": {s.compensation.error}")
        outcome = s.error if s.error else json.dumps(s.result) if s.result is not None else ""
        # A later generation (an operator's retry of a failed step) runs under keys of its own.
        attempts = str(s.attempts) if s.generation == 1 else f"{s.attempts} (gen {s.generation})"
        step_rows.append([s.name, status_text(s.status.value), attempts, outcome or "-", comp])
    emit(
        Group(
            about,
            Text(),
            Text("steps:", style="bold"),
            table(STEP_COLUMNS, step_rows),
            Text(),
            Text("history:", style="bold"),
            history_table(history),
        ),
        wide=wide,
    )
    return 0


async def _show_start(client: Client, start: QueuedStart, *, as_json: bool) -> int:
    """A start by the id its client returned: queued, refused, or applied to the instance
    that held its key (an instance of its own would have been shown instead)."""
    resolved = None
    if start.state.value == "applied" and start.key is not None:
        holder = await client.store.find_by_key(start.saga_type, start.key)
        resolved = holder.saga_id if holder is not None else None
    shown = {**queued_json(start), "data": start.data, "resolved_to": resolved}
    if as_json:
        print_json(shown)
        return 0
    status = str(shown["status"])
    emit(
        fields(
            [
                ("saga", start.saga_id),
                ("type", start.what),
                (
                    "status",
                    f"{status} (a start no worker has applied)" if status == QUEUED else status,
                ),
                ("reason", start.error or "-"),
                ("not started", start.stalled or "-"),
                ("resolved to", resolved or "-"),
                ("idempotency key", start.key or "-"),
                ("correlation id", start.correlation_id or "-"),
                ("queued", human_time(start.queued_at)),
                ("command", str(start.command_id)),
                ("data", json.dumps(start.data, sort_keys=True, ensure_ascii=False)),
            ]
        )
    )
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    return run(_history(db_url(args), str(args.saga_id), as_json=bool(args.json), wide=args.wide))


async def _history(url: str, saga_id: str, *, as_json: bool, wide: bool) -> int:
    async with reader(url) as client:
        history = await client.history(saga_id)
    if as_json:
        print_json([entry_json(e) for e in history])
    else:
        emit(history_table(history), wide=wide)
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:
    return run(
        _dead_letters(db_url(args), limit=int(args.limit), as_json=bool(args.json), wide=args.wide)
    )


LETTER_COLUMNS = (Column("ID"), Column("AT (UTC)"), Column("SOURCE"), Column("REASON", Fit.WRAP))


async def _dead_letters(url: str, *, limit: int, as_json: bool, wide: bool) -> int:
    async with reader(url) as client:
        letters = await client.dead_letters(limit)
    items = [
        {
            "id": letter.id,
            "at": iso(letter.at),
            "source": letter.source,
            "reason": letter.reason,
            "body": letter.body.decode("utf-8", errors="replace"),
        }
        for letter in letters
    ]
    if as_json:
        print_json(items)
        return 0
    rows = [
        [str(item["id"]), human_time(letter.at), letter.source, letter.reason]
        for item, letter in zip(items, letters, strict=True)
    ]
    print_table(LETTER_COLUMNS, rows, wide=wide)
    emit(f"({len(letters)} dead letter(s))")
    return 0
