"""How the CLI shows what the library reports while it runs (``events.py``).

The CLI picks a renderer: a live rich display on a terminal, one plain line per event
otherwise (cron mail, CI logs), or nothing with ``--quiet``. The library never imports
this module (nor rich).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table as RichTable

from ..events import (
    ChunkFinished,
    ChunkProgress,
    ChunkStarted,
    DumpFinished,
    DumpStarted,
    Event,
    Notice,
    RestoreFinished,
    RestoreStarted,
)
from ..text import count

if TYPE_CHECKING:
    from ..dump import TableResult


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class PlainLog:
    """One line per event, for logs and cron mail. No colour, no cursor movement."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __call__(self, event: Event) -> None:
        line: str | None = None
        match event:
            case DumpStarted():
                line = (
                    f"dump started: {count(event.tables, 'table')}, {count(event.chunks, 'file')}, "
                    f"~{count(event.est_rows, 'row')}, -j {event.jobs}, "
                    f"snapshot {event.snapshot_id}, "
                    f"from {event.target} into {event.path}"
                )
            case ChunkStarted():
                line = f"{event.verb} {event.label} (~{count(event.est_rows, 'row')})"
            case ChunkFinished() if event.verb == "copied":
                line = (
                    f"copied {event.label}: {count(event.rows, 'row')}, {human_bytes(event.bytes)} "
                    f"-> {human_bytes(event.stored_bytes)} in {event.seconds:.2f}s"
                )
            case ChunkFinished():
                line = (
                    f"{event.verb} {event.label}: {count(event.rows, 'row')} "
                    f"in {event.seconds:.2f}s"
                )
            case RestoreStarted():
                line = (
                    f"restore started: {count(event.tables, 'table')}, {count(event.rows, 'row')}, "
                    f"-j {event.jobs}, into {event.target}"
                )
            case RestoreFinished():
                line = (
                    f"restore complete: {count(event.tables, 'table')}, "
                    f"{count(event.rows, 'row')}, {count(event.sequences, 'sequence')} set "
                    f"in {event.seconds:.2f}s"
                )
            case Notice():
                line = event.message
            case DumpFinished():
                line = (
                    f"dump complete: {event.path}: {count(event.tables, 'table')}, "
                    f"{count(event.rows, 'row')}, "
                    f"{human_bytes(event.stored_bytes)} in {event.seconds:.2f}s "
                    f"(snapshot held {event.snapshot_held_seconds:.2f}s)"
                )
            case ChunkProgress():
                line = None
        if line is not None:
            print(
                f"{utc_timestamp()} asyncsnap: {one_line(line)}",
                file=self._stream,
                flush=True,
            )


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def utc_timestamp(seconds: float | None = None) -> str:
    """A log line's time: UTC, to the second, with its offset (``Z``), as backup names are.

    >>> utc_timestamp(0)
    '1970-01-01T00:00:00Z'
    """
    if seconds is None:
        return _second_stamp(int(time.time()))  # formatted once a second, not once a line
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


@functools.lru_cache(maxsize=1)
def _second_stamp(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))


def one_line(text: str) -> str:
    """``text`` on one line: a server message's DETAIL and HINT lines joined with " ",
    control characters inside it escaped (``\\n``, ``\\x1b``), so that a table named
    ``"a\\n2026-... asyncsnap: dump complete"`` cannot forge a line of a log."""
    if text.isprintable():  # most lines: nothing to join or escape
        return text
    lines = text.split("\n")
    # asyncpg puts a server's DETAIL and HINT on lines of their own: those join with a
    # space; any other line break is inside a name or value and is escaped.
    joined = lines[0]
    for line in lines[1:]:
        joined += " " + line if line.startswith(("DETAIL:  ", "HINT:  ")) else "\n" + line
    return joined.translate(_CONTROL)


