"""PostgreSQL for the tests: a fresh schema per test, dropped afterwards.

The server is 127.0.0.1:5432 (override with SAGAKIT_TEST_PG). On a developer laptop without
it the PostgreSQL tests skip with the reason; under CI=true an unreachable server is a failure.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from sagakit.storage.postgres import new_schema_url, split_url

PG_URL = os.environ.get("SAGAKIT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


async def probe() -> str | None:
    try:
        conn = await asyncio.wait_for(asyncpg.connect(PG_URL), 5)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


async def require_postgres() -> None:
    problem = await probe()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is unreachable at {PG_URL} under CI: {problem}")
    pytest.skip(f"PostgreSQL is unreachable at {PG_URL}: {problem}")


async def drop_schema(url: str) -> None:
    dsn, schema = split_url(url)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A PostgreSQL URL with a schema of its own, dropped after the test."""
    await require_postgres()
    url = new_schema_url(PG_URL)
    try:
        yield url
    finally:
        await drop_schema(url)


@pytest.fixture
async def pg_schemas() -> AsyncIterator[Callable[[], str]]:
    """A factory of PostgreSQL URLs, each with a fresh schema; all dropped afterwards."""
    await require_postgres()
    made: list[str] = []

    def make() -> str:
        made.append(new_schema_url(PG_URL))
        return made[-1]

    try:
        yield make
    finally:
        for url in made:
            await drop_schema(url)


@pytest.fixture
async def postgres_available() -> None:
    """Skips (or, under CI=true, fails) the test when PostgreSQL is unreachable."""
    await require_postgres()
