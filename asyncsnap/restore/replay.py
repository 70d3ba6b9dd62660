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

Every table or none: the tables loaded together must be of one moment, the full
backup's or the chain's end, when post-data checks their foreign keys (and when a COPY
into existing tables does): a table replayed beside one applied after the load left a
child naming a parent row only the later apply made. So the changes are replayed when
every table with changes can be: its rows are exactly the full backup's (a restore that
refuses or truncates a non-empty table, not ``--append``), through COPY, in this process
(not ``--cluster``), with no column generated at the source (changes do not carry them),
no ``TRUNCATE`` among its changes, changes that name rows by one set of columns, and what
the replays would hold (``REPLAY_BYTES``) small enough; else every table is applied after
the load, as ``restore.chain`` does. The outcome is the same rows.

A change that names a row the full backup and the changes before it do not hold fails the
restore (the chain is damaged): found when the table's last file has loaded, so tables
loaded before it stay loaded, as with any failed restore (rerun with ``--truncate``).
"""

from __future__ import annotations

import array
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from .. import _rows
from ..chainlines import (
    NAMED_KEYS,
    Change,
    Layout,
    MixedIdentity,
    Replay,
    RowNotHeld,
    file_lines,
    join_object,
    object_prefixes,
    read_changes,
)
from ..encode.rowcodec import LoadShape
from ..errors import RestoreFailed
from ..format import Backup, BackupFile
from ..pgoutput import format_lsn
from ..storage.chain import Chain
from .plan import TableLoad

# What the replays may hold, estimated before the load: a replay holds the full backup's
# lines its changes name (each estimated as its table's average line), a line each change
# makes (estimated as the change lines' bytes), and about ``ROW_BYTES`` more a row. Past
# it, every table's changes are applied after the load.
REPLAY_BYTES = 64 << 20
ROW_BYTES = 200


@dataclass
class TableReplay:
    """One table's changes, to replay on the full backup's lines as they load: which lines
    to set aside is known by their identity's hash (``wanted``, read from the change
    lines' keys before the load); the changes themselves are read when they are
    replayed."""

    load: TableLoad
    layout: Layout
    files: list[tuple[int, Backup, BackupFile]]  # (which increment, from 0), in order
    upto: int | None  # restore --to: changes committed at or after it are left out
    wanted: bytes  # the named identities' key hashes, sorted native uint64s
    counts: list[int]  # changes replayed, per increment (once replayed)
    files_left: int
    _identity: tuple[int, ...] = field(init=False)
    # (one buffer: bytes objects made in the loading threads and held through the load
    # kept their allocator's arenas from shrinking, 27 MiB more RSS by its end)
    _picked: bytearray = field(init=False, default_factory=bytearray)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._identity = self.layout.identity_columns

    def part(self, block: bytes | bytearray) -> bytes | bytearray:
        """A block of the full backup's lines without the ones a change may name (a
        worker thread's: those are kept for ``replay``)."""
        if not self._identity:
            return block  # only inserts: no line is named
        try:
            picked, rest = _rows.pick_lines(
                block, tuple(self.layout.all_prefixes), self._identity, self.wanted, True
            )
        except _rows.LineError:
            return block  # the converter says what is wrong with which line
        if picked:
            with self._lock:
                self._picked += picked
        return rest

    def file_loaded(self) -> bool:
        """One of the table's files is loaded; whether it was the last."""
        self.files_left -= 1
        return self.files_left == 0

    def replay(self) -> Iterator[bytes]:
        """The lines the set-aside lines become, every change replayed on them in order (a
        line set aside only for its hash's likeness stays as it was), in blocks of whole
        lines; each is let go as its block is made.

        :raises RestoreFailed: a change names a row the chain's state does not hold."""
        layout = self.layout
        replay = Replay(layout, 0)
        state = replay.state
        if self._identity:
            prefixes = tuple(layout.all_prefixes)
            picked = self._picked
            while picked:
                # the last MiB of lines, cut off the buffer: the lines are held once
                # (the order of a key's lines is no matter: they are alike to a change)
                cut = picked.rfind(b"\n", 0, max(len(picked) - (1 << 20), 0)) + 1
                chunk = bytes(picked[cut:])
                del picked[cut:]
                keys = _rows.line_keys(chunk, prefixes, self._identity, False)
                for key, line in zip(keys, chunk.splitlines(), strict=True):
                    state.setdefault(key, []).append(line)
                del chunk, keys
        for i, increment, entry in self.files:
            for change in read_changes(layout, increment, entry):
                if self.upto is not None and change.lsn >= self.upto:
                    continue
                try:
                    replay.apply(change)
                except RowNotHeld:
                    raise self._not_found(change) from None
                self.counts[i] += 1
        return _blocks(state)

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


