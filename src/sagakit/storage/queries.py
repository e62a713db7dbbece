"""Named SQL queries, kept as SQL files per dialect (the procrastinate habit).

``sql/<dialect>/queries.sql`` holds one statement per name::

    -- name: claim_instances
    -- Take over unsettled instances whose owner has no live lease (revision bump = fencing).
    UPDATE ...;

A ``-- name:`` line opens a query; the comment lines right after it say what it serves. The
statement runs to the next ``-- name:`` line; its whole-line comments and its trailing ``;`` are
left out. A ``{marker}`` in a statement stands for a part only known at run time (a filter's
``WHERE`` clause, the placeholders of an ``IN`` list, an identifier): :func:`fill` puts it in.
"""

from __future__ import annotations

import re
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*(.*?)\s*$")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
_MARKER = re.compile(r"\{([a-z_]+)\}")


class Queries(dict[str, str]):
    """The statements of one file by name; a name it lacks is an error that says which file."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source
        #: What each query serves: the comment lines right after its name, one per line.
        self.descriptions: dict[str, str] = {}

    def __missing__(self, name: str) -> str:
        raise KeyError(f"no query named {name!r} in {self.source}")


def load_queries(dialect: str) -> Queries:
    """The named queries of ``sql/<dialect>/queries.sql`` (shipped as package data)."""
    path = f"sql/{dialect}/queries.sql"
    text = resources.files("sagakit.storage").joinpath(path).read_text(encoding="utf-8")
    return parse_queries(text, f"sagakit/storage/{path}")


def parse_queries(text: str, source: str = "<string>") -> Queries:
    """Parse a named-queries file; a malformed one raises :class:`ValueError` with its line."""
    queries = Queries(source)
    name: str | None = None
    start = 0
    doc: list[str] = []
    body: list[str] = []

    def close() -> None:
        if name is None:
            return
        sql = "\n".join(body).strip()
        if sql.endswith(";"):
            sql = sql[:-1].rstrip()
        if not sql:
            raise ValueError(f"{source}:{start}: query {name!r} has no statement")
        queries[name] = sql
        queries.descriptions[name] = "\n".join(doc)

    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        header = _NAME.match(line.strip())
        if header:
            close()
            name, start, doc, body = header.group(1), number, [], []
            if not _IDENT.match(name):
                raise ValueError(f"{source}:{number}: bad query name {name!r}")
            if name in queries:
                raise ValueError(f"{source}:{number}: query {name!r} is defined twice")
        elif line.strip().startswith("--"):
            if name is not None and not body:
                doc.append(line.strip()[2:].strip())
        elif line.strip():
            if name is None:
                raise ValueError(f"{source}:{number}: SQL before the first '-- name:' line")
            body.append(line)
    close()
    return queries


def fill(sql: str, **parts: str) -> str:
    """``sql`` with each ``{marker}`` replaced by ``parts[marker]``: every marker of the
    statement must be given, and only those."""
    markers = set(_MARKER.findall(sql))
    if markers != parts.keys():
        raise ValueError(f"markers {sorted(markers)} of the query, given {sorted(parts)}")
    return _MARKER.sub(lambda m: parts[m.group(1)], sql)
