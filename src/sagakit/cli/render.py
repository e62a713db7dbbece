"""How the commands print: tables, colours and progress for people (through ``rich``), JSON for
programs.

On a terminal, tables fit its width (long cells wrap, or are shortened where the command says
so) and statuses are coloured (``NO_COLOR`` turns colour off). Written to a pipe or a file, the
output has no colour and no width: every row is one line, whole, as ``grep`` and ``cut`` expect.
``--wide`` gives a terminal the same unbounded lines. ``--json`` output never goes through here.
"""

from __future__ import annotations

import enum
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import TextIO

from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from sagakit import HistoryEntry, QueuedStart, SagaInstance

#: The width of output that goes to a pipe or a file (or to a terminal with ``--wide``):
#: wide enough that no row wraps.
UNBOUNDED = 1_000_000

#: A status's colour, by value (saga, step and compensation statuses share their words).
STATUS_STYLES = {
    "completed": "green",
    "done": "green",
    "compensated": "green",
    "resolved": "green",
    "failed": "red",
    "stuck": "bold red",
    "unknown": "magenta",
    "compensating": "yellow",
    "retrying": "yellow",
    "running": "cyan",
    "pending": "cyan",
    "started": "blue",
    "alive": "green",
    "expired": "red",
}


class Fit(enum.Enum):
    """What a column does when the table is wider than the terminal."""

    KEEP = "keep"  # never wrapped (ids, times, statuses): the other columns give way
    WRAP = "wrap"  # wrapped onto more lines: nothing is lost


@dataclass(frozen=True)
class Column:
    header: str
    fit: Fit = Fit.KEEP
    #: The narrowest a WRAP column gets: below that, the line runs past the
    #: terminal's edge (which wraps it) rather than a column being squeezed to nothing.
    min_width: int = 20


Cell = str | Text


def console(*, wide: bool = False, stream: TextIO | None = None) -> Console:
    """A console on ``stream`` (stdout by default) that writes text as it is (no markup)."""
    out = Console(
        file=stream if stream is not None else sys.stdout,
        markup=False,
        highlight=False,
        emoji=False,
        soft_wrap=False,
    )
    if wide or not out.is_terminal:
        out.width = UNBOUNDED
    return out


def emit(renderable: RenderableType, *, wide: bool = False) -> None:
    """Print to stdout: as it is on a terminal; on a pipe, each line without trailing blanks."""
    out = console(wide=wide)
    if out.is_terminal:
        out.print(renderable, crop=False)
        return
    with out.capture() as captured:
        out.print(renderable)
    text = "\n".join(line.rstrip() for line in captured.get().splitlines())
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def status_text(value: str) -> Text:
    """A status word in its colour."""
    return Text(value, style=STATUS_STYLES.get(value, ""))


def table(columns: Sequence[Column], rows: Sequence[Sequence[Cell]]) -> Table:
    grid = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", expand=False)
    cells = [[cell if isinstance(cell, Text) else Text(cell) for cell in row] for row in rows]
    for i, column in enumerate(columns):
        if column.fit is Fit.WRAP:
            grid.add_column(column.header, overflow="fold", min_width=column.min_width)
        else:
            # Its whole width, always: rich would otherwise shrink it, even to nothing.
            natural = max([len(column.header), *(row[i].cell_len for row in cells)])
            grid.add_column(column.header, no_wrap=True, min_width=natural)
    for row in cells:
        grid.add_row(*row)
    return grid


def print_table(
    columns: Sequence[Column], rows: Sequence[Sequence[Cell]], *, wide: bool = False
) -> None:
    emit(table(columns, rows), wide=wide)


def fields(pairs: Sequence[tuple[str, Cell]]) -> Table:
    """Name and value pairs, one per line, values aligned and wrapped."""
    grid = Table(box=None, pad_edge=False, show_edge=False, show_header=False, expand=False)
    grid.add_column(no_wrap=True, style="bold")
    grid.add_column(overflow="fold")
    for name, value in pairs:
        grid.add_row(name, value if isinstance(value, Text) else Text(value))
    return grid


class ProgressBar:
    """Progress of a long command on stderr: a bar on a terminal; elsewhere (a log file, CI) a
    plain line at most every :attr:`EVERY` seconds, and one at the end.

    Use it as a context manager and call :meth:`update`; a ``total`` of None is open-ended.
    """

    EVERY = 0.5

    def __init__(self, description: str, total: int | None) -> None:
        self._description = description
        self._total = total
        self._line = (0, "")
        self._printed = self._line
        self._shown_at = 0.0
        self._began = time.monotonic()
        err = Console(stderr=True, markup=False, highlight=False, emoji=False)
        self._bar: Progress | None = None
        if err.is_terminal:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[note]}"),
                TimeElapsedColumn(),
                console=err,
            )
            self._task = self._bar.add_task(description, total=total, note="")

    def __enter__(self) -> ProgressBar:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif kind is None and self._shown_at and self._line != self._printed:
            self._print()

    def update(self, completed: int, *, note: str = "", total: int | None = None) -> None:
        if total is not None:
            self._total = total
        self._line = (completed, note)
        if self._bar is not None:
            self._bar.update(self._task, completed=completed, total=self._total, note=note)
            return
        now = time.monotonic()
        if now - self._shown_at >= self.EVERY:
            self._shown_at = now
            self._print()

    def _print(self) -> None:
        self._printed = self._line
        completed, note = self._line
        of = "" if self._total is None else f"/{self._total}"
        tail = f" {note}" if note else ""
        elapsed = time.monotonic() - self._began
        print(
            f"[{elapsed:6.1f}s] {self._description} {completed}{of}{tail}",
            file=sys.stderr,
            flush=True,
        )


