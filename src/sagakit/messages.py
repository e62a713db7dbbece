"""The wire envelope: versioned JSON that a participant in any language can speak (C1, C5).

Every command, reply and event travels as one JSON object, described by
:data:`ENVELOPE_SCHEMA` (docs/protocol.md has it with examples). Unknown fields are ignored,
so minor versions can add fields; a message with another major version, malformed JSON, a
missing field or an oversized body raises :class:`~sagakit.errors.MessageRejected` and goes to
the dead-letter table with the reason.

>>> from sagakit.definition import Phase
>>> env = Envelope(id="m1", kind=MessageKind.COMMAND, type="inventory.reserve", saga_id="s1",
...                saga_type="order", definition_version=1, step="reserve", phase=Phase.ACTION,
...                attempt=1, idempotency_key="s1:reserve:action", correlation_id="order-7",
...                timestamp=0.0, payload={"sku": "A"})
>>> decode(encode(env)) == env
True
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final, cast

from sagakit.definition import Phase
from sagakit.effects import generation_of
from sagakit.encoding import JSON, dump_bytes, loads
from sagakit.errors import MessageRejected
from sagakit.transitions import Outcome

PROTOCOL_VERSION: Final = "1.1"
MAX_MESSAGE_BYTES: Final = 1024 * 1024
#: The versions this reader accepts: exactly those the schema's ``protocol`` pattern accepts
#: (``^1\.[0-9]+$``, where a JSON Schema's ``$`` is the end of the text, as ``\Z`` is here).
_PROTOCOL: Final = re.compile(r"1\.[0-9]+\Z", re.ASCII)


class MessageKind(enum.StrEnum):
    COMMAND = "command"
    REPLY = "reply"
    EVENT = "event"


@dataclass(frozen=True)
class Envelope:
    """One message. ``payload`` is a command's input or a reply's result.

    A compensation command's payload is ``{"input": <the action's input>, "result": <the
    action's result, or null when its outcome is unknown>}``.

    ``generation`` (protocol 1.1) is the step's generation, which its idempotency key names
    from generation 2 on; a reply copies it. A 1.0 message has none: it is read from the key.
    """

    id: str
    kind: MessageKind
    type: str
    saga_id: str
    saga_type: str
    definition_version: int
    step: str
    phase: Phase
    attempt: int
    idempotency_key: str
    correlation_id: str
    timestamp: float
    payload: JSON = None
    causation_id: str | None = None
    reply_to: str | None = None
    deadline: float | None = None
    outcome: Outcome | None = None
    error: str | None = None
    retryable: bool = True
    retry_after: float | None = None
    traceparent: str | None = None
    protocol: str = PROTOCOL_VERSION
    generation: int = 1


_REQUIRED: Final = (
    "protocol",
    "id",
    "kind",
    "type",
    "saga_id",
    "saga_type",
    "definition_version",
    "step",
    "phase",
    "attempt",
    "idempotency_key",
    "correlation_id",
    "timestamp",
)


def to_dict(env: Envelope) -> dict[str, JSON]:
    out: dict[str, JSON] = {
        "protocol": env.protocol,
        "id": env.id,
        "kind": env.kind.value,
        "type": env.type,
        "saga_id": env.saga_id,
        "saga_type": env.saga_type,
        "definition_version": env.definition_version,
        "step": env.step,
        "phase": env.phase.value,
        "attempt": env.attempt,
        "idempotency_key": env.idempotency_key,
        "generation": env.generation,
        "correlation_id": env.correlation_id,
        "causation_id": env.causation_id,
        "timestamp": env.timestamp,
        "reply_to": env.reply_to,
        "deadline": env.deadline,
        "traceparent": env.traceparent,
        "payload": env.payload,
    }
    if env.kind is MessageKind.REPLY:
        out["outcome"] = env.outcome.value if env.outcome else None
        out["error"] = env.error
        out["retryable"] = env.retryable
        out["retry_after"] = env.retry_after
    return out


def encode(env: Envelope) -> bytes:
    return dump_bytes(to_dict(env))


def decode(body: bytes) -> Envelope:
    """Parse and check one message; raise MessageRejected with the reason."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise MessageRejected(f"message of {len(body)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        raw: object = loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageRejected(f"malformed JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise MessageRejected("a message must be a JSON object")
    missing = [name for name in _REQUIRED if raw.get(name) is None]
    if missing:
        raise MessageRejected(f"missing field(s): {', '.join(missing)}")
    protocol = raw["protocol"]
    if not isinstance(protocol, str) or _PROTOCOL.match(protocol) is None:
        raise MessageRejected(f"unsupported protocol version {protocol!r}")
    try:
        kind = MessageKind(raw["kind"])
        phase = Phase(raw["phase"])
        outcome = Outcome(raw["outcome"]) if raw.get("outcome") is not None else None
    except ValueError as exc:
        raise MessageRejected(f"bad field value: {exc}") from exc
    if kind is MessageKind.REPLY and outcome is None:
        raise MessageRejected("a reply needs an outcome")
    try:
        key = _text(raw, "idempotency_key")
        generation = generation_of(key) if raw.get("generation") is None else _generation(raw)
        return Envelope(
            id=_text(raw, "id"),
            kind=kind,
            type=_text(raw, "type"),
            saga_id=_text(raw, "saga_id"),
            saga_type=_text(raw, "saga_type"),
            definition_version=_int(raw, "definition_version"),
            step=_text(raw, "step"),
            phase=phase,
            attempt=_int(raw, "attempt"),
            idempotency_key=key,
            correlation_id=_text(raw, "correlation_id"),
            timestamp=_number(raw, "timestamp"),
            payload=cast(JSON, raw.get("payload")),
            causation_id=_opt_text(raw, "causation_id"),
            reply_to=_opt_text(raw, "reply_to"),
            deadline=_opt_number(raw, "deadline"),
            outcome=outcome,
            error=_opt_text(raw, "error"),
            retryable=_opt_bool(raw, "retryable", default=True),
            retry_after=_opt_number(raw, "retry_after"),
            traceparent=_opt_text(raw, "traceparent"),
            protocol=protocol,
            generation=generation,
        )
    except TypeError as exc:
        raise MessageRejected(str(exc)) from exc


def _text(raw: dict[str, object], name: str) -> str:
    value = raw[name]
    if not isinstance(value, str) or not value:
        raise TypeError(f"field {name!r} must be a non-empty string")
    return value


def _opt_text(raw: dict[str, object], name: str) -> str | None:
    value = raw.get(name)
    if value is not None and not isinstance(value, str):
        raise TypeError(f"field {name!r} must be a string or null")
    return value


def _int(raw: dict[str, object], name: str) -> int:
    value = raw[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"field {name!r} must be a non-negative integer")
    return value


def _generation(raw: dict[str, object]) -> int:
    value = raw["generation"]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TypeError("field 'generation' must be a positive integer")
    return value


def _number(raw: dict[str, object], name: str) -> float:
    value = raw[name]
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"field {name!r} must be a number")
    return float(value)


def _opt_number(raw: dict[str, object], name: str) -> float | None:
    return None if raw.get(name) is None else _number(raw, name)


def _opt_bool(raw: dict[str, object], name: str, *, default: bool) -> bool:
    value = raw.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise TypeError(f"field {name!r} must be a boolean")
    return value


_STRING: dict[str, JSON] = {"type": "string", "minLength": 1}
_NULLABLE_STRING: dict[str, JSON] = {"type": ["string", "null"]}
_NULLABLE_NUMBER: dict[str, JSON] = {"type": ["number", "null"]}

#: JSON Schema (draft 2020-12) of the envelope, protocol 1.x.
ENVELOPE_SCHEMA: Final[dict[str, JSON]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://sagakit.dev/schema/envelope-1.json",
    "title": "sagakit message envelope, protocol 1.x",
    "type": "object",
    "required": list(_REQUIRED),
    "properties": {
        "protocol": {"type": "string", "pattern": "^1\\.[0-9]+$"},
        "id": _STRING,
        "kind": {"enum": ["command", "reply", "event"]},
        "type": _STRING,
        "saga_id": _STRING,
        "saga_type": _STRING,
        "definition_version": {"type": "integer", "minimum": 0},
        "step": _STRING,
        "phase": {"enum": ["action", "compensation"]},
        "attempt": {"type": "integer", "minimum": 0},
        "idempotency_key": _STRING,
        "generation": {
            "type": "integer",
            "minimum": 1,
            "description": "the step's generation (1.1); absent: the one its key names",
        },
        "correlation_id": _STRING,
        "causation_id": _NULLABLE_STRING,
        "timestamp": {"type": "number", "description": "seconds since the Unix epoch"},
        "reply_to": _NULLABLE_STRING,
        "deadline": _NULLABLE_NUMBER,
        "traceparent": _NULLABLE_STRING,
        "payload": {"description": "command input, or reply result: any JSON value"},
        "outcome": {"enum": ["success", "failure", "error", None]},
        "error": _NULLABLE_STRING,
        "retryable": {"type": "boolean"},
        "retry_after": _NULLABLE_NUMBER,
    },
    "additionalProperties": True,
    "if": {"properties": {"kind": {"const": "reply"}}},
    "then": {
        "required": ["outcome"],
        "properties": {"outcome": {"enum": ["success", "failure", "error"]}},
    },
}
