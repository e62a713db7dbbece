"""Log formats for the worker: one JSON object per line, for log pipelines.

``sagakit worker --log-format json`` uses :class:`JsonFormatter`; a program that runs a
:class:`~sagakit.Worker` itself can too::

    import logging
    from sagakit.logs import JsonFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])

Each line holds ``time`` (ISO 8601, UTC), ``level``, ``logger`` and ``message``, then the fields
of :data:`FIELDS` that the line carries (its ``extra``), and ``traceback`` for a line logged
with an exception. The worker's lines about sagas (logger ``sagakit.saga``) carry ``saga_id``,
``saga_type``, ``correlation_id`` and ``event``, and ``step``, ``phase``, ``attempt`` and
``reason`` where they apply.

>>> record = logging.LogRecord("sagakit.saga", logging.WARNING, "", 0, "saga %s: failed",
...                            ("s-1",), None)
>>> record.saga_id, record.created = "s-1", 0.0
>>> import json
>>> json.loads(JsonFormatter().format(record)) == {
...     "time": "1970-01-01T00:00:00.000Z", "level": "WARNING", "logger": "sagakit.saga",
...     "message": "saga s-1: failed", "saga_id": "s-1"}
True
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson

#: The ``extra`` fields a JSON line carries when a log call gives them.
FIELDS = (
    "saga_id",
    "saga_type",
    "correlation_id",
    "step",
    "phase",
    "attempt",
    "event",
    "reason",
    "worker_id",
)


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see the module's documentation)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = record.__dict__
        for name in FIELDS:
            value = fields.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["traceback"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


def _iso(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
