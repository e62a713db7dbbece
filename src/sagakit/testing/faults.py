"""Deterministic crash injection: kill the process at the k-th durable write.

:class:`FaultyStore` and :class:`FaultyTransport` wrap a real store and transport (they are
adapters held to the same ports, not patches of internals). Every durable write — a store
commit, a participant transaction, an outbox hand-off to the transport — counts once; at
write number ``crash_at`` the process dies on the spot with ``os._exit`` (no cleanup, no
flush: like SIGKILL), either just ``before`` the write or just ``after`` it, before anything
acts on it. A test runs a scenario in a subprocess for every k, restarts it without the
crash, and checks the invariants.

Configure from the environment with :func:`crash_plan_from_env` (``SAGAKIT_CRASH_AT``,
``SAGAKIT_CRASH_WHEN``).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sagakit.ports import Batch, MessageHandler, ParticipantTx, Store, Transport

T = TypeVar("T")

#: Exit status of a process killed by an injected crash.
CRASH_EXIT_CODE = 86


@dataclass
class CrashPlan:
    """Die at durable write number ``crash_at`` (1-based), ``before`` or ``after`` it."""

    crash_at: int | None = None
    when: str = "before"
    writes: int = 0
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.when not in ("before", "after"):
            raise ValueError("when must be 'before' or 'after'")

    def begin(self, label: str) -> int:
        """Count a durable write about to happen; returns its number."""
        self.writes += 1
        self.log.append(label)
        if self.writes == self.crash_at and self.when == "before":
            os._exit(CRASH_EXIT_CODE)
        return self.writes

    def end(self, number: int) -> None:
        """Write ``number`` is durable; nothing has acted on it yet."""
        if number == self.crash_at and self.when == "after":
            os._exit(CRASH_EXIT_CODE)


def crash_plan_from_env() -> CrashPlan:
    at = os.environ.get("SAGAKIT_CRASH_AT")
    return CrashPlan(
        crash_at=int(at) if at else None,
        when=os.environ.get("SAGAKIT_CRASH_WHEN", "before"),
    )


class FaultyStore:
    """A store whose durable writes count towards a :class:`CrashPlan`."""

    def __init__(self, inner: Store, plan: CrashPlan) -> None:
        self._inner = inner
        self._plan = plan

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def commit(self, batch: Batch) -> list[bool]:
        number = self._plan.begin("commit")
        result = await self._inner.commit(batch)
        self._plan.end(number)
        return result

    async def transaction(self, fn: Callable[[ParticipantTx], Awaitable[T]]) -> T:
        number = self._plan.begin("participant")
        result = await self._inner.transaction(fn)
        self._plan.end(number)
        return result


class FaultyTransport:
    """A transport whose hand-offs count towards a :class:`CrashPlan`."""

    def __init__(self, inner: Transport, plan: CrashPlan) -> None:
        self._inner = inner
        self._plan = plan

    async def publish(self, destination: str, body: bytes) -> None:
        number = self._plan.begin(f"publish:{destination}")
        await self._inner.publish(destination, body)
        self._plan.end(number)

    async def subscribe(self, destination: str, handler: MessageHandler) -> None:
        await self._inner.subscribe(destination, handler)

    async def unsubscribe(self, destination: str) -> None:
        await self._inner.unsubscribe(destination)

    async def close(self) -> None:
        await self._inner.close()
