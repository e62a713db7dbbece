"""What the PostgreSQL store stands on: the URL and its schema, the migrations that build
that schema, and the named statements (``Q``) that use it.

Schema changes are numbered SQL files in ``sql/postgres``, applied in order under an advisory
lock (:func:`apply_migrations`, run by ``PostgresStore.migrate`` and ``sagakit migrate``). The
statements are named queries in ``sql/postgres/queries.sql``.
"""

from __future__ import annotations

import re
import uuid
from importlib import resources
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from sagakit.errors import StorageError
from sagakit.storage.queries import fill, load_queries

#: The statements of the PostgreSQL store, by name, from ``sql/postgres/queries.sql``.
Q = load_queries("postgres")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
#: A connection of its own or one lent by the pool: both run statements alike.
Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


def split_url(url: str) -> tuple[str, str | None]:
    """The asyncpg DSN and the schema of a ``postgresql://…[?schema=name]`` URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise StorageError(f"not a PostgreSQL URL: {url!r}")
    query = parse_qsl(parts.query)
    schema = next((v for k, v in query if k == "schema"), None)
    if schema is not None and not _IDENT.match(schema):
        raise StorageError(f"bad schema name {schema!r} (lower-case letters, digits, _)")
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment)), schema


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, SQL) of every migration shipped, in order."""
    folder = resources.files("sagakit.storage").joinpath("sql/postgres")
    found = []
    for item in folder.iterdir():
        match = re.match(r"^(\d{4})_(\w+)\.sql$", item.name)
        if match:
            found.append((int(match.group(1)), match.group(2), item.read_text()))
    return sorted(found)


async def apply_migrations(conn: asyncpg.Connection, schema: str | None) -> list[int]:
    """Apply every migration not applied yet, in order, in one transaction under an advisory
    lock (so several processes may run it at once); the versions applied."""
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute(Q["lock_migrations"])
        if schema:
            # An identifier is no bound parameter: the name (checked by split_url
            # against _IDENT) is put into the statement.
            await conn.execute(fill(Q["create_schema"], schema=schema))
        await conn.execute(Q["create_migrations_table"])
        done = {r[0] for r in await conn.fetch(Q["applied_migrations"])}
        for version, name, sql in migrations():
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute(Q["record_migration"], version, name)
            applied.append(version)
    return applied


def new_schema_url(url: str, prefix: str = "t") -> str:
    """``url`` with a fresh ``schema=`` (tests isolate themselves this way)."""
    dsn, _ = split_url(url)
    glue = "&" if "?" in dsn else "?"
    return f"{dsn}{glue}schema={prefix}_{uuid.uuid4().hex[:12]}"