class LiveDisplay:
    """A rich live display: one bar per running table (rows against the catalog's
    estimate) and an overall bar with ETA. Use as a context manager."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[size]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._overall: TaskID | None = None
        self._tasks: dict[str, TaskID] = {}
        self._done_rows: dict[str, int] = {}
        self._estimates: dict[str, int] = {}

    def __enter__(self) -> LiveDisplay:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(None, None, None)

    def _overall_rows(self) -> int:
        return sum(self._done_rows.values())

    def __call__(self, event: Event) -> None:
        p = self._progress
        match event:
            case DumpStarted():
                self._overall = p.add_task(
                    f"total ({count(event.tables, 'table')}, -j {event.jobs})",
                    total=max(event.est_rows, 1),
                    size="",
                )
            case ChunkStarted():
                self._estimates[event.label] = event.est_rows
                self._tasks[event.label] = p.add_task(
                    event.label, total=event.est_rows or None, size=""
                )
            case ChunkProgress():
                task = self._tasks.get(event.label)
                if task is not None:
                    # A bar that reaches its estimate counts as finished for rich, which
                    # then stops its clock (a page range estimated low showed 0:00:00 for
                    # as long as it ran): the total stays ahead until ChunkFinished.
                    estimate = self._estimates.get(event.label)
                    p.update(
                        task,
                        completed=event.rows,
                        total=max(estimate, event.rows + 1) if estimate else None,
                        size=human_bytes(event.bytes),
                    )
                self._done_rows[event.label] = event.rows
            case ChunkFinished():
                task = self._tasks.pop(event.label, None)
                if task is not None:
                    p.remove_task(task)
                self._done_rows[event.label] = event.rows
            case RestoreStarted():
                self._overall = p.add_task(
                    f"total ({count(event.tables, 'table')}, -j {event.jobs})",
                    total=max(event.rows, 1),
                    size="",
                )
            case Notice():
                p.console.print(event.message, markup=False, highlight=False)
            case DumpFinished() | RestoreFinished():
                pass
        if self._overall is not None:
            total = p.tasks[self._overall].total or 1
            done = self._overall_rows()
            p.update(self._overall, completed=done, total=max(total, done))


def summary_table(tables: Sequence[TableResult], done: DumpFinished) -> RichTable:
    """The closing table on a terminal: one row per table (its page ranges together), in
    name order, with its wall time and rate; then the totals."""
    table = RichTable(title=f"asyncsnap dump: {done.path}", title_justify="left")
    for name in ("table", "rows", "size", "seconds", "rows/s"):
        table.add_column(name, justify="left" if name == "table" else "right")
    for t in sorted(tables, key=lambda t: (t.schema, t.name)):
        table.add_row(
            f"{t.schema}.{t.name}",
            f"{t.rows:,}",
            human_bytes(t.stored_bytes),
            f"{t.wall_seconds:.2f}",
            _rate(t.rows, t.wall_seconds),
        )
    table.add_section()
    table.add_row(
        count(done.tables, "table"),
        f"{done.rows:,}",
        human_bytes(done.stored_bytes),
        f"{done.seconds:.2f}",
        _rate(done.rows, done.seconds),
    )
    return table


def _rate(rows: int, seconds: float) -> str:
    """Rows per second, or "-" for a time too short to measure."""
    return f"{rows / seconds:,.0f}" if seconds >= 0.001 else "-"


def _event_fields(event: Event) -> dict[str, object]:
    """An event as flat JSON fields: ``event`` names it; ``table`` where there is one."""
    match event:
        case DumpStarted():
            return {
                "event": "dump_started",
                "snapshot": event.snapshot_id,
                "tables": event.tables,
                "files": event.chunks,
                "rows": event.est_rows,
                "jobs": event.jobs,
                "path": event.path,
            }
        case ChunkStarted():
            return {
                "event": "table_started",
                "table": event.label,
                "rows": event.est_rows,
                "action": event.verb,
            }
        case ChunkProgress():
            return {
                "event": "table_progress",
                "table": event.label,
                "rows": event.rows,
                "bytes": event.bytes,
            }
        case ChunkFinished():
            return {
                "event": "table_finished",
                "table": event.label,
                "rows": event.rows,
                "bytes": event.bytes,
                "stored_bytes": event.stored_bytes,
                "seconds": round(event.seconds, 3),
                "action": event.verb,
            }
        case DumpFinished():
            return {
                "event": "dump_finished",
                "path": event.path,
                "tables": event.tables,
                "rows": event.rows,
                "bytes": event.bytes,
                "stored_bytes": event.stored_bytes,
                "seconds": round(event.seconds, 3),
                "snapshot_held_seconds": round(event.snapshot_held_seconds, 3),
            }
        case RestoreStarted():
            return {
                "event": "restore_started",
                "tables": event.tables,
                "rows": event.rows,
                "jobs": event.jobs,
                "target": event.target,
            }
        case RestoreFinished():
            return {
                "event": "restore_finished",
                "tables": event.tables,
                "rows": event.rows,
                "sequences": event.sequences,
                "seconds": round(event.seconds, 3),
            }
        case Notice():
            return {"event": "notice", "message": event.message}
    raise AssertionError(f"unknown event {event!r}")


class JsonLog:
    """One JSON object per line (``--log-format json``), for log shippers and scripts.

    Every line has ``ts`` (UTC, ISO 8601), ``level`` and ``event``; table events carry
    ``table``, ``rows``, ``bytes`` and ``seconds``. Progress ticks are left out, as in the
    plain log.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __call__(self, event: Event) -> None:
        if isinstance(event, ChunkProgress):
            return
        self.write({"level": "info", **_event_fields(event)})

    def write(self, fields: dict[str, object]) -> None:
        line = {"ts": utc_timestamp(), **fields}
        self._stream.write(orjson.dumps(line).decode() + "\n")
        self._stream.flush()
