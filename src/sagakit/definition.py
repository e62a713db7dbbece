"""Saga definitions: steps, step kinds, retry policies, and their validation.

A saga is an ordered list of steps. Each step has an action and, when it is *compensatable*, a
compensation that semantically undoes it. A step is *local* (an async function run by the
worker) or *remote* (a command sent to a participant over the bus, answered by a reply).

Step kinds follow saga design practice: compensatable steps first, then at most one *pivot*
(the point of no return), then *retriable* steps that are only ever retried, never compensated.

Two equivalent styles build a definition::

    from sagakit import Saga, StepContext

    saga = Saga("greet", version=1)

    @saga.step("hello")
    async def hello(ctx: StepContext) -> str:
        return "hello"

    @saga.compensate("hello")
    async def unhello(ctx: StepContext) -> None:
        pass

    saga.remote("notify", participant="mailer", command="mail.send", kind="retriable")
    definition = saga.build()
    assert [s.name for s in definition.steps] == ["hello", "notify"]

Invalid definitions raise :class:`~sagakit.errors.DefinitionError` naming the step and rule.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import inspect
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sagakit.description import mermaid
from sagakit.encoding import JSON, dumps, name_problem
from sagakit.errors import DefinitionError

D = TypeVar("D")


class StepKind(enum.StrEnum):
    """Where a step sits relative to the point of no return."""

    COMPENSATABLE = "compensatable"
    PIVOT = "pivot"
    RETRIABLE = "retriable"


class Phase(enum.StrEnum):
    """Which half of a step a message or an attempt belongs to."""

    ACTION = "action"
    COMPENSATION = "compensation"


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and how far apart, a step action or compensation is attempted.

    ``max_attempts`` counts every attempt, the first included. The delay before attempt
    ``n + 1`` is ``initial_delay * backoff ** (n - 1)``, capped at ``max_delay``, then spread by
    ``± jitter`` (a fraction). The jitter is derived from the instance, step and attempt, so a
    decision is reproducible (Semantics 13).

    >>> RetryPolicy(initial_delay=1.0, backoff=2.0, jitter=0.0).delay(3, seed="s")
    4.0
    """

    max_attempts: int = 3
    initial_delay: float = 0.5
    backoff: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.2

    def delay(self, attempt: int, *, seed: str) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based) before the next one."""
        base = min(self.max_delay, self.initial_delay * self.backoff ** max(0, attempt - 1))
        if self.jitter <= 0:
            return base
        digest = hashlib.sha256(f"{seed}:{attempt}".encode()).digest()
        unit = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
        return max(0.0, base * (1.0 + self.jitter * (2.0 * unit - 1.0)))

    def check(self, where: str) -> None:
        if self.max_attempts < 1:
            raise DefinitionError(f"{where}: max_attempts must be at least 1")
        # Written as "not (x >= ...)" so that NaN, which compares false, is refused too.
        if not (
            0 <= self.initial_delay < math.inf
            and 0 <= self.max_delay < math.inf
            and 1 <= self.backoff < math.inf
        ):
            raise DefinitionError(f"{where}: delays must be >= 0 and backoff >= 1 (finite)")
        if not 0 <= self.jitter <= 1:
            raise DefinitionError(f"{where}: jitter must be between 0 and 1")


DEFAULT_RETRY = RetryPolicy()
DEFAULT_COMPENSATION_RETRY = RetryPolicy(max_attempts=5)


@dataclass(frozen=True)
class StepContext(Generic[D]):
    """What step code receives.

    For an action, ``result`` is None. For a compensation, ``result`` is what the action
    returned, or None when its outcome is unknown (``outcome_known`` is then False); ``input``
    is what the action received. ``idempotency_key`` is stable across retries, redeliveries and
    restarts: pass it on to external services (Semantics 2).
    """

    saga_id: str
    saga_type: str
    step: str
    phase: Phase
    attempt: int
    idempotency_key: str
    correlation_id: str
    deadline: float | None
    data: D
    results: Mapping[str, JSON]
    input: JSON = None
    result: JSON = None
    outcome_known: bool = True


LocalFn = Callable[[StepContext[Any]], Awaitable[object]]
InputFn = Callable[[StepContext[Any]], object]


@dataclass(frozen=True)
class Local:
    """An action or compensation run by the worker as an async function."""

    fn: LocalFn

    @property
    def ref(self) -> str:
        return f"local:{self.fn.__module__}.{self.fn.__qualname__}"


@dataclass(frozen=True)
class Remote:
    """An action or compensation sent as a command to a participant over the bus."""

    participant: str
    command: str

    @property
    def ref(self) -> str:
        return f"remote:{self.participant}/{self.command}"


Handler = Local | Remote


@dataclass(frozen=True)
class Step:
    """One step of a saga. Build them with :class:`Saga` or directly."""

    name: str
    action: Handler
    compensation: Handler | None = None
    kind: StepKind = StepKind.COMPENSATABLE
    timeout: float = 30.0
    retry: RetryPolicy = DEFAULT_RETRY
    compensation_retry: RetryPolicy = DEFAULT_COMPENSATION_RETRY
    compensation_timeout: float = 30.0
    input: InputFn | None = None

    @property
    def is_remote(self) -> bool:
        return isinstance(self.action, Remote)

    def remote_for(self, phase: Phase) -> bool:
        """Whether ``phase`` is a command to a participant (else the worker runs it): a local
        action may have a remote compensation, and the other way round."""
        return isinstance(self.action if phase is Phase.ACTION else self.compensation, Remote)

    def handler(self, phase: Phase) -> Handler | None:
        return self.action if phase is Phase.ACTION else self.compensation

    def timeout_for(self, phase: Phase) -> float:
        return self.timeout if phase is Phase.ACTION else self.compensation_timeout

    def policy_for(self, phase: Phase) -> RetryPolicy:
        return self.retry if phase is Phase.ACTION else self.compensation_retry


@dataclass(frozen=True)
class SagaDefinition:
    """A validated, immutable saga definition. Construct it through :class:`Saga`.

    ``fingerprint`` identifies what the definition declares (:func:`fingerprint_of`); an
    instance records it and is advanced only by a worker holding a definition with the same
    one (Semantics 1). ``legacy_fingerprint`` is the fingerprint sagakit gave the definition
    before (v1, which also named the Python functions behind local steps): an instance that
    still carries it is claimed by a worker with this definition and given the new one.
    """

    name: str
    version: int
    steps: tuple[Step, ...]
    deadline: float | None = None
    data_type: type[Any] | None = None
    fingerprint: str = field(default="", compare=False)
    legacy_fingerprint: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        validate(self)
        object.__setattr__(self, "fingerprint", fingerprint_of(self.name, self.version, self.steps))
        object.__setattr__(self, "legacy_fingerprint", legacy_fingerprint_of(self.steps))

    def step(self, name: str) -> Step:
        return self.steps[self._positions[name]]

    def index(self, name: str) -> int:
        return self._positions[name]

    @functools.cached_property
    def _positions(self) -> dict[str, int]:
        return {step.name: i for i, step in enumerate(self.steps)}

    @functools.cached_property
    def has_point_of_no_return(self) -> bool:
        """Whether any step is a pivot or retriable (else the saga can always go back)."""
        return any(step.kind is not StepKind.COMPENSATABLE for step in self.steps)

    def describe(self) -> dict[str, JSON]:
        """What the definition declares, as JSON: what ``sagakit describe`` prints and what a
        worker can record in the store for commands that run no user code. Local handlers
        are named by their Python path, never run."""
        pivot = next((s.name for s in self.steps if s.kind is StepKind.PIVOT), None)
        return {
            "name": self.name,
            "version": self.version,
            "fingerprint": self.fingerprint,
            "deadline": self.deadline,
            "pivot": pivot,
            "data_type": None if self.data_type is None else _qualname(self.data_type),
            "steps": [_describe_step(step) for step in self.steps],
        }

    def to_mermaid(self) -> str:
        """The definition as a Mermaid flowchart (:func:`sagakit.description.mermaid`)."""
        return mermaid(self.describe())


def _describe_step(step: Step) -> JSON:
    return {
        "name": step.name,
        "kind": step.kind.value,
        "action": _describe_handler(step.action),
        "compensation": None if step.compensation is None else _describe_handler(step.compensation),
        "timeout": step.timeout,
        "compensation_timeout": step.compensation_timeout,
        "retry": _describe_policy(step.retry),
        "compensation_retry": _describe_policy(step.compensation_retry),
        "custom_input": step.input is not None,
    }


def _describe_handler(handler: Handler) -> JSON:
    if isinstance(handler, Local):
        return {"where": "local", "function": f"{handler.fn.__module__}.{handler.fn.__qualname__}"}
    return {"where": "remote", "participant": handler.participant, "command": handler.command}


def _describe_policy(policy: RetryPolicy) -> JSON:
    return {
        "max_attempts": policy.max_attempts,
        "initial_delay": policy.initial_delay,
        "backoff": policy.backoff,
        "max_delay": policy.max_delay,
        "jitter": policy.jitter,
    }


def _qualname(kind: type[Any]) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


#: The prefix of the fingerprints :func:`fingerprint_of` makes (a v1 fingerprint has none).
FINGERPRINT_PREFIX = "v2:"


def fingerprint_of(name: str, version: int, steps: Sequence[Step]) -> str:
    """The identity of a definition: what it declares, hashed (Semantics 1).

    It covers the saga's name and version and, in order, each step's name, kind (so the
    pivot), whether it is local or remote (with the participant and command), and whether it
    has a compensation (remote: its command). Retry policies, timeouts, the deadline, the data
    type and the Python functions behind local steps are left out, so tuning or refactoring
    them keeps running instances running; anything else changed is a new definition, to be
    deployed as a new ``version`` (docs/how-to/deploying-changes.md). The text is
    ``v2:`` and 16 hex digits.
    """
    shape: JSON = {
        "saga": name,
        "version": version,
        "steps": [
            [step.name, step.kind.value, _declared(step.action), _declared(step.compensation)]
            for step in steps
        ],
    }
    return FINGERPRINT_PREFIX + hashlib.sha256(dumps(shape).encode()).hexdigest()[:16]


def _declared(handler: Handler | None) -> JSON:
    if handler is None:
        return None
    if isinstance(handler, Remote):
        return ["remote", handler.participant, handler.command]
    return "local"


def legacy_fingerprint_of(steps: Sequence[Step]) -> str:
    """The fingerprint sagakit gave definitions first (v1): step names, kinds and handlers,
    a local handler by its function's module and name. Kept to recognise the instances that
    carry it; never given to a new one."""
    shape: JSON = [
        [
            step.name,
            step.kind.value,
            step.action.ref,
            step.compensation.ref if step.compensation is not None else None,
        ]
        for step in steps
    ]
    return hashlib.sha256(dumps(shape).encode()).hexdigest()[:16]


def validate(definition: SagaDefinition) -> None:
    """Raise DefinitionError for the first rule ``definition`` breaks, naming the step."""
    where = f"saga {definition.name!r}"
    if not definition.name or not isinstance(definition.name, str):
        raise DefinitionError("a saga needs a non-empty name")
    problem = name_problem(definition.name)
    if problem is not None:
        raise DefinitionError(f"saga {definition.name!r}: its name is {problem}")
    if not isinstance(definition.version, int) or definition.version < 1:
        raise DefinitionError(f"{where}: version must be a positive integer")
    if not definition.steps:
        raise DefinitionError(f"{where}: a saga needs at least one step")
    if definition.deadline is not None and not definition.deadline > 0:  # NaN is not
        raise DefinitionError(f"{where}: deadline must be positive")
    seen: set[str] = set()
    pivot_seen: str | None = None
    retriable_seen: str | None = None
    for step in definition.steps:
        at = f"{where}, step {step.name!r}"
        if not step.name or ":" in step.name:
            raise DefinitionError(f"{at}: a step name must be non-empty and contain no ':'")
        problem = name_problem(step.name)
        if problem is not None:
            raise DefinitionError(f"{at}: its name is {problem}")
        if step.name in seen:
            raise DefinitionError(f"{at}: duplicate step name")
        seen.add(step.name)
        _check_handler(step.action, f"{at} action")
        if step.compensation is not None:
            _check_handler(step.compensation, f"{at} compensation")
        if not (step.timeout > 0 and step.compensation_timeout > 0):  # NaN is neither
            raise DefinitionError(f"{at}: timeouts must be positive")
        step.retry.check(f"{at} retry policy")
        step.compensation_retry.check(f"{at} compensation retry policy")
        if step.kind is StepKind.COMPENSATABLE:
            if step.compensation is None:
                raise DefinitionError(f"{at}: a compensatable step needs a compensation")
            if pivot_seen or retriable_seen:
                after = pivot_seen or retriable_seen
                raise DefinitionError(
                    f"{at}: steps after the pivot or a retriable step ({after!r}) must be retriable"
                )
        elif step.kind is StepKind.PIVOT:
            if step.compensation is not None:
                raise DefinitionError(
                    f"{at}: a pivot is never compensated; remove its compensation"
                )
            if pivot_seen:
                raise DefinitionError(f"{at}: a saga has at most one pivot ({pivot_seen!r})")
            if retriable_seen:
                raise DefinitionError(
                    f"{at}: the pivot must come before retriable steps ({retriable_seen!r})"
                )
            pivot_seen = step.name
        elif step.kind is StepKind.RETRIABLE:
            if step.compensation is not None:
                raise DefinitionError(
                    f"{at}: a retriable step is never compensated; remove its compensation"
                )
            retriable_seen = retriable_seen or step.name
        else:  # pragma: no cover - exhaustive over StepKind
            raise DefinitionError(f"{at}: unknown step kind {step.kind!r}")


def _check_handler(handler: object, at: str) -> None:
    if isinstance(handler, Local):
        if not inspect.iscoroutinefunction(handler.fn):
            raise DefinitionError(
                f"{at}: a local handler must be an async function (wrap blocking code "
                "with asyncio.to_thread)"
            )
    elif isinstance(handler, Remote):
        if not handler.participant or not handler.command:
            raise DefinitionError(f"{at}: a remote handler needs a participant and a command")
        for what, name in (("participant", handler.participant), ("command", handler.command)):
            problem = name_problem(name)
            if problem is not None:
                raise DefinitionError(f"{at}: its {what} name is {problem}")
    else:
        raise DefinitionError(f"{at}: unknown handler {handler!r}")


def _kind(kind: StepKind | str, at: str) -> StepKind:
    try:
        return StepKind(kind)
    except ValueError:
        raise DefinitionError(f"{at}: unknown step kind {kind!r}") from None


class Saga(Generic[D]):
    """Builder for a :class:`SagaDefinition`, in builder or decorator style.

    ``data_type`` (a dataclass or pydantic model) types ``ctx.data`` in step code;
    ``deadline`` (seconds) bounds the whole saga before its pivot.
    """

    def __init__(
        self,
        name: str,
        *,
        version: int = 1,
        data_type: type[D] | None = None,
        deadline: float | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.data_type = data_type
        self.deadline = deadline
        self._steps: list[dict[str, Any]] = []
        self._built: SagaDefinition | None = None

    def _add(self, name: str, options: dict[str, Any]) -> None:
        if any(s["name"] == name for s in self._steps):
            raise DefinitionError(f"saga {self.name!r}, step {name!r}: duplicate step name")
        self._steps.append({"name": name, **options})
        self._built = None

    def local(
        self,
        name: str,
        action: LocalFn,
        *,
        compensation: LocalFn | None = None,
        kind: StepKind | str = StepKind.COMPENSATABLE,
        timeout: float = 30.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        compensation_retry: RetryPolicy = DEFAULT_COMPENSATION_RETRY,
        compensation_timeout: float = 30.0,
    ) -> Saga[D]:
        """Add a local step: ``action`` is an async function run by the worker."""
        self._add(
            name,
            {
                "action": Local(action),
                "compensation": Local(compensation) if compensation else None,
                "kind": _kind(kind, f"saga {self.name!r}, step {name!r}"),
                "timeout": timeout,
                "retry": retry,
                "compensation_retry": compensation_retry,
                "compensation_timeout": compensation_timeout,
            },
        )
        return self

    def remote(
        self,
        name: str,
        *,
        participant: str,
        command: str,
        compensation: str | None = None,
        kind: StepKind | str = StepKind.COMPENSATABLE,
        timeout: float = 30.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        compensation_retry: RetryPolicy = DEFAULT_COMPENSATION_RETRY,
        compensation_timeout: float = 30.0,
        input: InputFn | None = None,
    ) -> Saga[D]:
        """Add a remote step: ``command`` (and ``compensation``) go to ``participant``.

        ``input`` builds the command's payload from the context; by default it is the saga
        data.
        """
        self._add(
            name,
            {
                "action": Remote(participant, command),
                "compensation": Remote(participant, compensation) if compensation else None,
                "kind": _kind(kind, f"saga {self.name!r}, step {name!r}"),
                "timeout": timeout,
                "retry": retry,
                "compensation_retry": compensation_retry,
                "compensation_timeout": compensation_timeout,
                "input": input,
            },
        )
        return self

    def step(
        self,
        name: str,
        *,
        kind: StepKind | str = StepKind.COMPENSATABLE,
        timeout: float = 30.0,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> Callable[[LocalFn], LocalFn]:
        """Decorator: the function is a local step's action."""

        def register(fn: LocalFn) -> LocalFn:
            self.local(name, fn, kind=kind, timeout=timeout, retry=retry)
            return fn

        return register

    def compensate(
        self,
        name: str,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy = DEFAULT_COMPENSATION_RETRY,
    ) -> Callable[[LocalFn], LocalFn]:
        """Decorator: the function compensates the already declared local step ``name``."""

        def register(fn: LocalFn) -> LocalFn:
            for options in self._steps:
                if options["name"] == name:
                    options["compensation"] = Local(fn)
                    self._built = None
                    options["compensation_retry"] = retry
                    options["compensation_timeout"] = timeout
                    return fn
            raise DefinitionError(
                f"saga {self.name!r}: compensation for unknown step {name!r} "
                "(declare the step first)"
            )

        return register

    def build(self) -> SagaDefinition:
        """Validate and freeze the definition."""
        if self._built is None:
            self._built = SagaDefinition(
                name=self.name,
                version=self.version,
                steps=tuple(Step(**options) for options in self._steps),
                deadline=self.deadline,
                data_type=self.data_type,
            )
        return self._built
