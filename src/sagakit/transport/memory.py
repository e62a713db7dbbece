"""The in-process transport: the default, for one process.

``publish`` awaits the consumer's handler, so it returns only once the consumer has committed
the message's effect. The outbox row behind a message therefore stays pending until then, and
a process killed at any moment loses nothing: the relay publishes the row again on restart.
"""

from __future__ import annotations

from sagakit.errors import TransportError
from sagakit.ports import MessageHandler


class MemoryTransport:
    """Direct, in-process delivery to one consumer per destination."""

    def __init__(self) -> None:
        self._handlers: dict[str, MessageHandler] = {}

    async def publish(self, destination: str, body: bytes) -> None:
        handler = self._handlers.get(destination)
        if handler is None:
            raise TransportError(f"no consumer subscribed to {destination!r}")
        try:
            await handler(body)
        except TransportError:
            raise
        except Exception as exc:
            raise TransportError(f"consumer of {destination!r} failed: {exc}") from exc

    async def subscribe(self, destination: str, handler: MessageHandler) -> None:
        if destination in self._handlers:
            raise TransportError(f"{destination!r} already has a consumer in this process")
        self._handlers[destination] = handler

    def serves(self, destination: str) -> bool:
        """Whether a consumer in this process is subscribed to ``destination``."""
        return destination in self._handlers

    async def unsubscribe(self, destination: str) -> None:
        self._handlers.pop(destination, None)

    async def close(self) -> None:
        self._handlers.clear()
