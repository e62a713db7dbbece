"""The wire envelope: encode/decode, rejection reasons, and the published JSON Schema."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from sagakit.definition import Phase
from sagakit.encoding import JSON, MAX_DEPTH, MAX_NAME_LENGTH, MAX_VALUE_BYTES
from sagakit.errors import EncodingError, MessageRejected
from sagakit.messages import (
    ENVELOPE_SCHEMA,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    Envelope,
    MessageKind,
    decode,
    encode,
    to_dict,
)
from sagakit.transitions import Outcome

DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

COMMAND = Envelope(
    id="c0ffee",
    kind=MessageKind.COMMAND,
    type="inventory.reserve",
    saga_id="s-1",
    saga_type="order",
    definition_version=2,
    step="reserve",
    phase=Phase.ACTION,
    attempt=1,
    idempotency_key="s-1:reserve:action",
    correlation_id="order-7",
    timestamp=1_700_000_000.25,
    payload={"order_id": "o-7", "lines": [{"sku": "A", "qty": 2}], "note": "ünïcode ✓"},
    causation_id="m-0",
    reply_to="sagakit.replies",
    deadline=1_700_000_030.25,
    traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
)

COMPENSATION = replace(
    COMMAND,
    id="c0ffee-2",
    type="inventory.release",
    phase=Phase.COMPENSATION,
    idempotency_key="s-1:reserve:compensation",
    payload={"input": {"order_id": "o-7"}, "result": None},
)

REPLY = replace(
    COMMAND,
    id="beef",
    kind=MessageKind.REPLY,
    causation_id="c0ffee",
    payload={"hold": "h-1"},
    outcome=Outcome.SUCCESS,
)

ERROR_REPLY = replace(
    REPLY,
    id="beef-2",
    payload=None,
    outcome=Outcome.ERROR,
    error="StepError: busy",
    retryable=False,
    retry_after=2.5,
)


def one(name: str, value: Any) -> dict[str, Any]:
    """``{name: value}``, typed for ``**`` into a call whose parameters it may name."""
    return {name: value}


def raw(env: Envelope = COMMAND, **changes: Any) -> dict[str, Any]:
    """The envelope as a JSON object, with fields changed (a value of ``...`` removes one)."""
    out: dict[str, Any] = dict(to_dict(env))
    for name, value in changes.items():
        if value is ...:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def body(obj: object) -> bytes:
    return json.dumps(obj).encode()


def rejected(data: bytes) -> str:
    with pytest.raises(MessageRejected) as caught:
        decode(data)
    return str(caught.value)


# -- round trip ---------------------------------------------------------------------------


@pytest.mark.parametrize("env", [COMMAND, COMPENSATION, REPLY, ERROR_REPLY], ids=lambda e: e.id)
def test_encode_decode_round_trip(env: Envelope) -> None:
    assert decode(encode(env)) == env


def test_an_event_round_trips() -> None:
    event = replace(COMMAND, kind=MessageKind.EVENT, type="order.placed", reply_to=None)
    assert decode(encode(event)) == event


def test_encoding_is_compact_utf8_json() -> None:
    data = encode(COMMAND)
    assert "ünïcode ✓".encode() in data
    assert b", " not in data and b": " not in data
    assert json.loads(data)["protocol"] == PROTOCOL_VERSION


def test_a_command_carries_no_reply_fields() -> None:
    fields = set(json.loads(encode(COMMAND)))
    assert fields.isdisjoint({"outcome", "error", "retryable", "retry_after"})
    assert {"outcome", "error", "retryable", "retry_after"} <= set(json.loads(encode(REPLY)))


def test_optional_fields_may_be_absent() -> None:
    minimal = raw(
        COMMAND, payload=..., causation_id=..., reply_to=..., deadline=..., traceparent=...
    )
    env = decode(body(minimal))
    assert (env.payload, env.causation_id, env.reply_to, env.deadline, env.traceparent) == (
        None,
        None,
        None,
        None,
        None,
    )


def test_a_reply_without_retryable_is_retryable() -> None:
    env = decode(body(raw(ERROR_REPLY, retryable=..., retry_after=...)))
    assert env.retryable is True
    assert env.retry_after is None


def test_integral_numbers_are_accepted_as_times() -> None:
    env = decode(body(raw(timestamp=1_700_000_000, deadline=1_700_000_030)))
    assert env.timestamp == 1_700_000_000.0
    assert env.deadline == 1_700_000_030.0


# -- forward compatibility ----------------------------------------------------------------


def test_unknown_fields_are_ignored() -> None:
    env = decode(body(raw(REPLY, priority="high", headers={"x-tenant": "t1"}, tags=[1, 2])))
    assert env == REPLY


def test_a_newer_minor_version_is_accepted_and_kept() -> None:
    env = decode(body(raw(protocol="1.7", added_in_1_7={"anything": True})))
    assert env.protocol == "1.7"
    assert replace(env, protocol=PROTOCOL_VERSION) == COMMAND


@pytest.mark.parametrize("protocol", ["2.0", "0.9", "10.0", 1, None, ""])
def test_another_major_version_is_rejected(protocol: object) -> None:
    reason = rejected(body(raw(protocol=protocol)))
    assert "protocol" in reason


def test_the_rejection_names_the_unsupported_version() -> None:
    assert rejected(body(raw(protocol="2.0"))) == "unsupported protocol version '2.0'"


# -- rejection reasons --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{not json", r"^malformed JSON: "),
        (b"", r"^malformed JSON: "),
        (b"\xff\xfe\x00garbage", r"^malformed JSON: "),
        (b'{"a": 1', r"^malformed JSON: "),
        (b"[1, 2]", r"^a message must be a JSON object$"),
        (b'"command"', r"^a message must be a JSON object$"),
        (b"null", r"^a message must be a JSON object$"),
        (b"42", r"^a message must be a JSON object$"),
    ],
    ids=["garbage", "empty", "not-utf8", "truncated", "array", "string", "null", "number"],
)
def test_malformed_messages_are_rejected_with_the_reason(data: bytes, reason: str) -> None:
    assert re.search(reason, rejected(data))


@pytest.mark.parametrize(
    "field",
    [
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
    ],
)
def test_a_missing_required_field_is_named(field: str) -> None:
    missing: dict[str, Any] = {field: ...}
    assert rejected(body(raw(**missing))) == f"missing field(s): {field}"
    missing[field] = None
    assert rejected(body(raw(**missing))) == f"missing field(s): {field}"


def test_every_missing_field_is_named_at_once() -> None:
    assert rejected(b"{}") == (
        "missing field(s): protocol, id, kind, type, saga_id, saga_type, definition_version, "
        "step, phase, attempt, idempotency_key, correlation_id, timestamp"
    )


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"kind": "query"}, "'query' is not a valid MessageKind"),
        ({"kind": ["command"]}, "is not a valid MessageKind"),
        ({"phase": "undo"}, "'undo' is not a valid Phase"),
        ({"outcome": "maybe"}, "'maybe' is not a valid Outcome"),
    ],
)
def test_a_bad_enumerated_value_is_rejected(changes: dict[str, Any], reason: str) -> None:
    text = rejected(body(raw(REPLY, **changes)))
    assert text.startswith("bad field value: ")
    assert reason in text


@pytest.mark.parametrize("outcome", [..., None])
def test_a_reply_without_outcome_is_rejected(outcome: object) -> None:
    assert rejected(body(raw(REPLY, outcome=outcome))) == "a reply needs an outcome"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"id": ""}, "field 'id' must be a non-empty string"),
        ({"saga_id": 7}, "field 'saga_id' must be a non-empty string"),
        ({"type": {"a": 1}}, "field 'type' must be a non-empty string"),
        ({"definition_version": "2"}, "field 'definition_version' must be a non-negative integer"),
        ({"definition_version": 1.5}, "field 'definition_version' must be a non-negative integer"),
        ({"attempt": -1}, "field 'attempt' must be a non-negative integer"),
        ({"attempt": True}, "field 'attempt' must be a non-negative integer"),
        ({"timestamp": "now"}, "field 'timestamp' must be a number"),
        ({"timestamp": False}, "field 'timestamp' must be a number"),
        ({"deadline": "soon"}, "field 'deadline' must be a number"),
        ({"reply_to": 5}, "field 'reply_to' must be a string or null"),
        ({"causation_id": ["x"]}, "field 'causation_id' must be a string or null"),
        ({"traceparent": 1}, "field 'traceparent' must be a string or null"),
    ],
)
def test_a_field_of_the_wrong_type_is_named(changes: dict[str, Any], reason: str) -> None:
    assert rejected(body(raw(**changes))) == reason


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"error": 42}, "field 'error' must be a string or null"),
        ({"retry_after": "1s"}, "field 'retry_after' must be a number"),
        ({"retryable": "false"}, "field 'retryable' must be a boolean"),
        ({"retryable": 0}, "field 'retryable' must be a boolean"),
    ],
)
def test_a_reply_field_of_the_wrong_type_is_named(changes: dict[str, Any], reason: str) -> None:
    assert rejected(body(raw(ERROR_REPLY, **changes))) == reason


def test_a_null_retryable_means_the_default() -> None:
    assert decode(body(raw(ERROR_REPLY, retryable=None))).retryable is True


def test_an_oversized_message_is_rejected_before_parsing() -> None:
    big = encode(replace(COMMAND, payload="x" * MAX_MESSAGE_BYTES))
    assert len(big) > MAX_MESSAGE_BYTES
    assert rejected(big) == f"message of {len(big)} bytes exceeds {MAX_MESSAGE_BYTES}"
    # Size is judged on bytes, before any parsing: not even JSON needs to be valid.
    assert "exceeds" in rejected(b"{" * (MAX_MESSAGE_BYTES + 1))


def test_a_message_at_the_limit_is_accepted() -> None:
    empty = len(encode(replace(COMMAND, payload="")))
    at_limit = encode(replace(COMMAND, payload="x" * (MAX_MESSAGE_BYTES - empty)))
    assert len(at_limit) == MAX_MESSAGE_BYTES
    assert decode(at_limit).payload == "x" * (MAX_MESSAGE_BYTES - empty)


# -- the value rules (docs/concepts.md, "Values sagakit accepts") ---------------------------


def nested(depth: int) -> JSON:
    value: JSON = 1
    for _ in range(depth):
        value = [value]
    return value


NAMES = (
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


@pytest.mark.parametrize("name", NAMES)
def test_a_nul_in_an_id_or_name_is_rejected_naming_the_field(name: str) -> None:
    with pytest.raises(MessageRejected) as caught:
        decode(body(raw(REPLY, **one(name, "s\x001"))))
    assert str(caught.value) == f"field {name!r}: NUL character '\\x00'"
    assert caught.value.envelope is None  # the ids are not sound: nothing to route


@pytest.mark.parametrize("name", NAMES)
def test_a_lone_surrogate_in_an_id_or_name_is_rejected_naming_the_field(name: str) -> None:
    # orjson refuses the escape as malformed; the reason still names the field.
    assert '"\\ud800"' in body(raw(**one(name, "\ud800"))).decode()
    assert rejected(body(raw(**one(name, "\ud800")))) == f"field {name!r}: lone surrogate '\\ud800'"


@pytest.mark.parametrize("name", NAMES)
def test_an_id_or_name_longer_than_the_limit_is_rejected(name: str) -> None:
    ok = decode(body(raw(**one(name, "n" * MAX_NAME_LENGTH))))
    assert getattr(ok, name) == "n" * MAX_NAME_LENGTH
    reason = rejected(body(raw(**one(name, "n" * (MAX_NAME_LENGTH + 1)))))
    assert reason == f"field {name!r}: longer than {MAX_NAME_LENGTH} characters"


@pytest.mark.parametrize("name", ["attempt", "definition_version"])
def test_counts_fit_the_stores_32_bit_columns(name: str) -> None:
    assert getattr(decode(body(raw(**one(name, 2**31 - 1)))), name) == 2**31 - 1
    assert rejected(body(raw(**one(name, 2**31)))) == f"field {name!r}: larger than 2147483647"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"a": ["ok", "x\x00"]}, "payload.a[1]: NUL character '\\x00'"),
        ({"k\x00": 1}, "payload: dict key 'k\\x00': NUL character '\\x00'"),
        (nested(MAX_DEPTH + 1), "nested deeper than 64 levels"),
        ({"n": 2**63}, "payload.n: the integer 9223372036854775808 does not fit in 64 bits"),
        ({"n": -(2**63) - 1}, "payload.n: the integer -9223372036854775809 does not fit"),
        ({"n": 2**64}, "payload.n: the integer 18446744073709551616 does not fit"),
        ({"n": -(10**30)}, "payload.n: the integer -1000000000000000000000000000000 does"),
        ({"x": "\ud800"}, "payload.x: lone surrogate '\\ud800'"),
        ({"x": 1e400}, "payload.x: inf is not a finite number"),
    ],
)
def test_a_payload_that_breaks_the_rules_is_rejected_with_its_envelope(
    payload: object, reason: str
) -> None:
    with pytest.raises(MessageRejected) as caught:
        decode(body(raw(REPLY, payload=payload)))
    assert reason in str(caught.value)
    # The ids are sound: the receiver can end the attempt this reply answers.
    assert caught.value.envelope == replace(REPLY, payload=None, error=None)


def test_an_error_text_with_a_nul_is_rejected_with_its_envelope() -> None:
    with pytest.raises(MessageRejected) as caught:
        decode(body(raw(ERROR_REPLY, error="busy\x00")))
    assert str(caught.value) == "field 'error': NUL character '\\x00'"
    assert caught.value.envelope == replace(ERROR_REPLY, error=None)


def test_a_replys_result_is_a_value_and_a_commands_payload_two() -> None:
    # A compensation command carries its step's input and result: up to two values.
    big = "x" * MAX_VALUE_BYTES
    command = replace(COMPENSATION, payload={"input": big, "result": big})
    assert decode(encode(command)) == command
    reason = rejected(encode(replace(REPLY, payload=big)))
    assert reason == f"payload: 262,146 bytes of JSON exceeds the limit of {MAX_VALUE_BYTES:,}"
    at_limit = replace(REPLY, payload="x" * (MAX_VALUE_BYTES - 2))
    assert decode(encode(at_limit)) == at_limit


@pytest.mark.parametrize(
    "payload",
    [
        "a written \\u0000 is six characters",
        {"digits": "12345678901234567890123", "max": 2**63 - 1, "min": -(2**63)},
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        nested(MAX_DEPTH),
    ],
)
def test_what_only_looks_suspicious_in_the_bytes_is_accepted(payload: object) -> None:
    # decode looks for a NUL, depth and long integers only when the bytes allow them: a
    # written backslash-u0000, digits in a string, brackets in a string, and a payload at the
    # depth limit (65 levels with the envelope's object) take the slow way and pass it.
    env = replace(REPLY, payload=payload)  # type: ignore[arg-type]
    assert decode(encode(env)) == env


def test_encode_refuses_what_decode_would_reject() -> None:
    for name in NAMES:
        for bad, problem in (("a\x00", "NUL character"), ("a\ud800", "lone surrogate")):
            with pytest.raises(EncodingError, match=rf"^field '{name}': {problem}"):
                encode(replace(COMMAND, **one(name, bad)))
    with pytest.raises(EncodingError, match=r"^field 'step': longer than 512 characters"):
        encode(replace(COMMAND, step="s" * (MAX_NAME_LENGTH + 1)))
    with pytest.raises(EncodingError, match=r"^payload\.x: lone surrogate"):
        encode(replace(COMMAND, payload={"x": "\udfff"}))
    with pytest.raises(EncodingError, match=r"^field 'error': NUL character"):
        encode(replace(ERROR_REPLY, error="busy\x00"))
    with pytest.raises(EncodingError, match=r"^payload\.x: NUL character"):
        encode(replace(COMMAND, payload={"x": "\x00"}))


# -- the JSON Schema ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(ENVELOPE_SCHEMA)
    return jsonschema.Draft202012Validator(ENVELOPE_SCHEMA)


@pytest.mark.parametrize(
    "env",
    [
        COMMAND,
        COMPENSATION,
        REPLY,
        ERROR_REPLY,
        replace(COMMAND, kind=MessageKind.EVENT, reply_to=None, payload=None),
        replace(REPLY, outcome=Outcome.FAILURE, error="out of stock", payload=None),
    ],
    ids=["command", "compensation", "reply", "error-reply", "event", "failure-reply"],
)
def test_the_schema_accepts_encoded_messages(
    validator: jsonschema.Draft202012Validator, env: Envelope
) -> None:
    validator.validate(json.loads(encode(env)))


def test_the_schema_accepts_unknown_fields_and_newer_minor_versions(
    validator: jsonschema.Draft202012Validator,
) -> None:
    validator.validate(raw(protocol="1.12", something_new=[1, 2]))


@pytest.mark.parametrize(
    "changes",
    [
        {"protocol": "2.0"},
        {"id": ...},
        {"id": ""},
        {"kind": "query"},
        {"phase": "undo"},
        {"attempt": -1},
        {"definition_version": "2"},
        {"timestamp": "now"},
        {"reply_to": 5},
        {"retryable": "false"},
    ],
    ids=repr,
)
def test_the_schema_rejects_what_decode_rejects(
    validator: jsonschema.Draft202012Validator, changes: dict[str, Any]
) -> None:
    obj = raw(REPLY, **changes)
    assert not validator.is_valid(obj)
    with pytest.raises(MessageRejected):
        decode(body(obj))


@pytest.mark.parametrize("outcome", [..., None])
def test_the_schema_requires_an_outcome_on_replies(
    validator: jsonschema.Draft202012Validator, outcome: object
) -> None:
    assert not validator.is_valid(raw(REPLY, outcome=outcome))
    validator.validate(raw(COMMAND, outcome=None))


def test_the_schema_requires_every_required_field(
    validator: jsonschema.Draft202012Validator,
) -> None:
    assert set(ENVELOPE_SCHEMA["required"]) == {  # type: ignore[arg-type]
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
    }


def test_docs_protocol_md_has_the_schema_verbatim() -> None:
    text = DOCS.read_text()
    blocks = re.findall(r"```json\n(.*?)\n```", text, flags=re.S)
    schemas = [json.loads(b) for b in blocks if '"$schema"' in b]
    assert schemas == [ENVELOPE_SCHEMA], "docs/protocol.md: paste ENVELOPE_SCHEMA again"


def test_docs_protocol_md_examples_are_valid_messages(
    validator: jsonschema.Draft202012Validator,
) -> None:
    blocks = re.findall(r"```json\n(.*?)\n```", DOCS.read_text(), flags=re.S)
    examples = [json.loads(b) for b in blocks if '"$schema"' not in b]
    kinds = sorted(e["kind"] for e in examples if isinstance(e, dict) and "kind" in e)
    assert "command" in kinds and "reply" in kinds
    for example in examples:
        if isinstance(example, dict) and "kind" in example:
            validator.validate(example)
            decode(json.dumps(example).encode())


# -- protocol versions: decode() accepts exactly what the schema accepts --------------------


@pytest.mark.parametrize(
    "protocol",
    [
        "1.0",
        "1.1",
        "1.12",
        "1.007",
        "1",
        "1.x",
        "1.0.0",
        "1.",
        ".1",
        "1.-1",
        "1.1a",
        " 1.1",
        "1.1 ",
        "11.0",
        "2.0",
        "0.9",
        "1.١",  # an Arabic-Indic digit: not [0-9]
        "",
        1.1,
        1,
        None,
    ],
    ids=repr,
)
def test_decode_accepts_exactly_the_protocol_versions_the_schema_accepts(
    validator: jsonschema.Draft202012Validator, protocol: object
) -> None:
    obj = raw(REPLY, protocol=protocol)
    try:
        decode(body(obj))
    except MessageRejected:
        decoded = False
    else:
        decoded = True
    assert decoded is validator.is_valid(obj)
    assert decoded is (protocol in ("1.0", "1.1", "1.12", "1.007"))


def test_a_version_with_a_trailing_newline_is_rejected() -> None:
    # A JSON Schema pattern is an ECMA-262 regular expression, whose "$" is the end of the
    # text: "1.1\n" does not match ^1\.[0-9]+$. (python-jsonschema runs the pattern through
    # Python's re, where "$" also matches before a final newline, so it is not asked here.)
    assert rejected(body(raw(REPLY, protocol="1.1\n"))) == "unsupported protocol version '1.1\\n'"


def test_this_version_is_1_1_and_1_0_messages_are_read() -> None:
    assert PROTOCOL_VERSION == "1.1"
    assert json.loads(encode(COMMAND))["protocol"] == "1.1"
    assert decode(body(raw(COMMAND, protocol="1.0", generation=...))) == replace(
        COMMAND, protocol="1.0"
    )


# -- the step generation (1.1) ---------------------------------------------------------------


def test_the_generation_travels_and_round_trips() -> None:
    second = replace(COMMAND, idempotency_key="s-1:reserve:action:g2", generation=2)
    assert json.loads(encode(second))["generation"] == 2
    assert json.loads(encode(COMMAND))["generation"] == 1
    assert decode(encode(second)) == second


@pytest.mark.parametrize(
    ("key", "generation"),
    [("s-1:reserve:action", 1), ("s-1:reserve:action:g2", 2), ("s-1:reserve:action:g17", 17)],
)
def test_without_a_generation_field_the_key_names_it(key: str, generation: int) -> None:
    # A 1.0 participant copies the command's key into its reply, not fields it does not know.
    reply = raw(REPLY, protocol="1.0", idempotency_key=key, generation=...)
    assert decode(body(reply)).generation == generation
    assert decode(body({**reply, "generation": None})).generation == generation


@pytest.mark.parametrize("generation", [0, -1, "2", True])
def test_a_bad_generation_is_rejected_by_decode_and_the_schema(
    validator: jsonschema.Draft202012Validator, generation: object
) -> None:
    obj = raw(REPLY, generation=generation)
    assert not validator.is_valid(obj)
    assert rejected(body(obj)) == "field 'generation' must be a positive integer"
