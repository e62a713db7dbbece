"""Contract tests for the Transport port, run against every transport adapter.

Adding a broker (RabbitMQ, NATS, Redis) is one more entry in ``ADAPTERS``. Some promises
belong to the in-process transport alone (``publish`` awaits the consumer's handler, so a
handler's failure reaches the publisher); a broker keeps the message and delivers it again
instead. Those tests are gated by the adapter's ``in_process`` flag.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sagakit.errors import TransportError
from sagakit.ports import OutboxMessage, ParticipantTx, Transport
from sagakit.storage import SqliteStore
from sagakit.transport import MemoryTransport

DEADLINE = 5.0


@dataclass(frozen=True)
class TransportAdapter:
    """How the contract tests open one transport. ``in_process``: publish awaits the handler
    (a broker's publish returns once the broker holds the message)."""

    name: str
    factory: Callable[[], Transport]
    in_process: bool

    async def open(self) -> Transport:
        return self.factory()


# One line per transport. RabbitMQ, for example:
#   pytest.param(TransportAdapter("rabbitmq", rabbit_transport, in_process=False),
#                id="rabbitmq", marks=pytest.mark.rabbitmq),
ADAPTERS = [
    pytest.param(TransportAdapter("memory", MemoryTransport, in_process=True), id="memory"),
]


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> TransportAdapter:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def transport(adapter: TransportAdapter) -> AsyncIterator[Transport]:
    opened = await adapter.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def in_process(adapter: TransportAdapter) -> None:
    if not adapter.in_process:
        pytest.skip(f"{adapter.name}: publish hands over to a broker, not to the handler")


class Inbox:
    """A consumer that records what it receives, and lets a test wait for it."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self._arrived = asyncio.Event()

    async def __call__(self, body: bytes) -> None:
        self.bodies.append(body)
        self._arrived.set()

    async def wait(self, count: int) -> list[bytes]:
        try:
            async with asyncio.timeout(DEADLINE):
                while len(self.bodies) < count:
                    await self._arrived.wait()
                    self._arrived.clear()
        except TimeoutError:
            pytest.fail(f"{count} deliveries expected in {DEADLINE}s, got {len(self.bodies)}")
        return self.bodies


class TestTransport:
    async def test_a_published_message_reaches_its_subscriber_unchanged(
        self, transport: Transport
    ) -> None:
        inventory, payment = Inbox(), Inbox()
        await transport.subscribe("inventory", inventory)
        await transport.subscribe("payment", payment)
        body = b'{"k":"\xc3\xa9"}' + bytes(range(256))
        await transport.publish("inventory", body)
        await transport.publish("payment", b"p1")
        await transport.publish("inventory", b"i2")
        assert await inventory.wait(2) == [body, b"i2"]
        assert await payment.wait(1) == [b"p1"]

    async def test_a_second_subscriber_to_a_destination_is_refused(
        self, transport: Transport
    ) -> None:
        await transport.subscribe("inventory", Inbox())
        with pytest.raises(TransportError, match="inventory"):
            await transport.subscribe("inventory", Inbox())

    async def test_close_can_be_called_twice(self, adapter: TransportAdapter) -> None:
        opened = await adapter.open()
        await opened.subscribe("inventory", Inbox())
        await opened.close()
        await opened.close()


@pytest.mark.usefixtures("in_process")
class TestInProcessDelivery:
    async def test_publish_returns_only_after_the_handler_returned(
        self, transport: Transport
    ) -> None:
        entered, release = asyncio.Event(), asyncio.Event()
        committed: list[bytes] = []

        async def handler(body: bytes) -> None:
            entered.set()
            await release.wait()
            committed.append(body)

        await transport.subscribe("inventory", handler)
        publishing = asyncio.create_task(transport.publish("inventory", b"m1"))
        await asyncio.wait_for(entered.wait(), DEADLINE)
        assert not publishing.done()  # the handler has not returned: neither has publish
        release.set()
        await asyncio.wait_for(publishing, DEADLINE)
        assert committed == [b"m1"]

    async def test_a_handler_exception_surfaces_as_transport_error(
        self, transport: Transport
    ) -> None:
        async def failing(body: bytes) -> None:
            raise RuntimeError("database is down")

        await transport.subscribe("inventory", failing)
        with pytest.raises(TransportError, match="database is down") as caught:
            await transport.publish("inventory", b"m1")
        assert isinstance(caught.value.__cause__, RuntimeError)

    async def test_cancellation_is_not_turned_into_a_transport_error(
        self, transport: Transport
    ) -> None:
        entered = asyncio.Event()

        async def slow(body: bytes) -> None:
            entered.set()
            await asyncio.Event().wait()

        await transport.subscribe("inventory", slow)
        publishing = asyncio.create_task(transport.publish("inventory", b"m1"))
        await asyncio.wait_for(entered.wait(), DEADLINE)
        publishing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await publishing

    async def test_publish_without_a_subscriber_is_a_transport_error(
        self, transport: Transport
    ) -> None:
        with pytest.raises(TransportError, match="nobody"):
            await transport.publish("nobody", b"m1")

    async def test_after_close_nothing_is_subscribed(self, adapter: TransportAdapter) -> None:
        opened = await adapter.open()
        await opened.subscribe("inventory", Inbox())
        await opened.close()
        with pytest.raises(TransportError):
            await opened.publish("inventory", b"m1")

    async def test_a_failing_consumer_leaves_the_publishers_outbox_row_pending(
        self, transport: Transport, tmp_path: Path
    ) -> None:
        """An outbox row is done only once publish returned: a consumer that fails keeps the
        row pending, and the next pass delivers it once the consumer works again."""
        store = SqliteStore(str(tmp_path / "outbox.db"), create=True)
        received: list[bytes] = []
        healthy = False

        async def consumer(body: bytes) -> None:
            if not healthy:
                raise RuntimeError("not yet")
            received.append(body)

        async def relay_pass() -> list[str]:
            """What a relay does: publish each pending row, mark done what went through."""
            done = []
            for m in await store.pending("orders", 100):
                try:
                    await transport.publish(m.destination, m.body)
                except TransportError:
                    continue
                await store.transaction(functools.partial(_mark_done, m.id))
                done.append(m.id)
            return done

        try:
            await transport.subscribe("inventory", consumer)
            row = OutboxMessage("m1", "orders", "inventory", b"reserve", "s1")
            await store.transaction(lambda tx: tx.outbox_put(row))

            assert await relay_pass() == []
            assert await store.pending("orders", 10) == [row]
            assert received == []

            healthy = True
            assert await relay_pass() == ["m1"]
            assert received == [b"reserve"]
            assert await store.pending("orders", 10) == []
        finally:
            await store.close()


async def _mark_done(message_id: str, tx: ParticipantTx) -> None:
    await tx.outbox_done([message_id])
