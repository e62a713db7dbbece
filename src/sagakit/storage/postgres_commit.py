"""One batch of transitions on PostgreSQL (the TransitionStore port's commit).

Every batch is one transaction of a handful of set-based statements, whatever its size. The
usual batch (one transition per saga) is one statement of data-modifying CTEs, put together from
the ``commit_<part>`` queries it has rows for (:func:`commit_at_once`); one step of one saga
takes a scalar statement instead. A batch that names a saga twice goes in rounds, so the second
transition is checked against what the first wrote (:func:`commit_in_rounds`), and so does a
batch that creates the instance of a queued start: its command is locked first, and the
instance created only if it is still pending (an operator's cancel waits for that lock, then
finds it answered). A transition whose revision check fails is dropped whole: its records are
not written.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import cast

from sagakit.ports import Batch, InstanceWrite, Timer, TimerOpKind
from sagakit.state import SagaInstance
from sagakit.storage.postgres_schema import Conn, Q
from sagakit.storage.rows import STATUS_TEXT, history_row, transition_state


async def commit_at_once(conn: Conn, batch: Batch, worker_id: str | None) -> list[bool]:
    """Write ``batch`` (at most one transition per saga) in one statement, its own implicit
    transaction; which transitions wrote, in order."""
    one = _one_step(batch)
    if one is not None:
        inst = cast(SagaInstance, one.instance)
        rows = await conn.fetch(
            Q["commit_one_update"],
            inst.saga_id,
            one.expected_revision,
            STATUS_TEXT[inst.status],
            inst.updated_at,
            inst.revision,
            transition_state(one),
            *columns([history_row(inst.saga_id, e)[1:] for e in one.history], 6),
            bool(one.timer_ops),  # only "cancel all" can be there (_one_step)
        )
        return [bool(rows)]
    transitions = batch.transitions
    inserts = [t for t in transitions if t.instance and t.expected_revision is None]
    updates = [t for t in transitions if t.instance and t.expected_revision is not None]
    # Side records are filtered in SQL to the transitions that wrote ("ok").
    clear, names, fired, upserts = _timer_changes(transitions)
    parts: list[tuple[str, Sequence[Sequence[object]]]] = [
        ("ins", columns([_insert_row(t) for t in inserts], 12)),
        ("upd", columns([_update_row(t) for t in updates], 6)),
        (
            "hist",
            columns([history_row(t.saga_id, e) for t in transitions for e in t.history], 7),
        ),
        (
            "obx",
            columns(
                [
                    (
                        m.id,
                        m.source,
                        m.destination,
                        m.saga_id,
                        m.body,
                        worker_id,
                        t.saga_id,
                    )
                    for t in transitions
                    for m in t.outbox
                ],
                7,
            ),
        ),
        ("tclr", [clear, [u[0] for u in upserts], [u[1] for u in upserts]] if clear else []),
        ("tdel", columns(names, 2)),
        ("tfir", columns(fired, 5)),
        ("tset", columns(upserts, 8)),
        ("done", [list(batch.outbox_done)] if batch.outbox_done else []),
        ("cons", columns([(t.saga_id, i) for t in transitions for i in t.consumed], 2)),
        (
            "cmd",
            columns(
                [(c.id, c.state.value, c.error, None) for c in batch.commands]
                + [
                    (c.id, c.state.value, c.error, t.saga_id)
                    for t in transitions
                    for c in t.commands
                ],
                4,
            ),
        ),
        (
            "dl",
            columns([(d.source, d.reason, d.body) for d in batch.dead_letters], 3),
        ),
    ]
    present = [(name, args) for name, args in parts if args and args[0]]
    if not present:  # transitions without a state change or a record: nothing to write
        return [True] * len(transitions)
    side_only = [t.saga_id for t in transitions if t.instance is None]
    if side_only and any(name not in _WITHOUT_OK for name, _ in present):
        present.append(("side", [side_only]))  # only a part that reads "ok" binds it
    names_present = tuple(name for name, _ in present)
    rows = await conn.fetch(
        _commit_statement(names_present), *(a for _, args in present for a in args)
    )
    written = {r[0] for r in rows}
    return [t.instance is None or t.saga_id in written for t in transitions]


async def commit_in_rounds(conn: Conn, batch: Batch, worker_id: str | None) -> list[bool]:
    """Write ``batch``, which may name a saga more than once, in the open transaction on
    ``conn``; which transitions wrote, in order."""
    transitions = batch.transitions
    results = [t.instance is None for t in transitions]
    gated = [c.id for t in transitions if starts_queued(t) for c in t.commands]
    pending: set[int] = set()
    if gated:
        pending = {r[0] for r in await conn.fetch(Q["lock_pending"], gated)}
    # One statement per round; a saga that appears twice in a batch goes in two rounds,
    # so its second transition is checked against what its first one wrote.
    for round_ in _rounds(transitions):
        inserts = [
            i
            for i in round_
            if transitions[i].expected_revision is None
            and all(c.id in pending for c in transitions[i].commands)
        ]
        updates = [i for i in round_ if transitions[i].expected_revision is not None]
        written: set[str] = set()
        if inserts:
            rows = await conn.fetch(
                Q["insert_instances"],
                *columns(
                    [_insert_row(transitions[i]) for i in inserts],
                    12,
                ),
            )
            written.update(r[0] for r in rows)
        if updates:
            rows = await conn.fetch(
                Q["update_instances"],
                *columns([_update_row(transitions[i]) for i in updates], 6),
            )
            written.update(r[0] for r in rows)
        for i in round_:
            results[i] = transitions[i].saga_id in written
    ok = [t for t, good in zip(transitions, results, strict=True) if good]
    await _side_records(conn, batch, ok, worker_id)
    return results


async def _side_records(
    conn: Conn, batch: Batch, ok: list[InstanceWrite], worker_id: str | None
) -> None:
    history = [history_row(t.saga_id, e) for t in ok for e in t.history]
    if history:
        await conn.execute(Q["insert_history"], *columns(history, 7))
    outbox = [
        (m.id, m.source, m.destination, m.saga_id, m.body, worker_id) for t in ok for m in t.outbox
    ]
    if outbox:
        await conn.execute(Q["insert_outbox"], *columns(outbox, 6))
    await _timers(conn, ok)
    consumed = [*batch.outbox_done, *(i for t in ok for i in t.consumed)]
    if consumed:
        await conn.execute(Q["delete_outbox"], consumed)
    commands = [*batch.commands, *(c for t in ok for c in t.commands)]
    if commands:
        await conn.execute(
            Q["apply_commands"],
            [c.id for c in commands],
            [c.state.value for c in commands],
            [c.error for c in commands],
        )
    if batch.dead_letters:
        await conn.execute(
            Q["insert_dead_letters"],
            [d.source for d in batch.dead_letters],
            [d.reason for d in batch.dead_letters],
            [d.body for d in batch.dead_letters],
        )


async def _timers(conn: Conn, ok: list[InstanceWrite]) -> None:
    clear, names, fired, upserts = _timer_changes(ok)
    if clear:
        await conn.execute(
            Q["clear_timers"],
            clear,
            [u[0] for u in upserts],
            [u[1] for u in upserts],
        )
    if names:
        await conn.execute(Q["delete_timers"], *columns(names, 2))
    if fired:
        await conn.execute(Q["delete_fired_timers"], *columns(fired, 4))
    if upserts:
        await conn.execute(Q["set_timers"], *columns(upserts, 7))


_PARAM = re.compile(r"\$(\d+)")
#: The parts that do not read "ok" (the instances whose write passed its check).
_WITHOUT_OK = frozenset({"ins", "upd", "done", "dl"})
#: The parts of a batch's one statement, by name (see _commit_statement).
_COMMIT_PARTS = {
    "ins": Q["commit_ins"],
    "upd": Q["commit_upd"],
    "hist": Q["commit_hist"],
    "obx": Q["commit_obx"],
    "tclr": Q["commit_tclr"],
    "tdel": Q["commit_tdel"],
    "tfir": Q["commit_tfir"],
    "tset": Q["commit_tset"],
    "done": Q["commit_done"],
    "cons": Q["commit_cons"],
    "cmd": Q["commit_cmd"],
    "dl": Q["commit_dl"],
}


@functools.cache
def _commit_statement(parts: tuple[str, ...]) -> str:
    """One statement of the ``commit_<part>`` CTEs a batch has rows for, in the order given,
    their parameters numbered on; ``side`` is the ids of transitions with only side records.

    A batch at rest has two or three parts (an update and its history, say): leaving out the
    empty ones halves the commit's latency against one statement of every part, whose empty
    CTEs PostgreSQL would still plan and run. The shapes are few, and asyncpg keeps each one
    prepared."""
    ctes: list[str] = []
    offset = 0
    ok: list[str] = [f"SELECT saga_id FROM {name}" for name in ("ins", "upd") if name in parts]
    written = list(ok)
    for name in parts:
        if name == "side":
            offset += 1
            ok.append(f"SELECT unnest(${offset}::text[]) AS saga_id")
            continue
        sql = _COMMIT_PARTS[name]
        ctes.append(_renumber(sql, offset))
        offset += max(int(n) for n in _PARAM.findall(sql))
    if any(name not in _WITHOUT_OK for name in parts if name != "side"):
        # Every branch names its column saga_id: an unnamed one would let "SELECT saga_id
        # FROM ok" bind to the outer query's saga_id instead.
        branches = " UNION ALL ".join(ok) or "SELECT NULL::text AS saga_id WHERE false"
        ctes.insert(len(written), f"ok AS ({branches})")
    result = " UNION ALL ".join(written) or "SELECT NULL::text WHERE false"
    return "WITH " + ",\n".join(ctes) + "\n" + result


def _renumber(sql: str, offset: int) -> str:
    """``sql`` with every ``$n`` made ``$(n + offset)``."""
    return _PARAM.sub(lambda m: f"${int(m.group(1)) + offset}", sql)


_TimerChanges = tuple[
    list[str],
    list[tuple[str, str]],
    list[tuple[str, str, float, int, str]],
    list[tuple[object, ...]],
]


def _timer_changes(transitions: Sequence[InstanceWrite]) -> _TimerChanges:
    """Each transition's ordered timer operations, collapsed per instance into: instances to
    clear, timers to delete by name, fired timers to delete exactly, and timers to upsert —
    with no timer both deleted and upserted, so they can run as one statement."""
    clear: list[str] = []
    names: list[tuple[str, str]] = []
    fired: list[tuple[str, str, float, int, str]] = []
    upserts: list[tuple[object, ...]] = []
    for t in transitions:
        if not t.timer_ops:
            continue
        cleared = False
        deleted: set[str] = set()
        exact: list[Timer] = []
        latest: dict[str, Timer] = {}
        for op in t.timer_ops:
            if op.kind is TimerOpKind.SET and op.timer is not None:
                latest[op.timer.name] = op.timer
                deleted.discard(op.timer.name)
            elif op.kind is TimerOpKind.CANCEL and op.names is None:
                cleared, deleted, exact, latest = True, set(), [], {}
            elif op.kind is TimerOpKind.CANCEL and op.names is not None:
                for name in op.names:
                    latest.pop(name, None)
                    deleted.add(name)
            elif op.kind is TimerOpKind.FIRED and op.timer is not None:
                exact.append(op.timer)
        if cleared:
            clear.append(t.saga_id)
        names.extend((t.saga_id, n) for n in deleted)
        # A timer set again replaces the row anyway: never delete what is upserted.
        fired.extend(
            (x.saga_id, x.name, x.due_at, x.attempt, t.saga_id)
            for x in exact
            if x.name not in latest
        )
        upserts.extend(
            (x.saga_id, x.name, x.kind.value, x.step, x.phase.value, x.attempt, x.due_at, t.saga_id)
            for x in latest.values()
        )
    return clear, names, fired, upserts


def _rounds(transitions: Sequence[InstanceWrite]) -> list[list[int]]:
    """Indexes of the transitions that write an instance, grouped so that no round names a
    saga twice; a saga's k-th transition is in round k."""
    rounds: list[list[int]] = []
    seen: dict[str, int] = {}
    for i, t in enumerate(transitions):
        if t.instance is None:
            continue
        k = seen.get(t.saga_id, 0)
        seen[t.saga_id] = k + 1
        if k == len(rounds):
            rounds.append([])
        rounds[k].append(i)
    return rounds


