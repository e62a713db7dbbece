"""App: the explicit registry of sagas and participants that a worker runs.

There is no global registry: build an ``App`` and give it to a worker. Registration validates
everything up front and refuses an invalid app with a :class:`~sagakit.errors.DefinitionError`
naming the saga, the step and the rule.

>>> from sagakit import App, Saga
>>> saga = Saga("noop").remote("ping", participant="pinger", command="ping", kind="retriable")
>>> App(sagas=[saga]).definition("noop", 1).name
'noop'
"""

from __future__ import annotations

from collections.abc import Sequence

from sagakit.definition import Remote, Saga, SagaDefinition
from sagakit.errors import DefinitionError
from sagakit.participant import Participant


class App:
    """The sagas and participants a worker runs, validated when they are registered.

    Several versions of one saga may be registered side by side: an instance runs the version
    (and fingerprint) it started with, so a new version can be deployed while old instances
    finish. A remote step that targets a participant registered here must name a command that
    participant handles.
    """

    def __init__(
        self,
        *,
        sagas: Sequence[SagaDefinition | Saga[object]] = (),
        participants: Sequence[Participant] = (),
    ) -> None:
        self._definitions: dict[tuple[str, int], SagaDefinition] = {}
        self.participants: dict[str, Participant] = {}
        for participant in participants:
            if participant.name in self.participants:
                raise DefinitionError(f"participant {participant.name!r} registered twice")
            self.participants[participant.name] = participant
        for saga in sagas:
            definition = saga.build() if isinstance(saga, Saga) else saga
            key = (definition.name, definition.version)
            if key in self._definitions:
                raise DefinitionError(
                    f"saga {definition.name!r} version {definition.version} registered twice"
                )
            self._check_handlers(definition)
            self._definitions[key] = definition

    def _check_handlers(self, definition: SagaDefinition) -> None:
        for step in definition.steps:
            for handler in (step.action, step.compensation):
                if not isinstance(handler, Remote):
                    continue
                participant = self.participants.get(handler.participant)
                if participant is not None and handler.command not in participant.handlers:
                    raise DefinitionError(
                        f"saga {definition.name!r}, step {step.name!r}: participant "
                        f"{handler.participant!r} has no handler for {handler.command!r}"
                    )

    @property
    def definitions(self) -> list[SagaDefinition]:
        return list(self._definitions.values())

    def definition(self, name: str, version: int) -> SagaDefinition | None:
        return self._definitions.get((name, version))

    def latest(self, name: str) -> SagaDefinition:
        versions = [d for (n, _), d in self._definitions.items() if n == name]
        if not versions:
            raise DefinitionError(f"no saga named {name!r} is registered")
        return max(versions, key=lambda d: d.version)
