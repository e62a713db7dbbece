"""Transport adapters: ``memory`` (in-process, the default)."""

from __future__ import annotations

from sagakit.transport.memory import MemoryTransport

__all__ = ["MemoryTransport"]
