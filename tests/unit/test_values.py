"""The values sagakit accepts (docs/concepts.md, "Values sagakit accepts"): the rules of
encoding.to_json and check_name, checked against a plain statement of them, and proved
against both real stores: whatever to_json accepts, SQLite and PostgreSQL hold and give back.

The end-to-end checks (a bad value entering by each way, on both stores) are in
test_values_entering.py.
"""

from __future__ import annotations

import asyncio
import enum
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sagakit.encoding import (
    INT_MAX,
    INT_MIN,
    JSON,
    MAX_DEPTH,
    MAX_NAME_LENGTH,
    MAX_VALUE_BYTES,
    check_json,
    check_name,
    printable,
    to_json,
)
from sagakit.errors import EncodingError
from sagakit.ports import Batch, InstanceWrite, Store
from sagakit.state import HistoryEntry, HistoryKind, SagaInstance, SagaStatus
from sagakit.storage import PostgresStore, SqliteStore
from sagakit.storage.postgres import new_schema_url, split_url

PG_URL = os.environ.get("SAGAKIT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")

DOCS = Path(__file__).resolve().parents[2] / "docs" / "concepts.md"


def refused(value: object, path: str = "value") -> str:
    with pytest.raises(EncodingError) as caught:
        to_json(value, path=path)
    return str(caught.value)


def nested(depth: int, leaf: JSON = 1) -> JSON:
    """``depth`` lists one inside the other around ``leaf``."""
    value: JSON = leaf
    for _ in range(depth):
        value = [value]
    return value


def string_of_json_size(size: int) -> str:
    """A string whose JSON text (with its quotes) is ``size`` bytes long."""
    return "x" * (size - 2)


# -- strings ------------------------------------------------------------------------------


def test_a_lone_surrogate_is_refused_with_its_path() -> None:
    value = {"items": [{"name": "a"}, {}, {}, {"name": "caf\ud800"}]}
    assert refused(value, "saga data") == "saga data.items[3].name: lone surrogate '\\ud800'"


@pytest.mark.parametrize("text", ["\udc00", "x\ud800y", "\ud83d\ude00", "\udfff"])
def test_every_surrogate_code_point_is_refused(text: str) -> None:
    # A Python str holds code points: a high and a low surrogate side by side are two lone
    # surrogates (UTF-8 cannot encode them), not the character they would pair to in UTF-16.
    assert "lone surrogate" in refused([text])


def test_characters_beyond_the_basic_plane_are_accepted() -> None:
    assert to_json({"emoji": "😀", "cjk": "漢字", "rtl": "עברית"}) == {
        "emoji": "😀",
        "cjk": "漢字",
        "rtl": "עברית",
    }


def test_a_nul_character_is_refused_in_values_and_keys() -> None:
    assert refused({"a": ["ok", "a\x00b"]}) == "value.a[1]: NUL character '\\x00'"
    assert refused({"a": {"k\x00": 1}}) == "value.a: dict key 'k\\x00': NUL character '\\x00'"
    assert refused({"k\ud800": 1}) == "value: dict key 'k\\ud800': lone surrogate '\\ud800'"


def test_other_control_characters_and_a_written_backslash_u0000_are_accepted() -> None:
    # The fast check looks for the escape \u0000 in the encoded bytes; a backslash written
    # before "u0000" encodes as \\u0000 and is no NUL.
    text = "tab\t, bell\x07, unit separator\x1f, delete\x7f, and \\u0000 as six characters"
    assert to_json({"t": text}) == {"t": text}


def test_errors_are_recordable_text_even_when_the_path_is_not() -> None:
    # A step's failure reason is recorded in the store: it must obey the string rules itself.
    message = refused({"bad\x00key\ud800": {"x": object()}})
    assert "\x00" not in message
    message.encode()  # no lone surrogate
    assert "bad\\x00key\\ud800" in message


# -- numbers ------------------------------------------------------------------------------


def test_integers_must_fit_64_bits_signed() -> None:
    assert to_json([INT_MIN, INT_MAX]) == [-(2**63), 2**63 - 1]
    assert refused({"n": [INT_MAX + 1]}) == (
        "value.n[0]: the integer 9223372036854775808 does not fit in 64 bits (signed)"
    )
    assert "does not fit" in refused(INT_MIN - 1)


@pytest.mark.parametrize("number", [math.inf, -math.inf, math.nan])
def test_numbers_must_be_finite(number: float) -> None:
    assert refused({"x": number}).startswith("value.x: ")


