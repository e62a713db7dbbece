"""What the PostgreSQL store stands on: the URL and its schema, the migrations that build
that schema, and the named statements (``Q``) that use it.

Schema changes are numbered SQL files in ``sql/postgres``, applied in order under an advisory
lock (:func:`apply_migrations`, run by ``PostgresStore.migrate`` and ``sagakit migrate``). The
statements are named queries in ``sql/postgres/queries.sql``.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
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


@dataclass(frozen=True)
class PostgresUrl:
    """A ``postgresql://…`` URL taken apart: the DSN asyncpg connects with, sagakit's own
    ``schema=``, and ``connect_timeout=`` (seconds; asyncpg takes it as an argument, not in
    the DSN, where it would be sent to the server as a setting it does not know)."""

    dsn: str
    schema: str | None = None
    connect_timeout: float | None = None


#: libpq's ``sslmode`` values, which asyncpg accepts too.
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def parse_url(url: str) -> PostgresUrl:
    """Check and take apart a PostgreSQL URL; a StorageError names what is wrong with it."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed IPv6 bracket, say
        raise StorageError(f"bad PostgreSQL URL {url!r}: {exc}") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise StorageError(f"not a PostgreSQL URL: {url!r}")
    _check_hosts(url, parts.netloc)
    query = parse_qsl(parts.query)
    schema = next((v for k, v in query if k == "schema"), None)
    if schema is not None and not _IDENT.match(schema):
        raise StorageError(f"bad schema name {schema!r} (lower-case letters, digits, _)")
    sslmode = next((v for k, v in query if k == "sslmode"), None)
    if sslmode is not None and sslmode not in SSL_MODES:
        raise StorageError(f"bad sslmode {sslmode!r} in the URL: use one of {', '.join(SSL_MODES)}")
    timeout = next((v for k, v in query if k == "connect_timeout"), None)
    seconds = None
    if timeout is not None:
        try:
            seconds = float(timeout)
        except ValueError:
            seconds = -1.0
        if not seconds > 0 or seconds == float("inf"):
            raise StorageError(f"bad connect_timeout {timeout!r} in the URL: seconds, above 0")
    rest = urlencode([(k, v) for k, v in query if k not in ("schema", "connect_timeout")])
    dsn = urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment))
    return PostgresUrl(dsn, schema, seconds)


def _check_hosts(url: str, netloc: str) -> None:
    # Each of host[:port], [v6]:port, h1:p1,h2:p2 (libpq's multi-host form) by itself: what
    # urlsplit's .port cannot read, and asyncpg would refuse with a traceback at connect.
    for spec in netloc.rpartition("@")[2].split(","):
        if spec.startswith("["):
            _, bracket, port = spec[1:].partition("]")
            if not bracket or (port and not port.startswith(":")):
                raise StorageError(f"bad PostgreSQL URL {url!r}: bad IPv6 host {spec!r}")
            port = port[1:]
        else:
            port = spec.partition(":")[2]
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise StorageError(f"bad PostgreSQL URL {url!r}: port {port!r} is not a number 1-65535")


def split_url(url: str) -> tuple[str, str | None]:
    """The asyncpg DSN and the schema of a ``postgresql://…[?schema=name]`` URL."""
    parsed = parse_url(url)
    return parsed.dsn, parsed.schema


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
