"""The outbox relay: delivers committed messages at least once (C2, Semantics 3).

Messages reach the relay two ways: straight after the commit that wrote them (the fast path),
and from a periodic rescan of the outbox (the safety net: a restart, a failed publish). A
message is in flight from the moment it is handed over until its row is deleted, so the two
paths never deliver the same row twice at once; a crash may deliver it twice in all, which
consumers absorb through their inbox or the state machine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from sagakit.ports import Outbox, OutboxMessage

log = logging.getLogger("sagakit.relay")

#: Delivers one message; returns once it is safely handed over (then it is marked done).
Deliver = Callable[[OutboxMessage], Awaitable[None]]
MarkDone = Callable[[str], Awaitable[None]]


class Relay:
    def __init__(
        self,
        outbox: Outbox,
        source: str,
        deliver: Deliver,
        mark_done: MarkDone,
        *,
        rescan_interval: float = 2.0,
        retry_delay: float = 0.5,
    ) -> None:
        self._outbox = outbox
        self._source = source
        self._deliver = deliver
        self._mark_done = mark_done
        self._rescan_interval = rescan_interval
        self._retry_delay = retry_delay
        self._in_flight: set[str] = set()
        # Delivered since the current rescan began: its query may still have seen them.
        self._recent: set[str] = set()
        self._rescanning = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._rescan_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._rescan_task = asyncio.create_task(self._rescan_loop(), name=f"relay-{self._source}")

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._rescan_task] if self._rescan_task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    def send(self, messages: Iterable[OutboxMessage]) -> None:
        for message in messages:
            if message.id in self._in_flight:
                continue
            self._in_flight.add(message.id)
            task = asyncio.create_task(self._handle(message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def rescan(self) -> int:
        """Hand over every pending row not already in flight; returns how many."""
        async with self._rescanning:  # one at a time: each relies on its own _recent window
            self._recent.clear()
            pending = await self._outbox.pending(self._source, 10_000)
            fresh = [m for m in pending if m.id not in self._in_flight and m.id not in self._recent]
            self.send(fresh)
            return len(fresh)

    async def _handle(self, message: OutboxMessage) -> None:
        try:
            await self._deliver(message)
            await self._mark_done(message.id)
            self._recent.add(message.id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "delivery of %s to %s failed, will retry: %s",
                message.id,
                message.destination,
                exc,
                extra={"saga_id": message.saga_id},
            )
            await asyncio.sleep(self._retry_delay)
        finally:
            self._in_flight.discard(message.id)

    async def _rescan_loop(self) -> None:
        while True:
            try:
                await self.rescan()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox rescan of %s failed: %s", self._source, exc)
            await asyncio.sleep(self._rescan_interval)
