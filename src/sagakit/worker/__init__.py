"""The worker runtime: inbound message, timer or command -> decide() -> one commit -> effects.

``Worker`` (facade.py) composes one role per module:

- items.py        the committer's items, inbox and batches
- instances.py    committed, staged and lost instance states (the committer's cache)
- committer.py    batching, staging, the fence, the commit, what follows a commit
- apply.py        a decision -> the instance write, history and outbound messages
- sources.py      replies, due timers and operator commands, on one poll helper
- local_steps.py  runs local steps (local_timeouts.py: their timeouts)
- ownership.py    the lease, claims, takeovers
- clock.py        the store's clock (Semantics 13)

Brokers add a reply source to sources.py; workflows and choreography add a role of their own
beside these, composed by the façade.
"""

from __future__ import annotations

from sagakit.worker.facade import Worker

__all__ = ["Worker"]