def _one_step(batch: Batch) -> InstanceWrite | None:
    """The batch's one transition when it is one step of one saga: an update, its history
    and at most the cancelling of all its timers (commit_one_update)."""
    if len(batch.transitions) != 1 or batch.outbox_done or batch.commands or batch.dead_letters:
        return None
    t = batch.transitions[0]
    if t.instance is None or t.expected_revision is None or t.outbox or t.consumed or t.commands:
        return None
    for op in t.timer_ops:
        if op.kind is not TimerOpKind.CANCEL or op.names is not None:
            return None
    return t


def starts_queued(t: InstanceWrite) -> bool:
    """Whether ``t`` creates the instance of a queued start (an insert with command results):
    that is written only while the command is pending."""
    return t.instance is not None and t.expected_revision is None and bool(t.commands)


def columns(rows: Sequence[Sequence[object]], width: int) -> list[list[object]]:
    return [[row[i] for row in rows] for i in range(width)]


def _insert_row(t: InstanceWrite) -> tuple[object, ...]:
    inst = cast(SagaInstance, t.instance)
    return (
        inst.saga_id,
        inst.saga_type,
        inst.version,
        inst.fingerprint,
        STATUS_TEXT[inst.status],
        inst.correlation_id,
        inst.idempotency_key,
        inst.created_at,
        inst.updated_at,
        inst.revision,
        transition_state(t),
        inst.owner,
    )


def _update_row(t: InstanceWrite) -> tuple[object, ...]:
    inst = cast(SagaInstance, t.instance)
    return (
        inst.saga_id,
        t.expected_revision,
        STATUS_TEXT[inst.status],
        inst.updated_at,
        inst.revision,
        transition_state(t),
    )
