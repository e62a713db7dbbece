"""The committer's view of the instances it advances: committed, staged and lost states.

Held by one object, shared by the roles that read it (local steps, ownership) and written by
the committer alone, so that no role reaches into another's fields.
"""

from __future__ import annotations

from sagakit.state import SagaInstance


class Instances:
    __slots__ = ("cache", "lost", "staged", "staged_keys")

    def __init__(self) -> None:
        #: Committed states of the unsettled instances this worker owns.
        self.cache: dict[str, SagaInstance] = {}
        #: Decided, not yet committed (the batch in flight): read before the cache.
        self.staged: dict[str, SagaInstance] = {}
        #: Keyed starts the batch in flight creates, by (saga type, idempotency key).
        self.staged_keys: dict[tuple[str, str], SagaInstance] = {}
        #: (saga id, revision) of staged states the last commit did not write; see
        #: ``Committer._finish``.
        self.lost: set[tuple[str, int]] = set()

    def hold(self, instance: SagaInstance) -> None:
        """Keep a committed state (a claimed or freshly written instance)."""
        self.cache[instance.saga_id] = instance

    def forget(self, saga_id: str) -> None:
        self.cache.pop(saga_id, None)

    def forget_all(self) -> None:
        """Drop every committed state held (the lease was lost: others may own them now)."""
        self.cache.clear()

    def unstage(self, saga_id: str, instance: SagaInstance | None) -> None:
        """Forget what a batch staged for ``saga_id``, unless a later batch staged something
        newer."""
        if instance is None:
            return
        if self.staged.get(saga_id) is instance:
            del self.staged[saga_id]
        if instance.idempotency_key is not None:
            key = (instance.saga_type, instance.idempotency_key)
            if self.staged_keys.get(key) is instance:
                del self.staged_keys[key]
