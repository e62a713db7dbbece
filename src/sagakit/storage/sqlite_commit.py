"""One batch of transitions in one SQLite transaction (the TransitionStore port's commit).

Each transition's instance write is checked against its expected revision; a transition whose
check fails is dropped whole (its history, outbox messages, timers and command results are not
written), and the others commit. A queued start's instance is inserted only while its command
is pending (one writer at a time: an operator's cancel comes before or after, never between).
The side records of the batch go in one ``executemany`` each.
"""

from __future__ import annotations

import sqlite3

from sagakit.ports import Batch, CommandResult, InstanceWrite, TimerOpKind
from sagakit.storage.rows import STATUS_TEXT, history_row, transition_state
from sagakit.storage.sqlite_file import Q, transaction


def commit_batch(conn: sqlite3.Connection, batch: Batch, now: float) -> list[bool]:
    """Write ``batch`` in one transaction on ``conn``; which transitions wrote, in order.
    ``now`` stamps command results and dead letters."""
    results: list[bool] = []
    history: list[tuple[object, ...]] = []
    outbox: list[tuple[object, ...]] = []
    consumed: list[tuple[str]] = [(i,) for i in batch.outbox_done]
    commands: list[CommandResult] = list(batch.commands)
    with transaction(conn):
        cur = conn.cursor()  # one for the batch: conn.execute makes a cursor per call
        for t in batch.transitions:
            ok = _write_instance(cur, t)
            results.append(ok)
            if not ok:
                continue
            history.extend(history_row(t.saga_id, e) for e in t.history)
            if t.outbox:
                outbox.extend((m.id, m.source, m.destination, m.saga_id, m.body) for m in t.outbox)
            if t.timer_ops:
                _timer_ops(cur, t)
            if t.consumed:
                consumed.extend((i,) for i in t.consumed)
            if t.commands:
                commands.extend(t.commands)
        if consumed:
            cur.executemany(Q["delete_outbox"], consumed)
        if history:
            cur.executemany(Q["insert_history"], history)
        if outbox:
            cur.executemany(Q["insert_outbox"], outbox)
        if commands:
            cur.executemany(
                Q["apply_command"], [(c.state.value, c.error, now, c.id) for c in commands]
            )
        if batch.dead_letters:
            cur.executemany(
                Q["insert_dead_letter"],
                [(now, d.source, d.reason, d.body) for d in batch.dead_letters],
            )
    return results


def _write_instance(cur: sqlite3.Cursor, t: InstanceWrite) -> bool:
    inst = t.instance
    if inst is None:
        return True
    state = transition_state(t)
    if t.expected_revision is None:
        for command in t.commands:  # a queued start: created only if it is still pending
            if cur.execute(Q["command_pending"], (command.id,)).fetchone() is None:
                return False
        cur.execute(
            Q["insert_instance"],
            (
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
                state,
                inst.owner,
                inst.updated_at,
            ),
        )
        return cur.rowcount == 1
    status = STATUS_TEXT[inst.status]
    # Most transitions keep the status: tried first, that update names no indexed column,
    # so SQLite updates no index (it updates every index on a column a SET names, even
    # to the same value). No row: another status, or another revision (then neither).
    cur.execute(
        Q["update_instance_in_status"],
        (inst.updated_at, inst.revision, state, inst.saga_id, t.expected_revision, status),
    )
    if cur.rowcount == 1:
        return True
    cur.execute(
        Q["update_instance"],
        (
            status,
            inst.updated_at,
            inst.updated_at,
            inst.revision,
            state,
            inst.saga_id,
            t.expected_revision,
        ),
    )
    return cur.rowcount == 1


def _timer_ops(cur: sqlite3.Cursor, t: InstanceWrite) -> None:
    for op in t.timer_ops:
        if op.kind is TimerOpKind.SET and op.timer is not None:
            tm = op.timer
            cur.execute(
                Q["set_timer"],
                (
                    tm.saga_id,
                    tm.name,
                    tm.kind.value,
                    tm.step,
                    tm.phase.value,
                    tm.attempt,
                    tm.due_at,
                ),
            )
        elif op.kind is TimerOpKind.CANCEL:
            if op.names is None:
                cur.execute(Q["delete_timers"], (t.saga_id,))
            else:
                cur.executemany(Q["delete_timer"], [(t.saga_id, n) for n in op.names])
        elif op.kind is TimerOpKind.FIRED and op.timer is not None:
            tm = op.timer
            cur.execute(Q["delete_fired_timer"], (tm.saga_id, tm.name, tm.due_at, tm.attempt))
