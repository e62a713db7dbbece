"""The logbook: the worker says what happens to sagas, one log line per event that matters.

Lines are derived from what was written, after it was written: the history entries of each
committed transition (by the committer, once its batch has committed), the takeover entries a
claim wrote, the dead letters a batch stored. So the log never tells of a step that a failed
commit did not record. One thing is logged as it happens, because no history holds it: the
traceback of an unexpected exception in a local step (its history keeps only the message).

Logger ``sagakit.saga``. Levels, chosen for a person on call:

========  ===============================================================================
ERROR     an instance is stuck: an operator must retry or resolve it
WARNING   compensation begins, the saga failed, a step failed definitely, a step timed out,
          the deadline passed, an operator command was refused, a message was dead-lettered,
          a local step raised an unexpected exception (with its traceback)
INFO      a retry is scheduled, an attempt erred, an operator acted, an instance resumed or
          was taken over by another worker
DEBUG     everything else: starts, steps dispatched and done, compensations run,
          completions, late and duplicate replies
========  ===============================================================================

A reply or timeout whose consequence is the next entry of the same transition (a retry, or a
status change whose reason repeats it) is told by that entry's line only; at DEBUG both show.

Every line carries, as ``extra`` fields, ``saga_id``, ``saga_type``, ``correlation_id`` and
``event`` (the history entry's kind), and ``step``, ``phase``, ``attempt`` and ``reason`` where
they apply: :class:`sagakit.logs.JsonFormatter` writes them as JSON fields.

Cheap by construction: the committer hands each committed batch over in one call, which asks
the logger for its level once; an entry whose line would be below it costs a table lookup or
two (no message, no dict, no call), and with the logger above ERROR nothing is looked at.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import cast

from sagakit.definition import Phase
from sagakit.encoding import JSON, loads
from sagakit.ports import Claimed, DeadLetter
from sagakit.state import HistoryEntry, HistoryKind, SagaInstance
from sagakit.worker.items import Work

SAGA_LOGGER = "sagakit.saga"

DEBUG, INFO, WARNING, ERROR = logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR
_LEVELS = (DEBUG, INFO, WARNING, ERROR)
# Kinds whose level depends on the entry: a reply (its outcome and what follows it), a status
# change (the status), a timeout (what follows it).
_BY_OUTCOME, _BY_STATUS, _BY_FOLLOWING = -1, -2, -3
_LEVEL: dict[HistoryKind, int] = {
    HistoryKind.CREATED: DEBUG,
    HistoryKind.STATUS: _BY_STATUS,
    HistoryKind.DISPATCHED: DEBUG,
    HistoryKind.REPLY: _BY_OUTCOME,
    HistoryKind.LATE_REPLY: DEBUG,
    HistoryKind.DUPLICATE_REPLY: DEBUG,
    HistoryKind.TIMED_OUT: _BY_FOLLOWING,
    HistoryKind.RETRY_SCHEDULED: INFO,
    HistoryKind.DEADLINE: WARNING,
    HistoryKind.OPERATOR: INFO,
    HistoryKind.REFUSED: WARNING,
    HistoryKind.TAKEOVER: INFO,
}
#: By the status entered. Pending is DEBUG unless a reason says why it resumed (an operator's
#: retry has its own line); compensating again after an operator's retry is INFO.
_STATUS_LEVEL = {
    "pending": DEBUG,
    "completed": DEBUG,
    "compensating": WARNING,
    "failed": WARNING,
    "stuck": ERROR,
}
# Enum members read through their class are slow (a descriptor call): kept here once.
_STATUS, _REPLY = HistoryKind.STATUS, HistoryKind.REPLY
#: Entries that state the consequence of the reply or timeout just before them.
_CONSEQUENCES = (HistoryKind.STATUS, HistoryKind.RETRY_SCHEDULED)
#: Dead letters larger than this are not parsed for the saga they name.
_PARSE_LIMIT = 256 * 1024


class Logbook:
    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger(SAGA_LOGGER)

    def threshold(self) -> int | None:
        """The lowest level a line would be logged at now; None when none would be."""
        for level in _LEVELS:
            if self.log.isEnabledFor(level):
                return level
        return None

    # -- what was committed ---------------------------------------------------------------

    def committed(self, works: Sequence[Work], written: Sequence[bool]) -> None:
        """The lines of a committed batch: of each transition written (``written``), its
        history entries, with its instance as it was written."""
        threshold = self.threshold()
        if threshold is None:
            return
        # Run for every batch: the usual entry costs a lookup or two and no call.
        levels = _LEVEL
        for work, ok in zip(works, written, strict=True):
            if not ok:
                continue
            history = work.transition.history
            i = -1
            for entry in history:
                i += 1
                level = levels[entry.kind]
                if level < 0:
                    detail = entry.detail
                    if level == _BY_STATUS:
                        level = _STATUS_LEVEL.get(cast(str, detail["to"]), INFO)
                        if level < INFO and "reason" in detail:
                            level = INFO  # resumed, and the reason says why
                        elif level == WARNING and detail["from"] == "stuck":
                            level = INFO  # compensating again: an operator's retry
                    elif level == _BY_OUTCOME and detail["outcome"] == "success":
                        level = DEBUG
                    else:
                        level = _unanswered(entry, history[i + 1] if i + 1 < len(history) else None)
                if level >= threshold and work.instance is not None:
                    previous = history[i - 1] if i else None
                    what, reason = _describe(entry, previous, work.instance)
                    self._saga_line(level, work.instance, entry, what, reason)

    def takeovers(self, claimed: Sequence[Claimed]) -> None:
        """One line per instance a claim took over (INFO), from its takeover entry."""
        if not self.log.isEnabledFor(INFO):
            return
        for claim in claimed:
            entry = claim.takeover
            what, reason = _describe(entry, None, claim.instance)
            self._saga_line(INFO, claim.instance, entry, what, reason)

    def dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """One line per dead letter stored (WARNING), with the saga it names if it names one."""
        if not letters or not self.log.isEnabledFor(WARNING):
            return
        for letter in letters:
            fields = _named_in(letter.body)
            saga = f"saga {fields['saga_id']}: " if "saga_id" in fields else ""
            self.log.warning(
                "%sdead-lettered a message from %s: %s",
                saga,
                letter.source,
                letter.reason,
                extra={**fields, "event": "dead_letter", "reason": letter.reason},
            )

    # -- what happened --------------------------------------------------------------------

    def crashed(
        self, instance: SagaInstance, step: str, phase: Phase, attempt: int, exc: BaseException
    ) -> None:
        """A local step raised ``exc``, which it did not raise on purpose: its traceback
        (WARNING), which the history does not keep."""
        if not self.log.isEnabledFor(WARNING):
            return
        what = "compensation of step" if phase is Phase.COMPENSATION else "step"
        reason = f"{type(exc).__name__}: {exc}"
        self.log.warning(
            "saga %s (%s, correlation %s): %s %r attempt %d raised an unexpected %s; "
            "recorded as a retryable error",
            instance.saga_id,
            instance.saga_type,
            instance.correlation_id,
            what,
            step,
            attempt,
            type(exc).__name__,
            exc_info=exc,
            extra={
                "saga_id": instance.saga_id,
                "saga_type": instance.saga_type,
                "correlation_id": instance.correlation_id,
                "step": step,
                "phase": phase.value,
                "attempt": attempt,
                "reason": reason,
                "event": "unexpected_exception",
            },
        )

    def _saga_line(
        self,
        level: int,
        instance: SagaInstance,
        entry: HistoryEntry,
        what: str,
        reason: str | None,
    ) -> None:
        extra: dict[str, object] = {
            "saga_id": instance.saga_id,
            "saga_type": instance.saga_type,
            "correlation_id": instance.correlation_id,
            "event": entry.kind.value,
        }
        step = entry.step or (entry.detail.get("step") if entry.kind is _STATUS else None)
        if step is not None:
            extra["step"] = step
        if entry.phase is not None:
            extra["phase"] = entry.phase
        if entry.attempt is not None:
            extra["attempt"] = entry.attempt
        if reason is not None:
            extra["reason"] = reason
        # The record is made here rather than by log(): its level is known to pass, and the
        # logger's search of the stack for its caller (a fifth of a line's cost) would only
        # find this function.
        log = self.log
        args = (instance.saga_id, instance.saga_type, instance.correlation_id, what)
        record = log.makeRecord(
            log.name,
            level,
            __file__,
            0,
            "saga %s (%s, correlation %s): %s",
            args,
            None,
            None,
            extra,
        )
        log.handle(record)


def _unanswered(entry: HistoryEntry, following: HistoryEntry | None) -> int:
    """The level of a reply that is no success, or of a timeout."""
    if following is not None and following.kind in _CONSEQUENCES:
        return DEBUG  # the next line tells it, with its consequence
    if entry.kind is _REPLY and entry.detail["outcome"] == "error":
        return INFO
    return WARNING  # a definite failure, or a timeout


def _describe(
    entry: HistoryEntry, previous: HistoryEntry | None, instance: SagaInstance
) -> tuple[str, str | None]:
    """What an entry says, in words, and its reason (if it has one)."""
    kind, detail, step = entry.kind, entry.detail, entry.step
    compensation = entry.phase == Phase.COMPENSATION.value
    subject = f"compensation of step {step!r}" if compensation else f"step {step!r}"
    if kind is HistoryKind.STATUS:
        return _status(detail, instance)
    if kind is HistoryKind.CREATED:
        return "started", None
    if kind is HistoryKind.DISPATCHED:
        if compensation:
            return f"compensating step {step!r} (attempt {entry.attempt})", None
        return f"step {step!r} attempt {entry.attempt} dispatched", None
    if kind is HistoryKind.REPLY:
        outcome, error = detail.get("outcome"), _text(detail.get("error"))
        if outcome == "success":
            return (f"step {step!r} compensated" if compensation else f"{subject} done"), None
        if outcome == "failure":
            return f"{subject} failed: {error}", error
        return f"{subject} attempt {entry.attempt} erred: {error}", error
    if kind in (HistoryKind.LATE_REPLY, HistoryKind.DUPLICATE_REPLY):
        late = "late" if kind is HistoryKind.LATE_REPLY else "duplicate"
        outcome = detail.get("outcome")
        return f"{late} {outcome} reply for {subject} attempt {entry.attempt}, recorded", None
    if kind is HistoryKind.TIMED_OUT:
        return f"{subject} attempt {entry.attempt} timed out", "timed out"
    if kind is HistoryKind.RETRY_SCHEDULED:
        reason = None
        if previous is not None and previous.kind is HistoryKind.TIMED_OUT:
            reason = "timed out"
        elif previous is not None and previous.kind is HistoryKind.REPLY:
            reason = _text(previous.detail.get("error"))
        delay = detail.get("delay")
        after = f", after: {reason}" if reason else ""
        return f"retrying {subject}: attempt {entry.attempt} in {delay}s{after}", reason
    if kind is HistoryKind.DEADLINE:
        if detail.get("action") == "compensate":
            return "deadline passed: compensating", "deadline passed"
        return "deadline passed: flagged, not compensated", "deadline passed"
    if kind in (HistoryKind.OPERATOR, HistoryKind.REFUSED):
        by, command, why = detail.get("by"), detail.get("command"), _text(detail.get("reason"))
        on = f" of step {step!r}" if step else ""
        if kind is HistoryKind.REFUSED:
            error = _text(detail.get("error"))
            return f"{command} by {by} refused: {error}", error
        return f"{command}{on} by {by}: {why}", why
    if kind is HistoryKind.TAKEOVER:
        reason = _text(detail.get("reason"))
        previous_owner = detail.get("from") or "no worker"
        return f"taken over by {detail.get('to')} from {previous_owner} ({reason})", reason
    return kind.value, None  # pragma: no cover - every kind is described above


def _status(detail: dict[str, JSON], instance: SagaInstance) -> tuple[str, str | None]:
    to = detail.get("to")
    reason = _text(detail.get("reason"))
    if to == "completed":
        return "completed", None
    if to == "failed":
        reason = reason or instance.reason
        return f"failed, every completed step compensated: {reason}", reason
    if to == "stuck":
        return f"stuck: {reason}; an operator must retry or resolve it", reason
    if to == "compensating":
        return f"compensating: {reason}", reason
    if detail.get("from") == "started":
        return "running", None
    return (f"{to}: {reason}" if reason else f"{to} again"), reason


def _text(value: JSON) -> str | None:
    return None if value is None else str(value)


def _named_in(body: bytes) -> dict[str, object]:
    """The saga fields a dead letter's body names, when it is a JSON object that names them."""
    if len(body) > _PARSE_LIMIT:
        return {}
    try:
        parsed = loads(body)
    except ValueError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    fields = ("saga_id", "saga_type", "step", "correlation_id")
    return {name: parsed[name] for name in fields if isinstance(parsed.get(name), str)}
