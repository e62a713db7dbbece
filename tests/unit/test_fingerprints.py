"""A definition's fingerprint is what it declares (Semantics 1): refactoring the functions
behind its steps or tuning retries and timeouts keeps it; any change to the declared steps
makes another one. The v1 fingerprint is kept, to recognise the instances that carry it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sagakit import RetryPolicy, Saga, SagaDefinition, StepContext


async def reserve(ctx: StepContext[Any]) -> None:
    return None


async def release(ctx: StepContext[Any]) -> None:
    return None


async def reserve_renamed(ctx: StepContext[Any]) -> None:
    return None


async def release_renamed(ctx: StepContext[Any]) -> None:
    return None


DEFAULT = RetryPolicy()


def order(
    *,
    name: str = "order",
    version: int = 1,
    action: Any = reserve,
    compensation: Any = release,
    retry: RetryPolicy = DEFAULT,
    timeout: float = 30.0,
    deadline: float | None = None,
    kind: str = "pivot",
    command: str = "pay.charge",
    remote_compensation: str | None = None,
    local_name: str = "reserve",
) -> SagaDefinition:
    saga: Saga[Any] = Saga(name, version=version, deadline=deadline)
    saga.local(local_name, action, compensation=compensation, retry=retry, timeout=timeout)
    if remote_compensation is not None:
        saga.remote(
            "charge",
            participant="payments",
            command=command,
            compensation=remote_compensation,
            timeout=timeout,
        )
    else:
        saga.remote("charge", participant="payments", command=command, kind=kind)
    return saga.build()


def test_the_fingerprint_says_its_version() -> None:
    fingerprint = order().fingerprint
    assert fingerprint.startswith("v2:") and len(fingerprint) == 3 + 16
    assert not order().legacy_fingerprint.startswith("v2:")


@pytest.mark.parametrize(
    "refactored",
    [
        lambda: order(action=reserve_renamed, compensation=release_renamed),
        lambda: order(retry=RetryPolicy(max_attempts=9, initial_delay=2.0)),
        lambda: order(timeout=300.0),
        lambda: order(deadline=3600.0),
    ],
    ids=["functions renamed", "retry policy", "timeouts", "deadline"],
)
def test_refactoring_and_tuning_keep_the_fingerprint(
    refactored: Callable[[], SagaDefinition],
) -> None:
    assert refactored().fingerprint == order().fingerprint


def test_a_renamed_function_changed_the_legacy_fingerprint() -> None:
    # The reason for v2: v1 named the functions, so a rename stranded running instances.
    renamed = order(compensation=release_renamed)
    assert renamed.legacy_fingerprint != order().legacy_fingerprint


@pytest.mark.parametrize(
    "changed",
    [
        lambda: order(name="order2"),
        lambda: order(version=2),
        lambda: order(local_name="hold"),
        lambda: order(kind="retriable"),
        lambda: order(command="pay.capture"),
        lambda: order(remote_compensation="pay.refund"),
        lambda: (
            Saga("order")
            .remote("reserve", participant="stock", command="stock.hold", compensation="stock.free")
            .remote("charge", participant="payments", command="pay.charge", kind="pivot")
            .build()
        ),
        lambda: (
            Saga("order")
            .remote("charge", participant="payments", command="pay.charge", kind="pivot")
            .remote("reserve", participant="stock", command="stock.hold", kind="retriable")
            .build()
        ),
    ],
    ids=[
        "name",
        "version",
        "step name",
        "kind (the pivot)",
        "command",
        "a compensation",
        "local to remote",
        "order",
    ],
)
def test_a_declared_change_is_another_fingerprint(changed: Callable[[], SagaDefinition]) -> None:
    assert changed().fingerprint != order().fingerprint


def test_the_participant_and_the_compensation_command_are_declared() -> None:
    def remote(participant: str, compensation: str) -> SagaDefinition:
        return (
            Saga("order")
            .remote("r", participant=participant, command="c", compensation=compensation)
            .build()
        )

    fingerprints = {remote(p, c).fingerprint for p in ("a", "b") for c in ("x", "y")}
    assert len(fingerprints) == 4
