"""What changed between two backups of one chain, read from the increments between them.

``diff A B`` where one of them is an increment (docs/format.md, "Incremental backups")
and the other a backup of the same chain: the full backup's rows are the start, and every
change line of the increments up to the later one is replayed, per table, on the rows it
names. The answer is the same as a diff of two full backups of the two states would give,
by the same engine: untouched rows are the same in both states, so only the rows a change
between the two touched are handed to it (the earlier state's lines as "before", the later
one's as "after"), and the engine pairs them by primary key and counts them exactly as it
does for full backups.

What is read:

- a table no change between the two touched is not read at all (its row count is the full
  backup's, moved by the counts of the changes before: a few bytes a line, no value read);
- a table that changed: its change lines from the full backup to the later backup, and
  from the full backup's file only the lines whose identity (the replica identity the
  change lines name rows by) one of those changes names; every file is checked against its
  manifest as any reader does. A ``TRUNCATE`` between the two also reads the full backup's
  other lines (they all left the table).

Lines are handled as the bytes the dump wrote, never as parsed values: a change's ``row``
is, column for column, the bytes a full backup writes (docs/format.md), so an update's new
line is its ``row``'s values with the ``unchanged`` ones taken from the line it replaces.
A change carries no generated column (the server computes them), so a table that has some
is compared without them: their values follow from the other columns' (PostgreSQL requires
an immutable expression), and ``--rows`` lines of such a table leave them out.

Memory: the change lines of one table between the full backup and the later backup, and
the lines they name, are held while that table is compared.
"""

from __future__ import annotations

import array
import itertools
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .. import _rows
from ..chainlines import (
    OP,
    Change,
    Layout,
    MixedIdentity,
    Replay,
    damaged,
    file_lines,
    read_changes,
)
from ..errors import UsageError, VerificationFailed
from ..format import Backup, BackupFile, BackupTable
from ..storage.backup import DataFileReader
from ..storage.chain import backup_name, open_chain
from .merge import Differing
from .readers import lines_file


class CannotDiffChain(UsageError):
    """The two backups are not of one chain, or a table's changes do not name rows in a
    way this reader can follow."""


@dataclass(frozen=True)
class ChainSpan:
    """Two backups of one chain: its full backup, its increments up to the later of the
    two, and how many of them make the earlier one's state."""

    full: Backup
    increments: tuple[Backup, ...]
    before: int
    swapped: bool  # the earlier backup is diff's ``after``

    def table_files(self, key: tuple[str, str]) -> list[tuple[int, Backup, BackupFile]]:
        """Each increment's change file of the table, numbered from 1 (the full backup's
        state is 0)."""
        found = []
        for i, increment in enumerate(self.increments, start=1):
            entry = next((t for t in increment.tables if t.key == key), None)
            if entry is None:
                raise VerificationFailed(
                    f"{increment.path} does not list {key[0]}.{key[1]}, which its chain holds",
                    hint="the backup was altered or not made by asyncsnap",
                )
            found += [(i, increment, f) for f in entry.files if f.rows]
        return found


def chain_span(a: Backup, b: Backup, keyed: Callable[[Backup], Backup]) -> ChainSpan | None:
    """The chain both backups belong to, when one of them is an increment (None when
    neither is: a diff of full backups). ``keyed`` gives a backup the keys to read it.

    :raises CannotDiffChain: an increment and a backup that is not of its chain."""
    if a.increment is None and b.increment is None:
        return None
    for earlier, later, swapped in ((a, b, False), (b, a, True)):
        if later.increment is None:
            continue
        chain = open_chain(later.path)
        members = (chain.full, *chain.increments)
        sums = [m.manifest.checksum for m in members]
        if earlier.manifest.checksum in sums:
            opened = tuple(keyed(m) for m in members)
            return ChainSpan(opened[0], opened[1:], sums.index(earlier.manifest.checksum), swapped)
    raise CannotDiffChain(
        f"{a.path} and {b.path} are not backups of one chain: diff reads an increment only "
        "against its full backup or another increment of its chain",
        hint="restore the increment's chain into a scratch database and dump it, then diff "
        "the two full backups",
    )


@dataclass(frozen=True)
class TableSpan:
    """One table between the two backups: its row counts in each, and when a change
    between them touched it, the scratch files of the lines each state holds that the
    other does not (``before``, ``after``, or ``lines``), for the engine."""

    table: BackupTable  # as the engine sees it (``Layout.view``)
    rows_before: int
    rows_after: int
    before: tuple[BackupFile, ...] = ()
    after: tuple[BackupFile, ...] = ()
    touched: bool = False
    # or those lines themselves, when no TRUNCATE between the two removed the full
    # backup's other lines (few: the changes' rows, held already)
    lines: Differing | None = None


def _count(span: ChainSpan, table: BackupTable, upto: int) -> int:
    """The table's rows after ``upto`` increments: each change line's op is enough."""
    rows = table.rows
    for _, increment, entry in (f for f in span.table_files(table.key) if f[0] <= upto):
        for block in file_lines(increment, entry):
            for op in OP.findall(block):
                if op == b"insert":
                    rows += 1
                elif op == b"delete":
                    rows -= 1
                elif op == b"truncate":
                    rows = 0
    return rows