def iso(timestamp: float | None) -> str | None:
    """A Unix timestamp as ISO 8601 in UTC, e.g. ``2025-01-31T12:00:00.123Z``."""
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def human_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def summary_json(instance: SagaInstance) -> dict[str, object]:
    return {
        "saga_id": instance.saga_id,
        "saga_type": instance.saga_type,
        "version": instance.version,
        "status": instance.status.value,
        "reason": instance.reason,
        "stuck_step": instance.stuck_step,
        "correlation_id": instance.correlation_id,
        "owner": instance.owner,
        "created_at": iso(instance.created_at),
        "updated_at": iso(instance.updated_at),
    }


#: The status ``list`` and ``show`` give a start that waits in the queue for a worker.
QUEUED = "queued"


def queued_json(start: QueuedStart) -> dict[str, object]:
    """A queued start in the shape of an instance's summary, status ``queued`` (or, shown by
    its id once a worker answered it, ``refused`` or ``applied``)."""
    status = {"pending": QUEUED}.get(start.state.value, start.state.value)
    return {
        "saga_id": start.saga_id,
        "saga_type": start.saga_type,
        "version": start.version,
        "status": status,
        "reason": start.error,
        "stuck_step": None,
        "correlation_id": start.correlation_id,
        "owner": None,  # no worker has it yet
        "created_at": iso(start.queued_at),
        "updated_at": iso(start.queued_at),
        "idempotency_key": start.key,
        "command_id": start.command_id,
        "stalled": start.stalled,
    }


def detail_json(instance: SagaInstance, history: Sequence[HistoryEntry]) -> dict[str, object]:
    steps: list[object] = []
    for s in instance.steps:
        compensation: dict[str, object] | None = None
        if s.compensation is not None:
            compensation = {
                "status": s.compensation.status.value,
                "attempts": s.compensation.attempts,
                "error": s.compensation.error,
            }
        steps.append(
            {
                "name": s.name,
                "status": s.status.value,
                "attempts": s.attempts,
                "generation": s.generation,
                "outcome_known": s.outcome_known,
                "result": s.result,
                "error": s.error,
                "compensation": compensation,
            }
        )
    return {
        **summary_json(instance),
        "fingerprint": instance.fingerprint,
        "idempotency_key": instance.idempotency_key,
        "point_of_no_return": instance.point_of_no_return,
        "deadline_at": iso(instance.deadline_at),
        "revision": instance.revision,
        "data": instance.data,
        "steps": steps,
        "history": [entry_json(e) for e in history],
    }


def entry_json(entry: HistoryEntry) -> dict[str, object]:
    return {
        "at": iso(entry.at),
        "kind": entry.kind.value,
        "step": entry.step,
        "phase": entry.phase,
        "attempt": entry.attempt,
        "detail": entry.detail,
    }


def history_table(history: Sequence[HistoryEntry]) -> Table:
    """The history, oldest first. A status change shows ``from → to`` first, then the rest of
    its detail: on a narrow terminal the detail wraps, it is never cut. Times are UTC to the
    millisecond; when every entry is of one day, the day is said once, in the header."""
    days = {datetime.fromtimestamp(e.at, UTC).date() for e in history}
    one_day = len(days) == 1
    shape = "%H:%M:%S.%f" if one_day else "%Y-%m-%d %H:%M:%S.%f"
    columns = (
        Column(f"AT (UTC {days.pop()})" if one_day else "AT (UTC)"),
        Column("KIND"),
        Column("STEP"),
        Column("PHASE #"),
        Column("DETAIL", Fit.WRAP),
    )
    rows: list[list[Cell]] = [
        [
            datetime.fromtimestamp(e.at, UTC).strftime(shape)[:-3],
            e.kind.value,
            e.step or "-",
            " ".join(str(part) for part in (e.phase, e.attempt) if part is not None) or "-",
            detail_text(e),
        ]
        for e in history
    ]
    return table(columns, rows)


def detail_text(entry: HistoryEntry) -> Text:
    detail = dict(entry.detail)
    text = Text()
    if entry.kind.value == "status" and "from" in detail and "to" in detail:
        before, after = str(detail.pop("from")), str(detail.pop("to"))
        text.append_text(status_text(before))
        text.append(" → ")
        text.append_text(status_text(after))
        if detail:
            text.append(" ")
    if detail:
        text.append(json.dumps(detail, sort_keys=True, ensure_ascii=False))
    return text


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))
    sys.stdout.flush()
