"""One bad item never fails its neighbours: finding it, and failing it alone.

Values are checked where they enter (sagakit.encoding), so a store refusing a write (a data
error, which the adapters raise as StoreRefused) is rare; when it happens the committer must
not fail, retry and stall a whole batch for one item. It commits the batch in halves until the
refused part is a single instance's write (or the records that belong to none), commits
everything else, and refuses only that part, with the reason:

- a local step's answer that cannot be stored becomes a non-retryable error of that step
  (Semantics 14: the step fails, not retryably, and its saga compensates or is stuck);
- a participant's reply is dead-lettered with the reason, and the attempt ends at once with
  its outcome unknown (as if it had timed out), never left waiting for its timeout;
- a start, an operator command or a timer is refused to whoever sent it.

An instance that came with several items is decided again one item per batch (``alone``), so
that the refused item is found without refusing its innocent neighbours.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from sagakit.encoding import printable
from sagakit.errors import StorageError, StoreRefused
from sagakit.ports import Batch, CommandResult, CommandState, DeadLetter
from sagakit.transitions import Outcome, Reply
from sagakit.worker.items import Item, Work, answer

log = logging.getLogger("sagakit.worker")

#: A part of a batch: one instance's write, or the records that belong to no instance.
Unit = Work | Batch


def batch_of(units: Sequence[Unit]) -> Batch:
    batch = Batch()
    for unit in units:
        if isinstance(unit, Work):
            batch.transitions.append(unit.transition)
            batch.dead_letters.extend(unit.dead_letters)
        else:
            batch.dead_letters.extend(unit.dead_letters)
            batch.commands.extend(unit.commands)
            batch.outbox_done.extend(unit.outbox_done)
    return batch


def is_refusal(exc: BaseException) -> bool:
    """A failed commit that says "this data", not "this store": the adapters raise
    StoreRefused for what the database refuses (a data error); an encoder's error raised
    inside a commit says the same. Any other StorageError (a lost connection, a lock) is the
    store's trouble: the batch's sources retry it, nothing is refused."""
    return isinstance(exc, StoreRefused) or not isinstance(exc, (StorageError, OSError))


async def bisect(
    commit: Callable[[Batch], Awaitable[list[bool]]],
    units: list[Unit],
    error: Exception,
) -> tuple[dict[int, bool], list[tuple[Unit, Exception]], Exception | None]:
    """Commit ``units`` (which were refused together with ``error``) in halves.

    Returns the units written (by ``id``: a work's revision-check result, True for the
    records that belong to no instance), the units refused alone with their error, and the
    error that ended the search early when the store itself failed meanwhile (then every
    unit not written must be failed as after any store failure, not refused).
    """
    written: dict[int, bool] = {}
    refused: list[tuple[Unit, Exception]] = []
    parts: list[tuple[list[Unit], Exception]] = [(units, error)]
    while parts:
        part, part_error = parts.pop()
        if len(part) == 1:
            refused.append((part[0], part_error))
            continue
        half = len(part) // 2
        for piece in (part[:half], part[half:]):
            try:
                results = await commit(batch_of(piece))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_refusal(exc):
                    return written, refused, exc
                parts.append((piece, exc))
                continue
            answers = iter(results)
            for unit in piece:
                written[id(unit)] = next(answers) if isinstance(unit, Work) else True
    return written, refused, None


def refuse(work: Work, error: Exception, at: float, side: Batch) -> list[Item]:
    """Fail ``work``'s items because the store refused its write; returns what is decided
    again (rewritten answers, or items to decide one by one). Records that go with the
    refusal (dead letters, refused commands) are added to ``side``."""
    reason = printable(f"{type(error).__name__}: {error}")
    if len(work.items) > 1:
        log.warning(
            "the store refused the write of saga %s (%d items): deciding them one by one: %s",
            work.saga_id,
            len(work.items),
            reason,
            extra={"saga_id": work.saga_id},
        )
        for item in work.items:
            item.alone = True
        return list(work.items)
    log.error(
        "the store refused the write of saga %s: %s",
        work.saga_id,
        reason,
        extra={"saga_id": work.saga_id},
    )
    again: list[Item] = []
    refused = StoreRefused(f"the store refused the write of saga {work.saga_id}: {reason}")
    for item in work.items:
        event = item.event
        if isinstance(event, Reply) and item.rewritten < 2:
            # A rewritten reply keeps in ``retryable`` whether it came from a participant.
            remote = event.retryable if item.rewritten else item.body is not None
            if remote and not item.rewritten:
                assert item.body is not None
                side.dead_letters.append(
                    DeadLetter(
                        item.source or "worker",
                        f"the store refused this reply: {reason}",
                        item.body,
                        at=at,
                    )
                )
            # A participant's answer is lost, not its effect: the attempt's outcome is unknown
            # (retried by policy with the same key). A local step's result that cannot be
            # stored fails that step, not retryably (Semantics 14).
            what = "reply" if remote else "answer"
            text = f"its {what} could not be stored"
            failure = Reply(
                event.step,
                event.phase,
                event.attempt,
                Outcome.ERROR,
                error=f"{text}: {reason}" if not item.rewritten else text,
                retryable=remote,
                generation=event.generation,
            )
            again.append(
                Item(
                    item.saga_id,
                    event=failure,
                    future=item.future,
                    source=item.source,
                    rewritten=item.rewritten + 1,
                )
            )
            continue
        if item.command_id is not None:
            side.commands.append(CommandResult(item.command_id, CommandState.REFUSED, str(refused)))
        answer(item, refused)
    return again
