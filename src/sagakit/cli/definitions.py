"""``sagakit describe``: a saga definition's steps, kinds, pivot, timeouts and policies, and its
Mermaid diagram.

The definition comes from the app (``--app MODULE:ATTR``, imported as ``worker`` does), or
else from what the workers recorded in the store (:meth:`sagakit.Client.definitions`), which
runs no user code.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import cast

from rich.console import Group, RenderableType
from rich.text import Text

from sagakit import runtime
from sagakit.cli.common import CliError, db_url, load_app, reader
from sagakit.cli.render import Column, Fit, emit, fields, print_json, table
from sagakit.description import mermaid
from sagakit.encoding import JSON


def cmd_describe(args: argparse.Namespace) -> int:
    name, version = str(args.saga_type), args.saga_version
    if args.app is not None:
        app = load_app(str(args.app))
        found = [d.describe() for d in app.definitions if d.name == name]
        known = sorted({d.name for d in app.definitions})
    else:
        found, known = runtime.run(_stored(db_url(args), name))
    if version is not None:
        found = [d for d in found if d.get("version") == version]
    if not found:
        which = name if version is None else f"{name} v{version}"
        names = ", ".join(known) or "none"
        raise CliError(f"no saga definition {which} (known: {names})")
    newest = max(cast(int, d.get("version")) for d in found)
    chosen = [d for d in found if d.get("version") == newest]
    if args.json:
        print_json(chosen[0] if len(chosen) == 1 else chosen)
    elif args.mermaid:
        for description in chosen:
            emit(mermaid(description))
    else:
        emit(Group(*(_render(d) for d in chosen)), wide=bool(args.wide))
    return 0


async def _stored(url: str, name: str) -> tuple[list[dict[str, JSON]], list[str]]:
    """The descriptions of ``name`` that workers recorded, and every name recorded."""
    async with reader(url) as client:
        records = await client.definitions()
    known = sorted({r.name for r in records})
    return [r.to_json() for r in records if r.name == name], known


STEP_COLUMNS = (
    Column("#"),
    Column("STEP"),
    Column("KIND"),
    Column("HANDLER", Fit.WRAP),
    Column("TIMEOUT"),
    Column("RETRY", Fit.WRAP),
)


def _render(description: dict[str, JSON]) -> RenderableType:
    deadline = description.get("deadline")
    about = fields(
        [
            ("saga", f"{description.get('name')} v{description.get('version')}"),
            ("fingerprint", str(description.get("fingerprint"))),
            ("pivot", _pivot(steps_of(description)) or "-"),
            ("deadline", "-" if deadline is None else f"{deadline:g} s"),
            ("data", str(description.get("data_type") or "JSON")),
        ]
    )
    steps = steps_of(description)
    rows: list[list[str]] = []
    for i, step in enumerate(steps, 1):
        rows.append(
            [
                str(i),
                str(step.get("name")),
                str(step.get("kind")),
                _handler(step.get("action")),
                _seconds(step.get("timeout")),
                _policy(step.get("retry")),
            ]
        )
        if step.get("compensation") is not None:
            # The compensation on the line below its step, as "undo".
            rows.append(
                [
                    "",
                    "  ↩ undo",
                    "",
                    _handler(step.get("compensation")),
                    _seconds(step.get("compensation_timeout")),
                    _policy(step.get("compensation_retry")),
                ]
            )
    return Group(about, Text(), table(STEP_COLUMNS, rows), Text())


def steps_of(description: dict[str, JSON]) -> Sequence[dict[str, JSON]]:
    return cast(Sequence[dict[str, JSON]], description.get("steps") or [])


def _pivot(steps: Sequence[dict[str, JSON]]) -> str | None:
    return next((str(s.get("name")) for s in steps if s.get("kind") == "pivot"), None)


def _handler(handler: JSON) -> str:
    if isinstance(handler, dict):
        if handler.get("where") == "local":
            return f"local {handler.get('function')}"
        return f"{handler.get('participant')}: {handler.get('command')}"
    return "-"


def _seconds(value: JSON) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value:g} s"


def _policy(policy: JSON) -> str:
    if not isinstance(policy, dict):
        return "-"
    first, backoff = policy.get("initial_delay"), policy.get("backoff")
    return (
        f"{policy.get('max_attempts')} attempts, waits {_seconds(first)} ×{backoff:g} "
        f"up to {_seconds(policy.get('max_delay'))}"
        if isinstance(backoff, (int, float))
        else f"{policy.get('max_attempts')} attempts"
    )
