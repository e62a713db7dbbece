"""Store adapters, chosen by URL: ``sqlite:///path.db`` (the default)."""

from __future__ import annotations

from typing import Any

from sagakit.errors import StorageError
from sagakit.storage.postgres import PostgresStore
from sagakit.storage.sqlite import SqliteStore

DEFAULT_URL = "sqlite:///sagakit.db"


def open_store(url: str, **options: Any) -> SqliteStore | PostgresStore:
    """Open the store a URL names. ``owner=True`` for a worker, which creates the database (a
    SQLite file, the PostgreSQL schema) when it is missing; anyone else opens an existing one
    only, unless ``create=True``.

    ``sqlite:///relative.db``, ``sqlite:////absolute.db``, ``postgresql://user@host/db``
    (optionally ``?schema=name``).
    """
    if url.startswith("sqlite:"):
        return SqliteStore.from_url(url, **options)
    if url.startswith(("postgresql:", "postgres:")):
        return PostgresStore.from_url(url, **options)
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise StorageError(
        f"unsupported database URL {url!r} (scheme {scheme!r}); use sqlite:///path.db"
    )


__all__ = ["DEFAULT_URL", "PostgresStore", "SqliteStore", "open_store"]