def test_the_extreme_finite_floats_are_accepted() -> None:
    values = [1.7976931348623157e308, -1.7976931348623157e308, 5e-324, -0.0, 0.1]
    assert to_json(values) == values


def test_booleans_stay_booleans_and_int_enums_become_ints() -> None:
    class Level(enum.IntEnum):
        HIGH = 3

    out = to_json({"b": True, "level": Level.HIGH})
    assert out == {"b": True, "level": 3}
    assert isinstance(out, dict) and out["b"] is True and type(out["level"]) is int


# -- keys ---------------------------------------------------------------------------------


def test_dict_keys_must_be_strings_at_any_depth() -> None:
    assert refused({"a": {"b": {1: "x"}}}) == "value.a.b: dict key 1 is not a string"
    assert refused([{None: 1}]) == "value[0]: dict key None is not a string"


def test_str_subclass_keys_and_values_become_str() -> None:
    class Colour(enum.StrEnum):
        RED = "red"

    out = to_json({"x": {Colour.RED: [Colour.RED]}})
    assert out == {"x": {"red": ["red"]}}
    assert isinstance(out, dict) and isinstance(out["x"], dict)
    [(key, value)] = out["x"].items()
    assert type(key) is str and isinstance(value, list) and type(value[0]) is str
    orjson.dumps(out)  # orjson, and so the stores, refuse str subclasses as keys


# -- depth --------------------------------------------------------------------------------


def test_depth_limit_is_64_nested_arrays_and_objects() -> None:
    assert MAX_DEPTH == 64
    assert to_json(nested(MAX_DEPTH)) == nested(MAX_DEPTH)
    message = refused({"a": nested(MAX_DEPTH)})
    assert message == "value.a" + "[0]" * (MAX_DEPTH - 1) + ": nested deeper than 64 levels"


def test_objects_and_dataclasses_count_towards_the_depth() -> None:
    @dataclass
    class Box:
        inner: object

    deep: object = 1
    for i in range(MAX_DEPTH):
        deep = Box(deep) if i % 2 else {"k": deep}
    assert to_json(deep) is not None
    assert "nested deeper than 64 levels" in refused([deep])


# -- size ---------------------------------------------------------------------------------


def test_size_limit_per_value_counts_json_bytes() -> None:
    at_limit = string_of_json_size(MAX_VALUE_BYTES)
    assert to_json(at_limit) == at_limit
    assert refused({"blob": at_limit}, "result of step 'x'") == (
        "result of step 'x': 262,153 bytes of JSON exceeds the limit of 262,144"
    )


def test_size_counts_utf8_bytes_and_escapes() -> None:
    two_bytes = "é" * (MAX_VALUE_BYTES // 2)  # 2 bytes each in UTF-8, plus two quotes
    assert "exceeds the limit" in refused(two_bytes)
    escaped = "\n" * (MAX_VALUE_BYTES // 2)  # \n is two bytes of JSON
    assert "exceeds the limit" in refused(escaped)


def test_two_values_at_the_limit_fit_one_message() -> None:
    from sagakit.messages import MAX_MESSAGE_BYTES

    assert 2 * MAX_VALUE_BYTES + 64 * 1024 < MAX_MESSAGE_BYTES


# -- check_json and check_name ------------------------------------------------------------


def test_check_json_applies_the_rules_with_a_size_of_choice() -> None:
    check_json({"a": ["x" * 100]}, max_bytes=200)
    with pytest.raises(
        EncodingError, match=r"^payload: 110 bytes of JSON exceeds the limit of 100"
    ):
        check_json({"a": ["x" * 100]}, path="payload", max_bytes=100)
    with pytest.raises(EncodingError, match=r"^value\.a: dict key 1 is not a string"):
        check_json({"a": {1: 2}})  # type: ignore[dict-item]
    with pytest.raises(EncodingError, match=r"nested deeper"):
        check_json(nested(MAX_DEPTH + 1))


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "empty"),
        ("k" * (MAX_NAME_LENGTH + 1), "longer than 512 characters (513)"),
        ("order\x00", "NUL character '\\x00'"),
        ("caf\ud800", "lone surrogate '\\ud800'"),
        (7, "a int, not a string"),
    ],
)
def test_check_name_refuses_with_what_is_wrong(name: object, problem: str) -> None:
    with pytest.raises(EncodingError) as caught:
        check_name(name, "idempotency key")
    assert str(caught.value) == f"idempotency key: {problem}"


