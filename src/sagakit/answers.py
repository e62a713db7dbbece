"""Answers: what a step's run answers, and how decide() classifies every reply (Semantics 5, 10).

A reply answers one attempt of a step's action or of its compensation. What it is, relative to
what was sent (:class:`ReplyKind`), and the state of the phase it answers decide whether it is

- ``rejected``: the attempt was never sent (or the compensation never started); the message is
  dead-lettered with the reason and nothing is written;
- ``late``: it says nothing new (its phase has moved on, it is an error of an attempt that
  is no longer current, or it answers an earlier generation of the step); recorded in the
  history, nothing else changes;
- ``duplicate``: a success for a phase already done; recorded, nothing else changes;
- ``apply``: decide() acts on it (what that does depends on the step's kind, the saga's status
  and the retry budget; docs/concepts.md writes it out).

:data:`ANSWER_TABLE` is that classification as data, and decide() reads it; the tests check
that decide() follows every row and that docs/concepts.md shows the same table.

:func:`outcome_of` is the one mapping from an exception raised by step code to the answer it
gives, for local steps and participants alike; :func:`unsent` is the answer of a command that
could not be sent at all.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from sagakit.definition import Phase
from sagakit.encoding import printable
from sagakit.errors import EncodingError, StepError, StepFailed
from sagakit.events import Outcome
from sagakit.state import CompensationStatus, HistoryKind, StepState, StepStatus


class ReplyKind(enum.StrEnum):
    """What a reply is, relative to the attempts its phase has sent.

    A definite answer counts whichever attempt of the step's generation it comes from (they
    share one idempotency key); an error is told apart by whether it answers the attempt sent
    last. Any answer of an earlier generation (before an operator's retry gave the step a
    new key, Semantics 2) says nothing about the current one.
    """

    SUCCESS = "success"
    FAILURE = "failure"
    ERROR = "error"  # an error of the attempt sent last
    OLDER_ERROR = "older error"  # an error of an attempt sent before the last one
    OLDER_GENERATION = "older generation"  # any answer of an earlier generation of the step
    NEVER_SENT = "never sent"  # attempt 0, one beyond the last sent, or a generation to come


class Handling(enum.StrEnum):
    """What decide() does with a reply of a kind, in a state."""

    REJECTED = "rejected"
    LATE = "late"
    DUPLICATE = "duplicate"
    APPLY = "apply"


#: The state of the phase a reply answers: a step's status for its action, its compensation's
#: status for its compensation (None: the compensation never started).
PhaseState = StepStatus | CompensationStatus | None

#: The in-flight states of each phase: waiting for an attempt's answer, or for a retry.
RUNNING: Mapping[Phase, PhaseState] = {
    Phase.ACTION: StepStatus.RUNNING,
    Phase.COMPENSATION: CompensationStatus.RUNNING,
}
RETRYING: Mapping[Phase, PhaseState] = {
    Phase.ACTION: StepStatus.RETRYING,
    Phase.COMPENSATION: CompensationStatus.RETRYING,
}

_R, _L, _D, _A = Handling.REJECTED, Handling.LATE, Handling.DUPLICATE, Handling.APPLY
_IN_FLIGHT_RUNNING = (_A, _A, _A, _L, _L, _R)  # an error of the attempt in flight is news
_IN_FLIGHT_RETRYING = (_A, _A, _L, _L, _L, _R)  # the attempt sent last already erred
_DONE = (_D, _L, _L, _L, _L, _R)
_SETTLED = (_L, _L, _L, _L, _L, _R)
# Nothing sent in this generation; an earlier generation's answer is late all the same.
_NOT_SENT = (_R, _R, _R, _R, _L, _R)

_COLUMNS = tuple(ReplyKind)
#: (phase, state) -> one handling per reply kind, in the order of :class:`ReplyKind`.
ANSWER_ROWS: Mapping[tuple[Phase, PhaseState], tuple[Handling, ...]] = {
    (Phase.ACTION, StepStatus.PENDING): _NOT_SENT,
    (Phase.ACTION, StepStatus.RUNNING): _IN_FLIGHT_RUNNING,
    (Phase.ACTION, StepStatus.RETRYING): _IN_FLIGHT_RETRYING,
    (Phase.ACTION, StepStatus.DONE): _DONE,
    (Phase.ACTION, StepStatus.FAILED): _SETTLED,
    (Phase.ACTION, StepStatus.UNKNOWN): _SETTLED,
    (Phase.ACTION, StepStatus.COMPENSATING): _SETTLED,
    (Phase.ACTION, StepStatus.COMPENSATED): _SETTLED,
    (Phase.ACTION, StepStatus.RESOLVED): _SETTLED,
    (Phase.COMPENSATION, None): _NOT_SENT,
    (Phase.COMPENSATION, CompensationStatus.RUNNING): _IN_FLIGHT_RUNNING,
    (Phase.COMPENSATION, CompensationStatus.RETRYING): _IN_FLIGHT_RETRYING,
    (Phase.COMPENSATION, CompensationStatus.DONE): _DONE,
    (Phase.COMPENSATION, CompensationStatus.FAILED): _SETTLED,
    (Phase.COMPENSATION, CompensationStatus.RESOLVED): _SETTLED,
}

#: (phase, state, reply kind) -> handling: the table decide() reads, one lookup per reply.
ANSWER_TABLE: Mapping[tuple[Phase, PhaseState, ReplyKind], Handling] = {
    (phase, state, kind): handling
    for (phase, state), row in ANSWER_ROWS.items()
    for kind, handling in zip(_COLUMNS, row, strict=True)
}

#: How a reply that changes nothing is recorded in the history.
RECORDED_AS: Mapping[Handling, HistoryKind] = {
    Handling.LATE: HistoryKind.LATE_REPLY,
    Handling.DUPLICATE: HistoryKind.DUPLICATE_REPLY,
}


def reply_kind(
    outcome: Outcome, attempt: int, sent: int, generation: int = 1, current: int = 1
) -> ReplyKind:
    """The kind of a reply for ``attempt`` of generation ``generation`` with ``outcome``, when
    ``sent`` attempts were sent and the step is in generation ``current``."""
    if generation != current or attempt < 1:
        if generation < current and attempt >= 1:
            return ReplyKind.OLDER_GENERATION
        return ReplyKind.NEVER_SENT
    if attempt > sent:
        return ReplyKind.NEVER_SENT
    if outcome is Outcome.SUCCESS:
        return ReplyKind.SUCCESS
    if outcome is Outcome.FAILURE:
        return ReplyKind.FAILURE
    return ReplyKind.ERROR if attempt == sent else ReplyKind.OLDER_ERROR


def classify(
    phase: Phase,
    state: PhaseState,
    outcome: Outcome,
    attempt: int,
    sent: int,
    generation: int = 1,
    current: int = 1,
) -> Handling:
    """How decide() handles a reply for ``attempt`` of ``phase`` in step generation
    ``generation``, whose state is ``state``, which has sent ``sent`` attempts, and whose
    step is in generation ``current``."""
    return ANSWER_TABLE[phase, state, reply_kind(outcome, attempt, sent, generation, current)]


@dataclass(frozen=True)
class Answer:
    """What a step whose code raised answers: the reply's outcome, the error recorded for it,
    and whether (and after how many seconds) to retry. ``unexpected`` marks an exception that
    step code did not raise on purpose (a bug, most likely): only its message is recorded, so
    the runner logs its traceback."""

    outcome: Outcome
    error: str
    retryable: bool = True
    retry_after: float | None = None
    unexpected: bool = False


def unsent(state: StepState, phase: Phase, error: str) -> Answer:
    """The answer of a step's command that could not be built or sent (Semantics 5).

    Nothing went out for this attempt. When it is the first attempt under its idempotency
    key, nothing was done at all: a definite failure (the step is not compensated). After
    earlier attempts under the same key (retries, or an operator's retry of a step whose
    outcome is unknown), one of them may have taken effect: a final error, so the outcome is
    unknown.
    """
    if phase is Phase.ACTION:
        first = state.attempts - state.budget_from == 1 and state.outcome_known
    else:
        first = state.compensation is not None and state.compensation.attempts == 1
    if first:
        return Answer(Outcome.FAILURE, error)
    return Answer(Outcome.ERROR, error, retryable=False)


def outcome_of(exc: Exception, *, timeout: float | None = None) -> Answer:
    """The answer of a step whose code raised ``exc``.

    :class:`~sagakit.errors.StepFailed` is a definite failure and
    :class:`~sagakit.errors.StepError` an error that carries its own retry decision; their
    message is the step's own reason, recorded as it is. A ``TimeoutError``, where the runner
    bounds the step by ``timeout`` seconds, is that timeout. An
    :class:`~sagakit.errors.EncodingError` (a result that cannot be encoded) is final: another
    attempt would produce the same value (Semantics 14). Any other exception is unexpected: a
    retryable error, recorded as ``TypeName: message``.
    """
    if isinstance(exc, StepFailed):
        return Answer(Outcome.FAILURE, printable(str(exc)) or "failed")
    if isinstance(exc, StepError):
        return Answer(Outcome.ERROR, printable(str(exc)) or "error", exc.retryable, exc.retry_after)
    if timeout is not None and isinstance(exc, TimeoutError):
        return Answer(Outcome.ERROR, f"timed out after {timeout:g}s")
    if isinstance(exc, EncodingError):
        return Answer(Outcome.ERROR, printable(str(exc)), retryable=False)
    # The text is a value too (Semantics 14): escaped, so that any store can record it.
    return Answer(Outcome.ERROR, printable(f"{type(exc).__name__}: {exc}"), unexpected=True)