def table_span(span: ChainSpan, table: BackupTable, scratch: Path, number: int) -> TableSpan:
    """One table of the chain between the span's two backups (``table``: the full
    backup's entry); scratch files named after ``number``."""
    files = span.table_files(table.key)
    if not any(i > span.before for i, _, _ in files):
        rows = _count(span, table, span.before)
        return TableSpan(table, rows, rows)
    layout = Layout(table)
    changes: list[tuple[int, Change]] = []
    for i, increment, entry in files:
        try:
            changes += [(i, c) for c in read_changes(layout, increment, entry)]
        except MixedIdentity as exc:
            raise CannotDiffChain(
                str(exc),
                hint="restore the chain into a scratch database and dump it, then diff the "
                "two full backups",
            ) from None
    named = {c.key for _, c in changes if c.key is not None}
    replay = Replay(layout, table.rows)
    if named:
        for key, line in _named_lines(span.full, table, layout, named):
            replay.state.setdefault(key, []).append(line)
    for i, change in changes:
        if i > span.before and not replay.recording:
            rows_before = replay.rows
            replay.recording = True
        replay.apply(change)
    if not replay.recording:  # pragma: no cover - a change after ``before`` exists
        raise AssertionError("no change between the two backups")
    rows_after = replay.rows
    if not replay.full_lines_removed:
        # the lines each state holds that the other does not, handed over as they are
        removed = {line + b"\n": -moved for line, moved in replay.delta.items() if moved < 0}
        added = {line + b"\n": moved for line, moved in replay.delta.items() if moved > 0}
        if span.swapped:
            removed, added, rows_before, rows_after = added, removed, rows_after, rows_before
        lines = Differing(removed, added, sum(removed.values()), sum(added.values()))
        return TableSpan(layout.view, rows_before, rows_after, touched=True, lines=lines)
    removed_lines = _full_lines(span.full, table, layout, named, unnamed=True)
    before = _write(scratch / f"chain-{number}-before.ndjson", replay.delta, -1, removed_lines)
    after = _write(scratch / f"chain-{number}-after.ndjson", replay.delta, 1, iter(()))
    if span.swapped:
        before, after, rows_before, rows_after = after, before, rows_after, rows_before
    return TableSpan(layout.view, rows_before, rows_after, (before,), (after,), True)


def _full_lines(
    full: Backup,
    table: BackupTable,
    layout: Layout,
    named: set[bytes],
    *,
    unnamed: bool = False,
) -> Iterator[bytes]:
    """The full backup's lines (as held here) whose identity is in ``named``, or with
    ``unnamed`` those whose identity is not (after a TRUNCATE: most of the table)."""
    if layout.identity is None:  # no change named a row: every line is unnamed
        if unnamed:
            for entry in table.files:
                for block in file_lines(full, entry):
                    yield from (layout.normal(line) for line in block.splitlines())
        return
    if unnamed or not layout.identity:
        # Each line's identity read here, by the JSON grammar: most lines are kept, or
        # every line is named (a table without columns, named by its empty identity).
        for entry in table.files:
            for block in file_lines(full, entry):
                for line in block.splitlines():
                    if (layout.full_line_key(line) in named) != unnamed:
                        yield layout.normal(line)
        return
    yield from (line for _, line in _picked_lines(full, table, layout, named))


def _named_lines(
    full: Backup, table: BackupTable, layout: Layout, named: set[bytes]
) -> Iterator[tuple[bytes, bytes]]:
    """The full backup's lines (as held here) whose identity is in ``named``, each with
    that identity."""
    if not layout.identity:  # every line is named by its empty identity
        yield from (
            (layout.line_key(line), line) for line in _full_lines(full, table, layout, named)
        )
        return
    yield from _picked_lines(full, table, layout, named)


def _picked_lines(
    full: Backup, table: BackupTable, layout: Layout, named: set[bytes]
) -> Iterator[tuple[bytes, bytes]]:
    """The full backup's lines (as held here) whose identity is in ``named``, each with
    that identity: each line's identity read natively, by the JSON grammar
    (``_rows.pick_lines``: a line whose identity hashes as a named one's is a candidate),
    each candidate's again (``_rows.line_keys``) and kept if named. The files are read two
    at a time (the reading and picking let other threads run)."""
    assert layout.identity
    identity = layout.identity_columns
    wanted = array.array("Q", sorted({_rows.key_hash(k) for k in named})).tobytes()
    prefixes = tuple(layout.all_prefixes)

    stop = threading.Event()  # the caller failed or stopped: files being read end early

    def candidates(entry: BackupFile) -> list[bytes]:
        found: list[bytes] = []
        if stop.is_set():
            return found
        reader = DataFileReader(full, entry, count_rows=False)
        try:
            for block in reader:
                if stop.is_set():
                    return found
                try:
                    found.append(_rows.pick_lines(block, prefixes, identity, wanted))
                except _rows.LineError as exc:
                    raise damaged(
                        f"{entry.path}: line {reader.rows + exc.line + 1} is not a line of "
                        f"{table.qualified}'s columns"
                    ) from None
                reader.rows += _rows.count_lines(block)
            reader.finish()
        finally:
            reader.close()
        return found

    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="asyncsnap-pick")
    try:
        for found in pool.map(candidates, table.files):
            for picked in found:  # (each block's few lines, split where they are)
                keys = _rows.line_keys(picked, prefixes, identity, False)
                for key, line in zip(keys, picked.splitlines(), strict=True):
                    if key in named:
                        yield key, layout.normal(line)
    finally:
        stop.set()
        pool.shutdown(cancel_futures=True)


def _write(path: Path, delta: Counter[bytes], sign: int, extra: Iterator[bytes]) -> BackupFile:
    """A scratch file of the lines whose count moved by ``sign`` (each as many times as it
    moved), then ``extra``'s lines."""
    moved = (line + b"\n" for line, n in delta.items() for _ in range(n * sign))
    return lines_file(path, itertools.chain(moved, (line + b"\n" for line in extra)))


def describe(span: ChainSpan) -> str:
    """Why the schema's SQL and the large objects are not compared for a chain."""
    return (
        f"backups of one chain ({backup_name(span.full.path)} and its increments): its "
        "schema is the full backup's (DDL on its tables fails an increment); large objects "
        "are not carried by increments"
    )