def test_check_name_accepts_names_up_to_the_limit() -> None:
    for name in ("k", "ключ-7", "k" * MAX_NAME_LENGTH, "漢" * MAX_NAME_LENGTH):
        assert check_name(name, "key") == name
    # 512 characters of 4 bytes are 2,048 bytes: within PostgreSQL's 2,704-byte index entry.
    assert len(("😀" * MAX_NAME_LENGTH).encode()) <= 2704


def test_printable_escapes_only_what_the_rules_refuse() -> None:
    assert printable("plain ascii") == "plain ascii"
    assert printable("café ✓") == "café ✓"
    assert printable("a\x00b\ud800c") == "a\\x00b\\ud800c"


def test_docs_state_the_limits() -> None:
    text = DOCS.read_text()
    section = text[text.index("## Values sagakit accepts") :]
    for figure in ("64", "262,144", "512", "1,048,576", "-2^63", "2^63 - 1"):
        assert figure in section, figure


# -- the rules, stated plainly, against to_json ---------------------------------------------


def follows_rules(value: object, depth: int = 0) -> bool:
    """The rules written the slow and obvious way (without the size rule)."""
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, str):
        return "\x00" not in value and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, int):
        return -(2**63) <= value <= 2**63 - 1
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, dict)):
        if depth >= MAX_DEPTH:
            return False
        if isinstance(value, dict):
            return all(follows_rules(k) and follows_rules(v, depth + 1) for k, v in value.items())
        return all(follows_rules(item, depth + 1) for item in value)
    return False


# Text drawn from every code point, with the ones the rules are about made likely.
tricky_text = st.one_of(
    st.text(),
    st.text(alphabet=st.sampled_from(["a", "é", "\x00", "\ud800", "\udfff", "\\", "😀", "\n"])),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([INT_MIN, INT_MAX, INT_MIN - 1, INT_MAX + 1]),
    st.floats(),
    tricky_text,
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(tricky_text, inner, max_size=4)
    ),
    max_leaves=30,
)


@given(value=values)
@settings(max_examples=400, deadline=None)
def test_to_json_accepts_exactly_what_the_rules_allow(value: object) -> None:
    try:
        out = to_json(value)
    except EncodingError as exc:
        assert not follows_rules(value)
        message = str(exc)
        assert message.startswith("value") and "\x00" not in message
        message.encode()
        return
    assert follows_rules(value)
    assert out == value or (isinstance(value, float) and math.isnan(value))
    assert len(orjson.dumps(out)) <= MAX_VALUE_BYTES
    assert orjson.loads(orjson.dumps(out)) == out


@given(depth=st.integers(min_value=1, max_value=MAX_DEPTH + 3), leaf=tricky_text)
@settings(max_examples=100, deadline=None)
def test_deep_values_obey_the_depth_and_string_rules(depth: int, leaf: str) -> None:
    value = nested(depth, {"leaf": leaf})
    accepted = depth + 1 <= MAX_DEPTH and follows_rules(leaf)
    if accepted:
        assert to_json(value) == value
    else:
        refused(value)


# -- whatever to_json accepts, both stores hold -------------------------------------------


class StoreRoundTrip:
    """A store open on an event loop of its own, for hypothesis's synchronous examples."""

    def __init__(self, open_store: type[SqliteStore] | type[PostgresStore], url: str) -> None:
        self.runner = asyncio.Runner()
        self.store: Store = self.runner.run(self._open(open_store, url))
        self.count = 0

    @staticmethod
    async def _open(kind: type[SqliteStore] | type[PostgresStore], url: str) -> Store:
        return kind(url, owner=True)

    def round_trip(self, data: JSON, reason: str) -> tuple[JSON, str | None, JSON]:
        """``data`` as an instance's data, ``reason`` as its reason and in a history entry's
        detail, written and read back."""
        self.count += 1
        saga_id = f"values-{self.count}"
        instance = replace(TEMPLATE, saga_id=saga_id, data=data, failure_reason=reason)
        entry = HistoryEntry(1.0, HistoryKind.CREATED, detail={"value": data})
        transition = InstanceWrite(
            saga_id, instance=instance, expected_revision=None, history=[entry]
        )
        return self.runner.run(self._write_read(transition))

    async def _write_read(self, transition: InstanceWrite) -> tuple[JSON, str | None, JSON]:
        await self.store.commit(Batch([transition]))
        got = await self.store.get(transition.saga_id)
        assert got is not None
        [history] = await self.store.history(transition.saga_id)
        return got.data, got.reason, history.detail["value"]

    def close(self) -> None:
        self.runner.run(self.store.close())
        self.runner.close()


