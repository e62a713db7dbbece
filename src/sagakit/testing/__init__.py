"""Tools for testing sagas: invariant checks (and, as they land, fakes and the harness)."""

from __future__ import annotations

from sagakit.testing.invariants import check_invariants

__all__ = ["check_invariants"]
