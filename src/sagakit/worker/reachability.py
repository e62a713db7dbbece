"""Reachability: which participants a command can reach at all.

With the in-process transport (the default) a command reaches only a participant served in
this very process; nothing else can ever consume it. A remote step whose participant nothing
here serves would otherwise have its command retried by the relay and its attempts time out,
one after the other, with nothing saying why. So the worker warns at start for every such
participant, and while it runs a command for one is not sent: its step ends at once with the
reason (see ``Applier``). Over a broker a consumer may live anywhere, and nothing is judged.
"""

from __future__ import annotations

import logging

from sagakit.app import App
from sagakit.definition import Remote
from sagakit.ports import Transport
from sagakit.transport.memory import MemoryTransport

log = logging.getLogger("sagakit.worker")


class Reachability:
    def __init__(self, app: App, transport: Transport) -> None:
        self._app = app
        self._memory = transport if isinstance(transport, MemoryTransport) else None
        # Judged only while the worker runs: before its start and during its stop, its own
        # participants are not (or no longer) subscribed.
        self._open = False

    def open(self) -> None:
        """The worker and its participants run: warn about what nothing here serves."""
        if self._memory is None:
            return
        self._open = True
        for participant, steps in sorted(self._needed().items()):
            if not self._memory.serves(participant):
                log.warning(
                    "participant %r is served by nothing in this process, and the in-process "
                    "transport reaches nothing else: %s will fail at once (register the "
                    "participant with the app, or use a broker)",
                    participant,
                    ", ".join(steps),
                )

    def close(self) -> None:
        self._open = False

    def unserved(self, participant: str) -> str | None:
        """Why a command to ``participant`` cannot be delivered, or None if it can."""
        memory = self._memory
        if memory is None or not self._open or memory.serves(participant):
            return None
        return (
            f"cannot send the command: nothing in this process serves participant "
            f"{participant!r} (in-process transport)"
        )

    def _needed(self) -> dict[str, list[str]]:
        """The steps (and compensations) of every definition, by the participant they need."""
        needed: dict[str, list[str]] = {}
        for definition in self._app.definitions:
            for step in definition.steps:
                for what, handler in (("step", step.action), ("compensation", step.compensation)):
                    if isinstance(handler, Remote):
                        needed.setdefault(handler.participant, []).append(
                            f"{what} {step.name!r} of {definition.name} v{definition.version}"
                        )
        return needed
