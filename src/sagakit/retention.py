"""Retention policies: how long finished instances and idempotency keys are kept (F5).

Durations are written as a number and a unit, or several run together: ``90s``, ``45m``,
``12h``, ``30d``, ``2w``, ``1d12h``. Completed and failed instances older than ``instances``
are deleted (never stuck or running ones); the idempotency keys of started sagas and the
participants' inbox keys are kept for ``keys``, which is never shorter than ``instances`` plus
the longest redelivery window, so a purge can never let a duplicate start or a duplicate effect
through.

>>> parse_duration("1d12h")
129600.0
>>> RetentionPolicy.of("30d").keys / 86400
31.0
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sagakit.errors import ConfigurationError

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")

#: The longest a message may take to be redelivered (a broker's redelivery window, a paused
#: worker's outbox): keys outlive their instances by at least this much.
REDELIVERY_WINDOW = 86400.0


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``30d`` or ``1h30m``.

    Raises ConfigurationError (a ValueError) when malformed."""
    compact = text.strip().lower().replace(" ", "")
    if not compact:
        raise ConfigurationError("empty duration")
    position, total = 0, 0.0
    for match in _PART.finditer(compact):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if position != len(compact):
        raise ConfigurationError(
            f"bad duration {text!r}: use a number and a unit s, m, h, d or w (e.g. 30d, 12h)"
        )
    if total <= 0:
        raise ConfigurationError(f"a duration must be positive, not {text!r}")
    return total


@dataclass(frozen=True)
class RetentionPolicy:
    """Keep finished instances ``instances`` seconds, and their keys ``keys`` seconds."""

    instances: float
    keys: float
    batch: int = 500

    def __post_init__(self) -> None:
        if self.instances <= 0:
            raise ConfigurationError("instance retention must be positive")
        if self.keys < self.instances + REDELIVERY_WINDOW:
            raise ConfigurationError(
                "key retention must be at least the instance retention plus the redelivery "
                f"window ({REDELIVERY_WINDOW / 3600:g}h), or a duplicate could slip through"
            )
        if self.batch < 1:
            raise ConfigurationError("batch must be at least 1")

    @classmethod
    def of(cls, instances: str, keys: str | None = None, batch: int = 500) -> RetentionPolicy:
        """From durations as text, e.g. ``RetentionPolicy.of("30d")``."""
        return cls.of_seconds(
            parse_duration(instances), parse_duration(keys) if keys else None, batch
        )

    @classmethod
    def of_seconds(
        cls, instances: float, keys: float | None = None, batch: int = 500
    ) -> RetentionPolicy:
        """Keys default to the instance retention plus the redelivery window."""
        return cls(instances, keys if keys is not None else instances + REDELIVERY_WINDOW, batch)
