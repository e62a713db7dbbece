"""The event loop sagakit's own processes run on: uvloop where it is installed.

A worker does thousands of loop operations a second (a task and a few callbacks per step,
timers, sockets); uvloop does them in C, and on the benchmark (bench/SPEC.md) the worker
spends about a tenth less CPU per saga on it. ``sagakit worker`` and ``sagakit demo`` run
on :func:`run`; in your own program call it instead of ``asyncio.run``::

    from sagakit.runtime import run

    run(main())

``SAGAKIT_LOOP=asyncio`` chooses the standard loop; ``SAGAKIT_LOOP=uvloop`` requires uvloop.
A worker is correct on either loop: the choice is only one of speed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

from sagakit.errors import ConfigurationError

T = TypeVar("T")


class LoopChoiceError(ConfigurationError):
    """SAGAKIT_LOOP names no loop, or uvloop, which is not installed."""


#: The environment variable that chooses the loop: unset or ``auto``, ``asyncio``, ``uvloop``.
ENV_LOOP = "SAGAKIT_LOOP"


def loop_name() -> str:
    """``"uvloop"`` or ``"asyncio"``: the loop :func:`run` uses in this environment."""
    wanted = os.environ.get(ENV_LOOP, "auto").strip().lower() or "auto"
    if wanted not in ("auto", "asyncio", "uvloop"):
        raise LoopChoiceError(f"{ENV_LOOP}={wanted!r}: expected auto, asyncio or uvloop")
    installed = importlib.util.find_spec("uvloop") is not None
    if wanted == "uvloop" and not installed:
        raise LoopChoiceError(
            f"{ENV_LOOP}=uvloop, but uvloop is not installed (pip install uvloop)"
        )
    if wanted == "asyncio" or not installed:
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on a new event loop until it completes, as ``asyncio.run`` does."""
    try:
        name = loop_name()
    except LoopChoiceError:
        main.close()
        raise
    if name == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
