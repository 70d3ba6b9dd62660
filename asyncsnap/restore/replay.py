"""A chain's changes replayed on the full backup's lines while they load (issue 25).

Applying an increment after the full backup is loaded makes the server write each changed
row twice (loaded, then updated: a new version, index entries, the old one dead) and
parse every change on the server; for 1% of pgbench's accounts that was a quarter of the
whole restore. Instead, before the rows load, each table's change lines are read
(``plan_replays``); as the table's files load, the lines a change names are set aside
(``TableReplay.part``: each line's identity read natively, ``_rows.pick_lines``), the
others go to COPY as they are; once the table's last file is loaded, the changes are
replayed on the set-aside lines (``chainlines.Replay``: bytes, as a chain's diff replays
them) and the lines that result are loaded in that file's transaction. The server writes
each row once, in the state the chain ends in.

A table goes this way when its rows are exactly the full backup's (a restore that refuses
or truncates a non-empty table, not ``--append``), through COPY, in this process (not
``--cluster``), with no column generated at the source (changes do not carry them), no
``TRUNCATE`` among its changes, changes that name rows by one set of columns, and change
files small enough to hold (``TABLE_CHANGE_BYTES``, ``ALL_CHANGE_BYTES``). Every other
table is applied after the load, as ``restore.chain`` does; the outcome is the same rows.

A change that names a row the full backup and the changes before it do not hold fails the
restore (the chain is damaged): found when the table's last file has loaded, so tables
loaded before it stay loaded, as with any failed restore (rerun with ``--truncate``).
"""

from __future__ import annotations

import array
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from .. import _rows
from ..chainlines import (
    Change,
    Layout,
    MixedIdentity,
    Replay,
    join_object,
    object_prefixes,
    read_changes,
)
from ..encode.rowcodec import LoadShape
from ..errors import RestoreFailed
from ..pgoutput import format_lsn
from ..storage.chain import Chain
from .plan import TableLoad

# The change lines one table's replay may hold (their bytes as the manifest gives them),
# and all tables' together: a table past either is applied after the load instead. The
# changes are held as objects, several times their lines' size.
TABLE_CHANGE_BYTES = 32 << 20
ALL_CHANGE_BYTES = 64 << 20


@dataclass
class TableReplay:
    """One table's changes, to replay on the full backup's lines as they load."""

    load: TableLoad
    layout: Layout
    changes: list[tuple[int, Change]]  # (which increment, from 0), in order
    counts: list[int]  # changes replayed, per increment
    files_left: int
    named: set[bytes] = field(init=False)
    _wanted: bytes = field(init=False)
    _identity: tuple[int, ...] = field(init=False)
    _picked: list[bytes] = field(init=False, default_factory=list)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.named = {c.key for _, c in self.changes if c.key is not None}
        names = [c.name for c in self.load.source.columns]
        identity = self.layout.identity or ()
        self._identity = tuple(names.index(n) for n in identity)
        hashes = sorted({_rows.key_hash(k) for k in self.named})
        self._wanted = array.array("Q", hashes).tobytes()

    def part(self, block: bytes | bytearray) -> bytes | bytearray:
        """A block of the full backup's lines without the ones a change may name (a
        worker thread's: those are kept for ``lines``)."""
        if not self.named:
            return block
        try:
            picked, rest = _rows.pick_lines(
                block, tuple(self.layout.all_prefixes), self._identity, self._wanted, True
            )
        except _rows.LineError:
            return block  # the converter says what is wrong with which line
        if picked:
            with self._lock:
                self._picked.append(picked)
        return rest

    def file_loaded(self) -> bool:
        """One of the table's files is loaded; whether it was the last."""
        self.files_left -= 1
        return self.files_left == 0

    def lines(self) -> bytes:
        """The lines the full backup's set-aside lines become, every change replayed (and
        the lines set aside only for a key hash's likeness, as they were).

        :raises RestoreFailed: a change names a row the chain's state does not hold."""
        layout = self.layout
        replay = Replay(layout, 0)
        kept: list[bytes] = []
        for block in self._picked:
            for line in block.splitlines():
                key = layout.full_line_key(line)
                if key in self.named:
                    replay.state.setdefault(key, []).append(line)
                else:
                    kept.append(line)
        self._picked.clear()
        for _, change in self.changes:
            if change.key is not None and not replay.state.get(change.key):
                raise self._not_found(change)
            replay.apply(change)
        kept += (line for lines in replay.state.values() for line in lines)
        return b"".join(line + b"\n" for line in kept)

    def _not_found(self, change: Change) -> RestoreFailed:
        assert change.key is not None and self.layout.identity is not None
        key = join_object(object_prefixes(self.layout.identity), change.key.split(b"\0"))
        return RestoreFailed(
            f"an increment does not apply: {change.op.decode()} of "
            f"{self.load.source.qualified}: no row with the key {key.decode(errors='replace')} "
            f"(the change at {format_lsn(change.lsn)})",
            hint="the chain is damaged (its full backup does not hold the row); the tables "
            "loaded before this one stay loaded: restore another chain with --truncate",
        )


def plan_replays(chain: Chain, loads: Sequence[TableLoad]) -> dict[tuple[str, str], TableReplay]:
    """The tables of ``loads`` whose changes are replayed as they load (see the module's
    docstring for which), their change files read and checked; in a worker thread."""
    by_key = {ld.source.key: ld for ld in loads}
    budget = ALL_CHANGE_BYTES
    replays: dict[tuple[str, str], TableReplay] = {}
    for key, load in by_key.items():
        if not _replayable(load):
            continue
        files = [
            (i, increment, entry)
            for i, increment in enumerate(chain.increments)
            for table in increment.tables
            if table.key == key
            for entry in table.files
        ]
        size = sum(entry.bytes for _, _, entry in files)
        if not files or size > min(TABLE_CHANGE_BYTES, budget):
            continue
        layout = Layout(load.source)
        changes: list[tuple[int, Change]] = []
        try:
            for i, increment, entry in files:
                changes += (
                    (i, c)
                    for c in read_changes(layout, increment, entry)
                    if chain.upto is None or c.lsn < chain.upto
                )
        except MixedIdentity:
            continue
        if any(c.op == b"truncate" for _, c in changes) or layout.identity == ():
            continue
        counts = [0] * len(chain.increments)
        for i, _ in changes:
            counts[i] += 1
        budget -= size
        replays[key] = TableReplay(load, layout, changes, counts, len(load.source.files))
    return replays


def _replayable(load: TableLoad) -> bool:
    """Loaded by COPY straight into its table, from lines that hold what changes hold."""
    table = load.source
    return (
        bool(table.files)
        and not load.retyped
        and not any(c.generated is not None for c in table.columns)
        and LoadShape.of(table, load.target, load.columns) is not None
    )
