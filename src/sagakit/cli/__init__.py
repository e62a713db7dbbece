"""The ``sagakit`` command: parse -> call the client -> print.

Every command takes ``--db URL`` (default: ``$SAGAKIT_DB``, else ``sqlite:///sagakit.db``).
Only ``demo``, ``worker`` and ``migrate`` create a database; the others open an existing one.
Every command but ``worker`` takes ``--json``; every JSON input is ``--data JSON``.

Exit codes: 0 success; 1 an error (missing database, bad URL, unknown saga, a refused or
unapplied operator command, a demo whose ledgers or instances are not all right); 2 a usage
error. Errors are one line on stderr, never a traceback; output cut short by its reader
(``sagakit list | head -1``) is not an error. See docs/cli.md.

The package: :mod:`~sagakit.cli.parser` (every command and option),
:mod:`~sagakit.cli.common` (the URL, errors, a client, the app), :mod:`~sagakit.cli.render`
(tables, colours, progress and JSON), and one module per command group —
:mod:`~sagakit.cli.demo`, :mod:`~sagakit.cli.worker`, :mod:`~sagakit.cli.starting` (start),
:mod:`~sagakit.cli.inspection` (list, show, history, dead-letters),
:mod:`~sagakit.cli.definitions` (describe), :mod:`~sagakit.cli.operations` (abort, retry,
resolve) and :mod:`~sagakit.cli.maintenance` (migrate, purge).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
from collections.abc import Callable, Sequence

from sagakit.cli.common import DEFAULT_WAIT_TIMEOUT, ENV_DB, PROG, CliError
from sagakit.cli.parser import build_parser
from sagakit.errors import CommandRefused, SagakitError


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        code = handler(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        if not _stdout_closed():
            _error("broken pipe")
            return 1
        return 0
    except CommandRefused as exc:
        _error(f"refused: {exc}")
        return 1
    except (SagakitError, CliError, OSError) as exc:  # OSError includes TimeoutError
        _error(str(exc) or type(exc).__name__)
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except Exception as exc:
        # A bug, not bad input; still one line, and the traceback on request.
        if os.environ.get(ENV_TRACEBACK):
            raise
        _error(
            f"unexpected {type(exc).__name__}: {exc} (a bug in sagakit: please report it; "
            f"{ENV_TRACEBACK}=1 shows the traceback)"
        )
        return 1


#: Set to show the traceback of an unexpected error instead of its one line.
ENV_TRACEBACK = "SAGAKIT_TRACEBACK"


def _stdout_closed() -> bool:
    """Whether stdout's reader has gone (``| head``); then stdout is pointed at /dev/null, so
    that the interpreter's last flush at exit raises nothing either."""
    try:
        poller = select.poll()  # the write end of a pipe with no reader polls as an error
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        closed = any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or no real stdout
        closed = True
    if closed:
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
    return closed


def _error(message: str) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    print(f"{PROG}: error: {first}", file=sys.stderr, flush=True)


__all__ = ["DEFAULT_WAIT_TIMEOUT", "ENV_DB", "PROG", "CliError", "build_parser", "main"]
