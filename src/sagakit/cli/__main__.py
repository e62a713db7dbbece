"""``python -m sagakit.cli``: the same as the ``sagakit`` command."""

from __future__ import annotations

import sys

from sagakit.cli import main

if __name__ == "__main__":
    sys.exit(main())