TEMPLATE = SagaInstance(
    saga_id="template",
    saga_type="values",
    version=1,
    fingerprint="fp",
    status=SagaStatus.PENDING,
    data=None,
    steps=(),
    correlation_id="values",
    created_at=1.0,
    updated_at=1.0,
    input_digest="",
)


@pytest.fixture(scope="module")
def sqlite_round_trip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreRoundTrip]:
    trip = StoreRoundTrip(SqliteStore, str(tmp_path_factory.mktemp("values") / "values.db"))
    yield trip
    trip.close()


def require_postgres() -> None:
    """The conftest's check, for the module-scoped fixtures here (it has function scope)."""

    async def probe() -> None:
        conn = await asyncio.wait_for(asyncpg.connect(PG_URL), 5)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is unreachable at {PG_URL} under CI: {exc}")
        pytest.skip(f"PostgreSQL is unreachable at {PG_URL}: {exc}")


@pytest.fixture(scope="module")
def postgres_round_trip() -> Iterator[StoreRoundTrip]:
    require_postgres()
    url = new_schema_url(PG_URL)
    trip = StoreRoundTrip(PostgresStore, url)
    try:
        yield trip
    finally:
        trip.close()
        dsn, schema = split_url(url)

        async def drop() -> None:
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()

        asyncio.run(drop())


@pytest.mark.parametrize("which", ["sqlite_round_trip", "postgres_round_trip"])
def test_values_that_to_json_accepts_round_trip_through_both_stores(
    which: str, request: pytest.FixtureRequest
) -> None:
    trip: StoreRoundTrip = request.getfixturevalue(which)

    @given(value=values, reason=tricky_text)
    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    def check(value: object, reason: str) -> None:
        try:
            data = to_json(value, path="saga data")
            text = to_json(reason, path="reason")
        except EncodingError:
            return
        assert isinstance(text, str)
        assert trip.round_trip(data, text) == (data, text, data)

    check()
    assert trip.count > 0


@pytest.mark.parametrize("which", ["sqlite_round_trip", "postgres_round_trip"])
def test_the_values_at_each_limit_round_trip_through_both_stores(
    which: str, request: pytest.FixtureRequest
) -> None:
    trip: StoreRoundTrip = request.getfixturevalue(which)
    edges: list[JSON] = [
        nested(MAX_DEPTH - 2, {"leaf": [INT_MIN, INT_MAX, 5e-324, -1.7976931348623157e308]}),
        string_of_json_size(MAX_VALUE_BYTES),
        "😀" * ((MAX_VALUE_BYTES - 2) // 4),
        {"\\u0000": "\\u0000 is six characters", "\x01\x1f": "\t\r\n\x7f"},
        {"k" * 1000: "long keys are values, not names"},
    ]
    for edge in edges:
        data = to_json(edge)
        assert trip.round_trip(data, "edge") == (data, "edge", data)


def test_what_postgresql_refuses_is_what_the_rules_refuse() -> None:
    """The probes behind the rules (docs/concepts.md): a text column refuses a NUL and a lone
    surrogate, an index entry holds 2,704 bytes, jsonb refuses \\u0000. If a new server
    accepts them, the rules may loosen; if it refuses more, they must tighten."""
    require_postgres()

    async def probes() -> dict[str, str]:
        conn = await asyncpg.connect(PG_URL)
        found: dict[str, str] = {}
        try:
            await conn.execute("CREATE TEMP TABLE probe (t text PRIMARY KEY, j jsonb)")
            cases = {
                "text NUL": ("INSERT INTO probe (t) VALUES ($1)", "a\x00b"),
                "text surrogate": ("INSERT INTO probe (t) VALUES ($1)", "caf\ud800"),
                "jsonb NUL": (
                    "INSERT INTO probe (t, j) VALUES ('j', $1::text::jsonb)",
                    '"\\u0000"',
                ),
                "long key": ("INSERT INTO probe (t) VALUES ($1)", os.urandom(1400).hex()),
                "key at limit": ("INSERT INTO probe (t) VALUES ($1)", "😀" * MAX_NAME_LENGTH),
            }
            for label, (sql, arg) in cases.items():
                try:
                    await conn.execute(sql, arg)
                    found[label] = "ok"
                except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    found[label] = type(exc).__name__
        finally:
            await conn.close()
        return found

    found = asyncio.run(probes())
    assert found["key at limit"] == "ok"
    assert {k: v != "ok" for k, v in found.items() if k != "key at limit"} == {
        "text NUL": True,
        "text surrogate": True,
        "jsonb NUL": True,
        "long key": True,
    }, found