def _blocks(state: dict[bytes, list[bytes]]) -> Iterator[bytes]:
    """``state``'s lines, in blocks of about ``BLOCK_BYTES``, emptying it as they go."""
    block: list[bytes] = []
    size = 0
    while state:
        for line in state.popitem()[1]:
            block.append(line)
            size += len(line) + 1
        if size >= BLOCK_BYTES:
            yield b"\n".join(block) + b"\n"
            block, size = [], 0
    if block:
        yield b"\n".join(block) + b"\n"


# The replayed lines go to COPY in blocks of this many bytes (as a file's are read).
BLOCK_BYTES = 512 << 10


def plan_replays(chain: Chain, loads: Sequence[TableLoad]) -> dict[tuple[str, str], TableReplay]:
    """Every table of ``loads`` with changes, to replay as it loads, each with the hashes of
    the identities its changes name (read from its change files, each checked against the
    manifest); or none (see the module's docstring for when); in a worker thread."""
    changed = [(load, _change_files(chain, load.source.key)) for load in loads]
    changed = [(load, files) for load, files in changed if files]
    held = sum(entry.bytes for _, files in changed for _, _, entry in files)
    if not changed or held > REPLAY_BYTES or not all(_replayable(ld) for ld, _ in changed):
        return {}
    replays: dict[tuple[str, str], TableReplay] = {}
    for load, files in changed:
        layout = Layout(load.source)
        wanted = _named(layout, files)
        if wanted is None:
            return {}
        table = load.source
        line = sum(f.bytes for f in table.files) // max(table.rows, 1)
        held += len(wanted) // 8 * (line + ROW_BYTES)
        if held > REPLAY_BYTES:
            return {}
        counts = [0] * len(chain.increments)
        replays[table.key] = TableReplay(
            load, layout, files, chain.upto, wanted, counts, len(table.files)
        )
    return replays


def _change_files(chain: Chain, key: tuple[str, str]) -> list[tuple[int, Backup, BackupFile]]:
    """The table's change files, each with its increment (and which, from 0), in order."""
    return [
        (i, increment, entry)
        for i, increment in enumerate(chain.increments)
        for table in increment.tables
        if table.key == key
        for entry in table.files
    ]


def _named(layout: Layout, files: list[tuple[int, Backup, BackupFile]]) -> bytes | None:
    """The key hashes of the identities a table's changes name (``layout`` learns the
    identity's columns); None when it cannot be replayed: a TRUNCATE among them, or
    changes that name rows by different columns, or by none."""
    hashes: set[int] = set()
    for _, increment, entry in files:
        for block in file_lines(increment, entry):
            if block.startswith(_TRUNCATE) or b"\n" + _TRUNCATE in block:
                return None
            try:
                named = layout.change_keys(NAMED_KEYS.findall(block))
            except MixedIdentity:
                return None  # REPLICA IDENTITY FULL with values the server did not send
            if layout.identity == ():
                return None  # a table without columns: every line is named
            hashes.update(map(_rows.key_hash, named))
    return array.array("Q", sorted(hashes)).tobytes()


# How a TRUNCATE's line starts: it empties the table, the full backup's lines with it.
_TRUNCATE = b'{"op":"truncate"'


def _replayable(load: TableLoad) -> bool:
    """Loaded by COPY straight into its table, from lines that hold what changes hold."""
    table = load.source
    return (
        bool(table.files)
        and not load.retyped
        and not any(c.generated is not None for c in table.columns)
        and LoadShape.of(table, load.target, load.columns) is not None
    )
