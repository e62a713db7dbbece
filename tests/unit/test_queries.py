"""The stores' SQL lives in named queries (sql/<dialect>/queries.sql): every name a store uses
exists, every query in a file is used, and every query says what it serves."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from sagakit.storage import postgres, queries, sqlite
from sagakit.storage.queries import Queries, fill, load_queries, parse_queries

STORES = {"sqlite": sqlite, "postgres": postgres}


def _module_trees(dialect: str) -> list[ast.Module]:
    """The store's modules: ``<dialect>.py`` and the ``<dialect>_<part>.py`` it is split into."""
    folder = Path(str(STORES[dialect].__file__)).parent
    paths = [folder / f"{dialect}.py", *sorted(folder.glob(f"{dialect}_*.py"))]
    return [ast.parse(path.read_text()) for path in paths]


def _nodes(dialect: str) -> list[ast.AST]:
    return [node for tree in _module_trees(dialect) for node in ast.walk(tree)]


def _used_names(dialect: str) -> set[str]:
    """Every ``Q["name"]`` in the store's modules."""
    return {
        node.slice.value
        for node in _nodes(dialect)
        if isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Name)
        and node.value.id == "Q"
        and isinstance(node.slice, ast.Constant)
        and isinstance(node.slice.value, str)
    }


def _filled(dialect: str) -> dict[str, set[str]]:
    """The queries the modules pass to ``fill(Q["name"], marker=...)``, with their markers."""
    found: dict[str, set[str]] = {}
    for node in _nodes(dialect):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "fill"
            and node.args
            and isinstance(node.args[0], ast.Subscript)
            and isinstance(node.args[0].slice, ast.Constant)
        ):
            found[str(node.args[0].slice.value)] = {k.arg for k in node.keywords if k.arg}
    return found


@pytest.mark.parametrize("dialect", sorted(STORES))
def test_every_name_used_exists_in_the_file(dialect: str) -> None:
    missing = _used_names(dialect) - load_queries(dialect).keys()
    assert not missing, f"used by {dialect}*.py but not in its queries.sql: {sorted(missing)}"


@pytest.mark.parametrize("dialect", sorted(STORES))
def test_every_query_in_the_file_is_used(dialect: str) -> None:
    unused = load_queries(dialect).keys() - _used_names(dialect)
    assert not unused, f"in {dialect}/queries.sql but unused by {dialect}*.py: {sorted(unused)}"


@pytest.mark.parametrize("dialect", sorted(STORES))
def test_the_module_loads_its_own_file(dialect: str) -> None:
    module_queries = STORES[dialect].Q
    assert module_queries == load_queries(dialect)
    assert module_queries.source.endswith(f"sql/{dialect}/queries.sql")


@pytest.mark.parametrize("dialect", sorted(STORES))
def test_every_query_has_a_one_line_description(dialect: str) -> None:
    loaded = load_queries(dialect)
    for name in loaded:
        doc = loaded.descriptions[name]
        assert doc and "\n" not in doc, f"{name}: wants one comment line, has {doc!r}"


@pytest.mark.parametrize("dialect", sorted(STORES))
def test_every_query_is_one_statement(dialect: str) -> None:
    for name, sql in load_queries(dialect).items():
        assert ";" not in sql, f"{name} holds more than one statement or a trailing ';'"


@pytest.mark.parametrize("dialect", sorted(STORES))
def test_the_queries_with_markers_are_the_ones_filled(dialect: str) -> None:
    loaded = load_queries(dialect)
    markers = {
        name: set(re.findall(r"\{([a-z_]+)\}", sql))
        for name, sql in loaded.items()
        if re.search(r"\{[a-z_]+\}", sql)
    }
    assert markers == _filled(dialect)


def test_postgres_queries_are_not_taken_for_migrations() -> None:
    assert all(name != "queries" for _, name, _ in postgres.migrations())


def test_postgres_notifications_use_the_listened_channel() -> None:
    for name in ("notify_command", "notify_released"):
        assert postgres.Q[name].startswith(f"NOTIFY {postgres.NOTIFY_CHANNEL},")


# -- the loader ---------------------------------------------------------------------------------

SAMPLE = """\
-- A header comment belongs to no query.

-- name: first
-- What the first one serves.
SELECT 1
-- a comment inside the statement is left out
FROM t;

-- name: second
-- What the second one serves.
UPDATE t SET x = {value};
"""


def test_parse_strips_the_trailing_semicolon_and_comments() -> None:
    parsed = parse_queries(SAMPLE, "sample.sql")
    assert parsed == {"first": "SELECT 1\nFROM t", "second": "UPDATE t SET x = {value}"}
    assert parsed.descriptions == {
        "first": "What the first one serves.",
        "second": "What the second one serves.",
    }


def test_a_missing_name_is_a_clear_error() -> None:
    parsed = parse_queries(SAMPLE, "sample.sql")
    with pytest.raises(KeyError, match=r"no query named 'third' in sample\.sql"):
        parsed["third"]
    with pytest.raises(KeyError, match=r"no query named 'nope' in .*sql/sqlite/queries\.sql"):
        sqlite.Q["nope"]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("-- name: a\n-- x\nSELECT 1;\n-- name: a\n-- y\nSELECT 2;\n", "defined twice"),
        ("SELECT 1;\n-- name: a\nSELECT 2;\n", "before the first"),
        ("-- name: a\n-- only a comment\n\n-- name: b\nSELECT 1;\n", "has no statement"),
        ("-- name: Bad-Name\nSELECT 1;\n", "bad query name"),
    ],
)
def test_a_malformed_file_is_refused_with_its_line(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=rf"^bad\.sql:\d+: .*{error}"):
        parse_queries(text, "bad.sql")


def test_fill_puts_in_every_marker_and_only_those() -> None:
    assert fill("SELECT {cols} FROM t{where}", cols="a", where=" WHERE b") == (
        "SELECT a FROM t WHERE b"
    )
    with pytest.raises(ValueError, match="markers"):
        fill("SELECT {cols} FROM t", cols="a", where="")
    with pytest.raises(ValueError, match="markers"):
        fill("SELECT {cols} FROM t{where}", cols="a")


def test_load_queries_returns_a_dict() -> None:
    loaded = load_queries("sqlite")
    assert isinstance(loaded, dict)
    assert isinstance(loaded, Queries)
    assert queries.load_queries("postgres")["now"] == "SELECT extract(epoch FROM clock_timestamp())"
