"""The sagas of the database fixture ``sagakit_f314044.db``, written by sagakit at commit
f314044 (fingerprints v1) with ``write_f314044_fixture.py``.

A v1 fingerprint holds the module and name of each local step's function, so this file is
loaded under the module name :data:`MODULE` both when the fixture is written and when a test
reads it; its functions then have the names they had when it was written. It uses only what
sagakit's API had at f314044.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sagakit import Saga, StepContext

MODULE = "sagakit_legacy_app"
#: Remote steps wait this long (about 30 years): the fixture's timeout timers never fall due
#: while a test runs, whenever it runs.
LONG = 1e9
#: Set by the fixture's writer: the local step then waits forever, so that it is running when
#: the writer's worker stops.
WAIT_FOREVER = False


async def hold(ctx: StepContext[Any]) -> dict[str, Any]:
    if WAIT_FOREVER:
        await asyncio.Event().wait()
    return {"held": ctx.data}


async def unhold(ctx: StepContext[Any]) -> None:
    return None


def sagas() -> list[Saga[Any]]:
    """``legacy-local``: a local step, then a remote one; ``legacy-remote``: remote steps."""
    local: Saga[Any] = Saga("legacy-local", version=1)
    local.local("hold", hold, compensation=unhold)
    local.remote(
        "notify", participant="mailer", command="mail.send", kind="retriable", timeout=LONG
    )
    remote: Saga[Any] = Saga("legacy-remote", version=1)
    remote.remote(
        "reserve",
        participant="stock",
        command="stock.reserve",
        compensation="stock.release",
        timeout=LONG,
    )
    remote.remote("ship", participant="stock", command="stock.ship", kind="pivot", timeout=LONG)
    return [local, remote]
