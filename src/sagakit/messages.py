"""The wire envelope: versioned JSON that a participant in any language can speak (C1, C5).

Every command, reply and event travels as one JSON object, described by
:data:`ENVELOPE_SCHEMA` (docs/protocol.md has it with examples). Unknown fields are ignored,
so minor versions can add fields; a message with another major version, malformed JSON, a
missing field, an oversized body, or a field or payload that breaks the value rules
(:mod:`sagakit.encoding`) raises :class:`~sagakit.errors.MessageRejected` and goes to the
dead-letter table with the reason. :func:`encode` refuses the same fields with an
:class:`~sagakit.errors.EncodingError`, so that sagakit never sends what it would reject.

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
import json
import re
from dataclasses import dataclass, replace
from typing import Final, cast

from sagakit.definition import Phase
from sagakit.effects import generation_of
from sagakit.encoding import (
    JSON,
    MAX_DEPTH,
    MAX_NAME_LENGTH,
    MAX_VALUE_BYTES,
    check_json,
    dump_bytes,
    loads,
    name_problem,
    text_problem,
)
from sagakit.errors import EncodingError, MessageRejected
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


#: The fields that hold an id, a key or a name (encoding.check_name's rules).
_NAMES: Final = (
    "id",
    "type",
    "saga_id",
    "saga_type",
    "step",
    "idempotency_key",
    "correlation_id",
    "causation_id",
    "reply_to",
    "traceparent",
)
#: The bound of attempt and definition_version: both stores keep them in 32-bit columns.
_INT32_MAX: Final = 2**31 - 1
#: A run of 19 digits: the only way to write an integer beyond 64 bits (signed).
_LONG_NUMBER: Final = re.compile(rb"[0-9]{19}")


def encode(env: Envelope) -> bytes:
    """The message as bytes; raises EncodingError naming a field that breaks the value rules
    (the size is the sender's to check against MAX_MESSAGE_BYTES)."""
    try:
        body = dump_bytes(to_dict(env))
    except TypeError:  # orjson.JSONEncodeError: a lone surrogate somewhere
        problem = _name_problem(env) or _content_problem(env.error, env.payload, MAX_MESSAGE_BYTES)
        raise EncodingError(problem or "a string is not valid UTF-8") from None
    nul = b"\\u0000" in body
    if nul or _longest_name(env) > MAX_NAME_LENGTH:
        problem = _name_problem(env) or (
            _content_problem(env.error, env.payload, MAX_MESSAGE_BYTES) if nul else None
        )
        if problem is not None:
            raise EncodingError(problem)
    return body


def _longest_name(env: Envelope) -> int:
    return max(
        len(env.id),
        len(env.type),
        len(env.saga_id),
        len(env.saga_type),
        len(env.step),
        len(env.idempotency_key),
        len(env.correlation_id),
        len(env.causation_id or ""),
        len(env.reply_to or ""),
        len(env.traceparent or ""),
    )


def _name_problem(env: Envelope) -> str | None:
    """The first id, key or name of ``env`` that breaks the rules, with what is wrong."""
    for name in _NAMES:
        value: str | None = getattr(env, name)
        problem = None if not value else name_problem(value)  # emptiness is decode's to refuse
        if problem is not None:
            return f"field {name!r}: {problem}"
    return None


def _content_problem(error: object, payload: JSON, max_bytes: int) -> str | None:
    """What breaks the value rules in a message's error text or payload, or None."""
    problem = text_problem(error) if isinstance(error, str) else None
    if problem is not None:
        return f"field 'error': {problem}"
    try:
        check_json(payload, path="payload", max_bytes=max_bytes)
    except EncodingError as exc:
        return str(exc)
    return None


def decode(body: bytes) -> Envelope:
    """Parse and check one message; raise MessageRejected with the reason."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise MessageRejected(f"message of {len(body)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        raw: object = loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _unparsed(body, exc) from exc
    env = _envelope(raw)
    _check_values(env, body)
    return env


def _envelope(raw: object) -> Envelope:
    """The envelope of a parsed message; raise MessageRejected with the reason."""
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
        env = Envelope(
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
            error=_opt_text(raw, "error", limit=MAX_MESSAGE_BYTES),
            retryable=_opt_bool(raw, "retryable", default=True),
            retry_after=_opt_number(raw, "retry_after"),
            traceparent=_opt_text(raw, "traceparent"),
            protocol=protocol,
            generation=generation,
        )
    except TypeError as exc:
        raise MessageRejected(str(exc)) from exc
    return env


def _unparsed(body: bytes, exc: Exception) -> MessageRejected:
    """Why orjson refused ``body``, naming the field when the value rules refuse it too.

    orjson refuses a lone surrogate and a number beyond a double's range as malformed; the
    standard library's parser reads both, so that the reason can say which field it was.
    """
    malformed = MessageRejected(f"malformed JSON: {exc}")
    try:
        raw: object = json.loads(body)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return malformed
    if not isinstance(raw, dict):
        return malformed
    for name, value in raw.items():
        problem = text_problem(name) or (text_problem(value) if isinstance(value, str) else None)
        if problem is not None and name not in ("payload", "error"):
            return MessageRejected(f"field {name!r}: {problem}")
    command = raw.get("kind") == MessageKind.COMMAND.value
    limit = MAX_MESSAGE_BYTES if command else MAX_VALUE_BYTES
    problem = _content_problem(raw.get("error"), cast(JSON, raw.get("payload")), limit)
    if problem is None:
        return malformed
    try:
        envelope: Envelope | None = _envelope({**raw, "payload": None, "error": None})
    except MessageRejected:
        envelope = None
    return malformed if problem is None else MessageRejected(problem, envelope=envelope)


def _check_values(env: Envelope, body: bytes) -> None:
    """Refuse a field or payload that breaks the value rules (the text fields' length is
    checked as they are read).

    orjson refuses a lone surrogate and a number beyond a double's range as it parses; what
    remains is looked for only when the bytes allow it: a NUL (only as the escape \\u0000), an
    integer beyond 64 bits (19 digits in a row), a result over the size of a value (a longer
    body), a too deep payload (more brackets than the depth). A command's payload may carry
    two values (a compensation's input and result): its bound is the message's.
    """
    nul = b"\\u0000" in body
    command = env.kind is MessageKind.COMMAND
    if nul:
        problem = _name_problem(env)
        if problem is not None:
            raise MessageRejected(problem)
    long_number = _LONG_NUMBER.search(body) is not None
    if (
        nul
        or long_number
        or (not command and len(body) > MAX_VALUE_BYTES)
        or body.count(b"[") + body.count(b"{") > MAX_DEPTH
    ):
        # orjson reads an integer literal beyond 64 bits as a float, losing digits; the
        # standard library reads it exactly, so that the rule refuses it instead.
        payload = cast(JSON, json.loads(body).get("payload")) if long_number else env.payload
        limit = MAX_MESSAGE_BYTES if command else MAX_VALUE_BYTES
        problem = _content_problem(env.error, payload, limit)
        if problem is not None:
            # The ids are sound: the receiver can still end the attempt this answers.
            raise MessageRejected(problem, envelope=replace(env, payload=None, error=None))


def _text(raw: dict[str, object], name: str) -> str:
    value = raw[name]
    if not isinstance(value, str) or not value:
        raise TypeError(f"field {name!r} must be a non-empty string")
    if len(value) > MAX_NAME_LENGTH:
        raise TypeError(f"field {name!r}: longer than {MAX_NAME_LENGTH} characters")
    return value


def _opt_text(raw: dict[str, object], name: str, *, limit: int = MAX_NAME_LENGTH) -> str | None:
    value = raw.get(name)
    if value is not None and not isinstance(value, str):
        raise TypeError(f"field {name!r} must be a string or null")
    if value is not None and len(value) > limit:
        raise TypeError(f"field {name!r}: longer than {limit} characters")
    return value


def _int(raw: dict[str, object], name: str) -> int:
    value = raw[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"field {name!r} must be a non-negative integer")
    if value > _INT32_MAX:
        raise TypeError(f"field {name!r}: larger than {_INT32_MAX}")
    return value


def _generation(raw: dict[str, object]) -> int:
    value = raw["generation"]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TypeError("field 'generation' must be a positive integer")
    if value > _INT32_MAX:
        raise TypeError(f"field 'generation': larger than {_INT32_MAX}")
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


_STRING: dict[str, JSON] = {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH}
_NULLABLE_STRING: dict[str, JSON] = {"type": ["string", "null"]}
_NULLABLE_NAME: dict[str, JSON] = {"type": ["string", "null"], "maxLength": MAX_NAME_LENGTH}
_COUNT: dict[str, JSON] = {"type": "integer", "minimum": 0, "maximum": _INT32_MAX}
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
        "definition_version": _COUNT,
        "step": _STRING,
        "phase": {"enum": ["action", "compensation"]},
        "attempt": _COUNT,
        "idempotency_key": _STRING,
        "generation": {
            "type": "integer",
            "minimum": 1,
            "maximum": _INT32_MAX,
            "description": "the step's generation (1.1); absent: the one its key names",
        },
        "correlation_id": _STRING,
        "causation_id": _NULLABLE_NAME,
        "timestamp": {"type": "number", "description": "seconds since the Unix epoch"},
        "reply_to": _NULLABLE_NAME,
        "deadline": _NULLABLE_NUMBER,
        "traceparent": _NULLABLE_NAME,
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
