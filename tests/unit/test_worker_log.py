"""The worker says what happens: a log line for every step failure, retry, timeout,
compensation, stuck instance, takeover and dead letter, with the saga's fields, derived from
what was committed; the traceback of an unexpected exception in a local step; and nothing per
step at the default level for sagas that go well."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from sagakit import (
    App,
    MemoryTransport,
    Participant,
    ParticipantTx,
    RetryPolicy,
    Saga,
    SagaStatus,
    SqliteStore,
    StepContext,
    StepFailed,
    Worker,
)
from sagakit.logs import JsonFormatter
from sagakit.participant import Command
from sagakit.state import HistoryEntry, HistoryKind, SagaInstance
from sagakit.worker.items import Work
from sagakit.worker.logbook import SAGA_LOGGER, Logbook

FAST = RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=0.0)


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)


class Lines(logging.Handler):
    """The records of ``sagakit.saga`` (and the worker's), kept as they are logged."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def of(self, event: str, **fields: object) -> list[logging.LogRecord]:
        return [
            r
            for r in self.records
            if getattr(r, "event", None) == event
            and all(getattr(r, k, None) == v for k, v in fields.items())
        ]


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger(SAGA_LOGGER)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def order_saga() -> Saga[Any]:
    """reserve, then charge: declined for {"decline": true} (a definite failure)."""

    async def reserve(ctx: StepContext[Any]) -> dict[str, int]:
        return {"held": 1}

    async def release(ctx: StepContext[Any]) -> None:
        return None

    async def charge(ctx: StepContext[Any]) -> str:
        if ctx.data.get("decline"):
            raise StepFailed("card declined")
        return "charged"

    async def refund(ctx: StepContext[Any]) -> None:
        return None

    return (
        Saga("order")
        .local("reserve", reserve, compensation=release)
        .local("charge", charge, compensation=refund)
    )


def flaky_saga() -> Saga[Any]:
    """A step past the point of no return whose code has a bug: retried, then stuck."""

    async def ship(ctx: StepContext[Any]) -> None:
        raise RuntimeError("disk on fire")

    return Saga("flaky").local("ship", ship, kind="retriable", retry=FAST)


def mail_saga() -> Saga[Any]:
    """A remote step whose participant never answers: it times out, is retried, then stuck."""
    return Saga("mail").remote(
        "send", participant="mailer", command="mail", kind="retriable", timeout=0.05, retry=FAST
    )


def app() -> App:
    return App(sagas=[order_saga(), flaky_saga(), mail_saga()], participants=[Participant("x")])


async def test_the_log_has_a_line_for_each_kind_of_event(tmp_path: Path, lines: Lines) -> None:
    db = str(tmp_path / "log.db")
    transport = MemoryTransport()

    async def mailer(body: bytes) -> None:  # never answers
        return None

    await transport.subscribe("mailer", mailer)
    store = SqliteStore(db, owner=True)
    try:
        async with Worker(app(), store, transport) as worker:
            declined = await worker.client.run(
                order_saga(), {"decline": True}, correlation_id="c-1", timeout=10
            )
            flaky = await worker.client.run(flaky_saga(), {}, correlation_id="c-2", timeout=10)
            mail = await worker.client.run(mail_saga(), {}, correlation_id="c-3", timeout=10)
            await transport.publish("sagakit.replies", b"{not json")

            async def lettered() -> bool:
                return bool(lines.of("dead_letter"))

            await until(lettered)
    finally:
        await store.close()
    assert declined.status is SagaStatus.FAILED
    assert flaky.status is mail.status is SagaStatus.STUCK

    # Another worker takes the stuck instances over from the one that stopped.
    store = SqliteStore(db, owner=True)
    try:
        async with Worker(app(), store, MemoryTransport()) as second:
            takeovers = lines.of("takeover")
            second_id = second.worker_id
    finally:
        await store.close()

    # A step failure; compensation: the saga compensates, each step's undo runs, it fails.
    failure = lines.of("reply", saga_id=declined.saga_id, step="charge")
    assert [r.reason for r in failure] == ["card declined"]  # type: ignore[attr-defined]
    [compensating] = lines.of("status", saga_id=declined.saga_id, levelno=logging.WARNING)[:1]
    assert "compensating: step 'charge' failed: card declined" in compensating.getMessage()
    assert compensating.correlation_id == "c-1"  # type: ignore[attr-defined]
    assert compensating.saga_type == "order"  # type: ignore[attr-defined]
    undone = lines.of("dispatched", saga_id=declined.saga_id, phase="compensation")
    assert [r.step for r in undone] == ["reserve"]  # type: ignore[attr-defined]
    failed = lines.of("status", saga_id=declined.saga_id)[-1]
    assert failed.levelno == logging.WARNING and "failed" in failed.getMessage()

    # A retry; an unexpected exception with its traceback; a stuck instance at ERROR.
    [retry] = lines.of("retry_scheduled", saga_id=flaky.saga_id)
    assert retry.levelno == logging.INFO
    assert retry.reason == "RuntimeError: disk on fire"  # type: ignore[attr-defined]
    crashes = lines.of("unexpected_exception", saga_id=flaky.saga_id)
    assert len(crashes) == 2 and all(r.levelno == logging.WARNING for r in crashes)
    assert crashes[0].exc_info is not None
    assert "disk on fire" in logging.Formatter().formatException(crashes[0].exc_info)
    [stuck] = lines.of("status", saga_id=flaky.saga_id, levelno=logging.ERROR)
    assert stuck.step == "ship"  # type: ignore[attr-defined]
    assert "stuck: step 'ship' exhausted its retry policy" in stuck.getMessage()

    # A timeout (of a remote step, by its durable timer), then its retry.
    timeouts = lines.of("timed_out", saga_id=mail.saga_id)
    assert [r.attempt for r in timeouts] == [1, 2]  # type: ignore[attr-defined]
    [retried] = lines.of("retry_scheduled", saga_id=mail.saga_id)
    assert retried.reason == "timed out"  # type: ignore[attr-defined]

    # A dead letter, with its reason.
    [letter] = lines.of("dead_letter")
    assert letter.levelno == logging.WARNING and "malformed" in letter.reason  # type: ignore[attr-defined]

    # Takeovers, from the worker that stopped.
    assert {r.saga_id for r in takeovers} == {flaky.saga_id, mail.saga_id}  # type: ignore[attr-defined]
    for record in takeovers:
        assert record.levelno == logging.INFO
        assert record.reason == "worker stopped"  # type: ignore[attr-defined]
        assert f"taken over by {second_id}" in record.getMessage()

    # Every line about a saga says which one, of what type, under which correlation id.
    for record in lines.records:
        if getattr(record, "event", None) not in (None, "dead_letter"):
            assert record.saga_id and record.saga_type and record.correlation_id  # type: ignore[attr-defined]


async def test_at_the_default_level_a_saga_that_goes_well_says_nothing(
    tmp_path: Path, lines: Lines
) -> None:
    logging.getLogger(SAGA_LOGGER).setLevel(logging.INFO)
    store = SqliteStore(str(tmp_path / "quiet.db"), owner=True)
    try:
        async with Worker(App(sagas=[order_saga()]), store) as worker:
            done = await worker.client.run(order_saga(), {}, timeout=10)
            declined = await worker.client.run(order_saga(), {"decline": True}, timeout=10)
    finally:
        await store.close()
    assert done.status is SagaStatus.COMPLETED
    assert not [r for r in lines.records if getattr(r, "saga_id", None) == done.saga_id]
    # A saga that fails: two lines, one as compensation begins (why), one as it ends.
    said = [
        (r.levelname, r.event)  # type: ignore[attr-defined]
        for r in lines.records
        if getattr(r, "saga_id", None) == declined.saga_id
    ]
    assert said == [("WARNING", "status"), ("WARNING", "status")]


def test_no_entry_is_looked_at_when_the_logger_is_above_every_line() -> None:
    class Untouchable:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the work's {name} was looked at")

    logger = logging.getLogger("sagakit.test.silent")
    logger.setLevel(logging.CRITICAL)
    Logbook(logger).committed([cast(Work, Untouchable())], [True])


def test_below_the_level_no_line_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    import sagakit.worker.logbook as logbook

    def refuse(*args: object) -> None:
        raise AssertionError("a line was described")

    monkeypatch.setattr(logbook, "_describe", refuse)
    logger = logging.getLogger("sagakit.test.info")
    logger.setLevel(logging.INFO)
    work = Work("s", instance("s"), 1, False)
    work.transition.history = [
        HistoryEntry(1.0, HistoryKind.CREATED),
        HistoryEntry(1.0, HistoryKind.STATUS, detail={"from": "started", "to": "pending"}),
        HistoryEntry(1.0, HistoryKind.DISPATCHED, "a", "action", 1),
        HistoryEntry(1.0, HistoryKind.REPLY, "a", "action", 1, {"outcome": "success"}),
        HistoryEntry(1.0, HistoryKind.STATUS, detail={"from": "pending", "to": "completed"}),
    ]
    Logbook(logger).committed([work], [True])


def instance(saga_id: str) -> SagaInstance:
    return SagaInstance(
        saga_id, "order", 1, "fp", SagaStatus.PENDING, {}, (), f"c-{saga_id}", 0.0, 0.0
    )


async def test_a_participant_logs_the_traceback_of_an_unexpected_exception(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bank = Participant("bank")

    @bank.command("debit")
    async def debit(tx: ParticipantTx, cmd: Command) -> Any:
        raise KeyError("account")

    saga: Saga[Any] = Saga("pay").remote(
        "debit", participant="bank", command="debit", kind="retriable", retry=FAST
    )
    store = SqliteStore(str(tmp_path / "p.db"), owner=True)
    caplog.set_level(logging.WARNING, logger="sagakit.participant")
    try:
        async with Worker(App(sagas=[saga], participants=[bank]), store) as worker:
            stuck = await worker.client.run(saga, {}, timeout=10)
    finally:
        await store.close()
    assert stuck.status is SagaStatus.STUCK
    crashes = [r for r in caplog.records if getattr(r, "event", None) == "unexpected_exception"]
    assert crashes and crashes[0].exc_info is not None
    assert crashes[0].saga_id == stuck.saga_id  # type: ignore[attr-defined]


def test_json_lines_carry_the_saga_s_fields_and_the_traceback() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("sagakit.test.json")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        logger.warning(
            "saga %s: compensating",
            "s-1",
            extra={"saga_id": "s-1", "saga_type": "order", "step": None, "reason": "declined"},
        )
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("crashed", extra={"attempt": 2})
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert set(first) == {"time", "level", "logger", "message", "saga_id", "saga_type", "reason"}
    assert first["level"] == "WARNING" and first["logger"] == "sagakit.test.json"
    assert first["message"] == "saga s-1: compensating" and first["time"].endswith("Z")
    assert second["attempt"] == 2 and "ValueError: boom" in second["traceback"]


def test_every_kind_of_history_entry_has_a_level() -> None:
    import sagakit.worker.logbook as logbook

    assert set(logbook._LEVEL) == set(HistoryKind)
