"""The ``sagakit`` command: parse -> call the client -> print.

Every command takes ``--db URL`` (default: ``$SAGAKIT_DB``, else ``sqlite:///sagakit.db``).
Read and operator commands open an existing database only; ``demo`` and ``worker`` create it.

Exit codes: 0 success; 1 an error (missing database, bad URL, unknown saga, a refused or
unapplied operator command, a demo whose ledgers or instances are not all right); 2 a usage
error. Errors are one line on stderr, never a traceback. See docs/cli.md.

The package: :mod:`~sagakit.cli.parser` (every command and option),
:mod:`~sagakit.cli.common` (the URL, errors, a client), :mod:`~sagakit.cli.render` (tables and
JSON), and one module per command group — :mod:`~sagakit.cli.demo`, :mod:`~sagakit.cli.worker`,
:mod:`~sagakit.cli.inspection` (list, show, history, dead-letters), :mod:`~sagakit.cli.workers`,
:mod:`~sagakit.cli.operations` (abort, retry, resolve) and :mod:`~sagakit.cli.maintenance`
(migrate, purge).
"""

from __future__ import annotations

import argparse
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
        return handler(args)
    except CommandRefused as exc:
        _error(f"refused: {exc}")
        return 1
    except (SagakitError, CliError, OSError) as exc:  # OSError includes TimeoutError
        _error(str(exc) or type(exc).__name__)
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


def _error(message: str) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    print(f"{PROG}: error: {first}", file=sys.stderr, flush=True)


__all__ = ["DEFAULT_WAIT_TIMEOUT", "ENV_DB", "PROG", "CliError", "build_parser", "main"]
