"""What workers run, as a store records it: definitions, readable without user code.

A worker writes each definition it runs when it attaches to a store (a
:class:`DefinitionRecord`: what :meth:`SagaDefinition.describe()
<sagakit.definition.SagaDefinition.describe>` says — steps, kinds, pivot, timeouts, retry
policies — and the JSON Schema of typed saga data), beside its own row (a
:class:`~sagakit.ports.WorkerRecord`: its lease, the definitions it runs). Commands that import
no application (``sagakit describe``, ``sagakit workers``, a dashboard) read them through
:meth:`sagakit.Client.definitions` and :meth:`sagakit.Client.workers`.

>>> from sagakit import Saga
>>> saga = Saga("greet").remote("hello", participant="mailer", command="mail.send",
...                             kind="retriable")
>>> record = DefinitionRecord.of(saga.build())
>>> record.steps[0].action.ref, record.pivot, record.to_json() == record.from_json(
...     record.to_json()).to_json()
('remote:mailer/mail.send', None, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from sagakit.data_schema import json_schema
from sagakit.definition import RetryPolicy, SagaDefinition, StepKind
from sagakit.description import mermaid
from sagakit.encoding import JSON

#: How long the row of a worker whose lease ran out (and that owns no unfinished instance) is
#: kept, so ``sagakit workers`` still shows it: a worker that attaches removes older ones.
DEAD_WORKER_RETENTION = 86400.0


@dataclass(frozen=True)
class HandlerRecord:
    """A step's action or compensation: a local function (``function``, its qualified name)
    or a command sent to a participant (``participant`` and ``command``)."""

    where: str  # "local" or "remote"
    function: str | None = None
    participant: str | None = None
    command: str | None = None

    @property
    def ref(self) -> str:
        if self.where == "local":
            return f"local:{self.function}"
        return f"remote:{self.participant}/{self.command}"

    def to_json(self) -> dict[str, JSON]:
        if self.where == "local":
            return {"where": "local", "function": self.function}
        return {"where": "remote", "participant": self.participant, "command": self.command}

    @classmethod
    def from_json(cls, value: JSON) -> HandlerRecord:
        data = cast(dict[str, Any], value)
        return cls(
            str(data["where"]),
            function=data.get("function"),
            participant=data.get("participant"),
            command=data.get("command"),
        )


@dataclass(frozen=True)
class StepRecord:
    """One step as recorded: ``custom_input`` says whether the command's payload is built by
    an input function (else it is the saga data)."""

    name: str
    kind: StepKind
    action: HandlerRecord
    compensation: HandlerRecord | None
    timeout: float
    compensation_timeout: float
    retry: RetryPolicy
    compensation_retry: RetryPolicy
    custom_input: bool = False

    def to_json(self) -> dict[str, JSON]:
        return {
            "name": self.name,
            "kind": self.kind.value,
            "action": self.action.to_json(),
            "compensation": None if self.compensation is None else self.compensation.to_json(),
            "timeout": self.timeout,
            "compensation_timeout": self.compensation_timeout,
            "retry": _policy_json(self.retry),
            "compensation_retry": _policy_json(self.compensation_retry),
            "custom_input": self.custom_input,
        }

    @classmethod
    def from_json(cls, value: JSON) -> StepRecord:
        data = cast(dict[str, Any], value)
        compensation = data.get("compensation")
        return cls(
            name=str(data["name"]),
            kind=StepKind(data["kind"]),
            action=HandlerRecord.from_json(data["action"]),
            compensation=None if compensation is None else HandlerRecord.from_json(compensation),
            timeout=float(data["timeout"]),
            compensation_timeout=float(data["compensation_timeout"]),
            retry=RetryPolicy(**data["retry"]),
            compensation_retry=RetryPolicy(**data["compensation_retry"]),
            custom_input=bool(data.get("custom_input", False)),
        )


@dataclass(frozen=True)
class DefinitionRecord:
    """A saga definition as a worker wrote it to the store: everything it declares, none of
    the code behind it. ``data_type`` is the qualified name of the saga data's type and
    ``data_schema`` its JSON Schema (None for untyped data). ``recorded_at`` is when a worker
    last wrote it (the store's clock; 0 before it is stored). Its JSON (:meth:`to_json`) is
    the definition's description (:meth:`SagaDefinition.describe()
    <sagakit.definition.SagaDefinition.describe>`) with ``data_schema`` added."""

    name: str
    version: int
    fingerprint: str
    steps: tuple[StepRecord, ...]
    deadline: float | None = None
    data_type: str | None = None
    data_schema: dict[str, JSON] | None = None
    recorded_at: float = 0.0

    @property
    def pivot(self) -> str | None:
        """The pivot step (the point of no return), if the saga has one."""
        return next((s.name for s in self.steps if s.kind is StepKind.PIVOT), None)

    def to_mermaid(self) -> str:
        """The definition as a Mermaid flowchart, as :meth:`SagaDefinition.to_mermaid` draws it."""
        return mermaid(self.to_json())

    @classmethod
    def of(cls, definition: SagaDefinition) -> DefinitionRecord:
        """The record of ``definition``: its description, and the schema of its data."""
        return cls.from_json(
            {**definition.describe(), "data_schema": json_schema(definition.data_type)}
        )

    def to_json(self) -> dict[str, JSON]:
        """Everything but ``recorded_at`` (the store keeps that in a column of its own)."""
        return {
            "name": self.name,
            "version": self.version,
            "fingerprint": self.fingerprint,
            "deadline": self.deadline,
            "pivot": self.pivot,
            "data_type": self.data_type,
            "steps": [step.to_json() for step in self.steps],
            "data_schema": self.data_schema,
        }

    @classmethod
    def from_json(cls, value: JSON, *, recorded_at: float = 0.0) -> DefinitionRecord:
        data = cast(dict[str, Any], value)
        return cls(
            name=str(data["name"]),
            version=int(data["version"]),
            fingerprint=str(data["fingerprint"]),
            steps=tuple(StepRecord.from_json(step) for step in data["steps"]),
            deadline=data.get("deadline"),
            data_type=data.get("data_type"),
            data_schema=data.get("data_schema"),
            recorded_at=recorded_at,
        )


def _policy_json(policy: RetryPolicy) -> dict[str, JSON]:
    return {
        "max_attempts": policy.max_attempts,
        "initial_delay": policy.initial_delay,
        "backoff": policy.backoff,
        "max_delay": policy.max_delay,
        "jitter": policy.jitter,
    }
