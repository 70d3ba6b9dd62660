"""Progress events: what the library reports while it works, as plain dataclasses.

The library calls an ``EventCallback`` with them and never prints; presentation (a live
display, plain or JSON log lines) is the CLI's (``progress.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class DumpStarted:
    snapshot_id: str
    target: str
    tables: int
    chunks: int
    est_rows: int
    jobs: int
    path: str  # the .partial directory being written


@dataclass(frozen=True)
class ChunkStarted:
    label: str
    est_rows: int
    verb: str = "copying"


@dataclass(frozen=True)
class ChunkProgress:
    label: str
    rows: int
    bytes: int


@dataclass(frozen=True)
class ChunkFinished:
    label: str
    rows: int
    bytes: int
    stored_bytes: int
    seconds: float
    verb: str = "copied"


@dataclass(frozen=True)
class DumpFinished:
    path: str
    tables: int
    rows: int
    bytes: int
    stored_bytes: int
    seconds: float
    snapshot_held_seconds: float


@dataclass(frozen=True)
class RestoreStarted:
    target: str
    tables: int
    rows: int
    jobs: int


@dataclass(frozen=True)
class RestoreFinished:
    tables: int
    rows: int
    sequences: int
    seconds: float


@dataclass(frozen=True)
class Notice:
    """Something a user should read: the restore plan, a skipped sequence."""

    message: str


Event = (
    DumpStarted
    | ChunkStarted
    | ChunkProgress
    | ChunkFinished
    | DumpFinished
    | RestoreStarted
    | RestoreFinished
    | Notice
)
EventCallback = Callable[[Event], None]

# How often a running chunk reports progress; keeps the callback off the hot path.
PROGRESS_INTERVAL = 0.25
