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
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import orjson

from .. import _rows
from ..errors import UsageError, VerificationFailed
from ..format import Backup, BackupFile, BackupTable
from ..storage.backup import DataFileReader
from ..storage.chain import backup_name, open_chain

# One change line (docs/format.md, "Change files"): its keys in their fixed order; ``key``
# and ``row`` are objects of column values, which hold no object (an ``{`` or ``}`` occurs
# only inside a string), so an object ends at the first brace outside a string.
_OBJECT = rb'\{(?:[^"{}]++|"(?:[^"\\]++|\\.)*+")*+\}'
_CHANGE_LINE = re.compile(
    rb'\{"op":"(insert|update|delete|truncate)","lsn":"[0-9A-F]{1,8}/[0-9A-F]{1,8}",'
    rb'"xid":[0-9]+,"n":[0-9]+,"key":(null|' + _OBJECT + rb'),"row":(null|' + _OBJECT + rb"),"
    rb'"unchanged":(\[[^\n]*\])\}'
)
_OP = re.compile(rb'^\{"op":"(insert|update|delete|truncate)"', re.MULTILINE)


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


def _prefixes(names: Sequence[str]) -> list[bytes]:
    """What precedes each column's value in an object of these columns, in this order."""
    return [
        (b"{" if i == 0 else b",") + _rows.json_string(n.encode()) + b":"
        for i, n in enumerate(names)
    ]


def _damaged(what: str) -> VerificationFailed:
    return VerificationFailed(what, hint="the backup was altered or not made by asyncsnap")


def _join(prefixes: Sequence[bytes], values: Sequence[bytes]) -> bytes:
    return b"".join(p + v for p, v in zip(prefixes, values, strict=True)) + b"}"


@dataclass
class _Change:
    op: bytes
    key: bytes | None  # the identity's values (``_Layout.key``), for update and delete
    row: bytes | None  # the row object as written
    unchanged: tuple[str, ...]


class _Layout:
    """How a table's lines are cut and keyed: the full backup's lines hold every column;
    lines here hold the columns a change carries (``sent``: the generated ones left out)."""

    def __init__(self, table: BackupTable) -> None:
        self.table = table
        self.identity: tuple[str, ...] | None = None  # the columns change keys name rows by
        self.sent = tuple(c.name for c in self.table.columns if c.generated is None)
        self.all_prefixes = _prefixes([c.name for c in self.table.columns])
        self.sent_prefixes = _prefixes(self.sent)
        self.has_generated = len(self.sent) != len(self.table.columns)
        self._escaped = {_rows.json_string(n.encode())[1:-1]: n for n in self.sent}
        self._all_escaped = {
            _rows.json_string(c.name.encode())[1:-1]: c.name for c in table.columns
        }
        # The last object ``values`` read, and how: a change's row, then its key read from
        # the same bytes; a full backup's line picked, then keyed again (two reads of five)
        self._last: tuple[bytes, bool, dict[str, bytes]] | None = None

    @property
    def view(self) -> BackupTable:
        """The table as lines here hold it (what the engine pairs and counts)."""
        if not self.has_generated:
            return self.table
        return replace(
            self.table, columns=tuple(c for c in self.table.columns if c.generated is None)
        )

    def values(self, obj: bytes, what: str, *, generated: bool = False) -> dict[str, bytes]:
        """An object's values by column name, in its order (``generated``: it may hold
        generated columns, as a full backup's line does).

        :raises VerificationFailed: it is not an object of this table's columns."""
        generated = generated and self.has_generated  # else both read the same names
        last = self._last
        if last is not None and last[1] == generated and last[0] == obj:
            return last[2]
        try:
            # by the JSON grammar (so an array's strings are never taken for names)
            members = _rows.json_members(obj)
        except ValueError:
            raise _damaged(
                f"{self.table.qualified}: a {what} that is not an object of columns"
            ) from None
        known = self._all_escaped if generated else self._escaped
        found = {}
        for escaped, value in members:
            name = known.get(escaped)
            if name is None or name in found:
                raise _damaged(
                    f"{self.table.qualified}: a {what} names a column the table does not have"
                )
            found[name] = value
        self._last = (obj, generated, found)
        return found

    def change_key(self, obj: bytes) -> bytes:
        """The identity's values in a change's ``key``, as one bytes key."""
        values = self.values(obj, "change's key")
        names = tuple(values)
        if self.identity is None:
            self.identity = names
        elif names != self.identity:
            raise CannotDiffChain(
                f"{self.table.qualified}: its changes name rows by different columns "
                f"({', '.join(self.identity)} and {', '.join(names)}: REPLICA IDENTITY FULL "
                "with values the server did not send)",
                hint="restore the chain into a scratch database and dump it, then diff the "
                "two full backups",
            )
        return self._key(list(values.values()))

    def _key(self, values: Sequence[bytes]) -> bytes:
        # no raw NUL occurs in JSON text (a string escapes it), so it separates values
        return b"\0".join(values)

    def _sent_values(self, line: bytes) -> dict[str, bytes]:
        values = self.values(line, "line")
        if tuple(values) != self.sent:
            raise _damaged(f"{self.table.qualified}: a line without the table's columns")
        return values

    def full_line_key(self, line: bytes) -> bytes:
        """The identity's values of a full backup's line (every column)."""
        assert self.identity is not None
        values = self.values(line, "line", generated=True)
        if len(values) != len(self.table.columns):
            raise _damaged(f"{self.table.qualified}: a line without the table's columns")
        return self._key([values[n] for n in self.identity])

    def line_key(self, line: bytes) -> bytes:
        """The identity's values of a line held here (``sent`` columns)."""
        assert self.identity is not None
        values = self._sent_values(line)
        return self._key([values[n] for n in self.identity])

    def normal(self, full_line: bytes) -> bytes:
        """A full backup's line as lines here hold it (without generated columns)."""
        if not self.has_generated:
            return full_line
        values = self.values(full_line, "line", generated=True)
        if tuple(values) != tuple(c.name for c in self.table.columns):
            raise _damaged(f"{self.table.qualified}: a line without the table's columns")
        return _join(self.sent_prefixes, [values[n] for n in self.sent])

    def row_line(self, row: bytes, unchanged: tuple[str, ...], old: bytes | None) -> bytes:
        """A change's new line: its ``row``'s values, the ``unchanged`` ones from ``old``."""
        given = self.values(row, "change's row")
        names = tuple(n for n in self.sent if n not in unchanged) if unchanged else self.sent
        if tuple(given) != names:
            raise _damaged(f"{self.table.qualified}: a change's row without the table's columns")
        if not unchanged:
            return row
        assert old is not None
        before = self._sent_values(old)
        return _join(self.sent_prefixes, [given.get(n, before[n]) for n in self.sent])


def _lines(backup: Backup, entry: BackupFile) -> Iterator[bytes]:
    """A data file's blocks of whole lines, the file checked against its manifest."""
    reader = DataFileReader(backup, entry, count_rows=False)
    try:
        for block in reader:
            reader.rows += _rows.count_lines(block)
            yield bytes(block)
        reader.finish()
    finally:
        reader.close()


def _parse(
    table: BackupTable, layout: _Layout, backup: Backup, entry: BackupFile
) -> Iterator[_Change]:
    number = 0
    for block in _lines(backup, entry):
        for line in block.splitlines():
            number += 1
            m = _CHANGE_LINE.fullmatch(line)
            if m is None:
                raise VerificationFailed(
                    f"{entry.path}: line {number} is not a change line",
                    hint="the backup was altered or not made by asyncsnap",
                )
            op, key, row, unchanged = m.groups()
            if (key == b"null") != (op in (b"insert", b"truncate")) or (row == b"null") != (
                op in (b"delete", b"truncate")
            ):
                raise _damaged(f"{entry.path}: line {number}'s key or row does not fit its op")
            names: tuple[str, ...] = ()
            if unchanged != b"[]":
                try:
                    names = tuple(orjson.loads(unchanged))
                except orjson.JSONDecodeError:
                    names = (0,)  # type: ignore[assignment]  # refused just below
                if op != b"update" or not all(isinstance(n, str) for n in names):
                    raise _damaged(
                        f"{entry.path}: line {number}'s unchanged is not a list of names"
                    )
            yield _Change(
                op,
                None if key == b"null" else layout.change_key(key),
                None if row == b"null" else row,
                names,
            )
        del block


class _Replay:
    """A table's rows, as far as the changes touch them, moved change by change; between
    the two backups it counts each line's copies gained and lost (``delta``)."""

    def __init__(self, layout: _Layout, rows: int) -> None:
        self.layout = layout
        self.state: dict[bytes, list[bytes]] = {}  # identity -> its lines now
        self.rows = rows
        self.full_lines_left = True  # the full backup's untracked lines are still there
        self.full_lines_removed = False  # ... and a TRUNCATE between the two removed them
        self.recording = False
        self.delta: Counter[bytes] = Counter()

    def _add(self, line: bytes) -> None:
        key = self.layout.line_key(line) if self.layout.identity is not None else line
        self.state.setdefault(key, []).append(line)
        self.rows += 1
        if self.recording:
            self.delta[line] += 1

    def _take(self, key: bytes) -> bytes:
        lines = self.state.get(key)
        if not lines:
            raise VerificationFailed(
                f"{self.layout.table.qualified}: a change names a row the chain's state does "
                "not hold",
                hint="the chain is damaged or not made by asyncsnap (verify says more)",
            )
        line = lines.pop()
        self.rows -= 1
        if self.recording:
            self.delta[line] -= 1
        return line

    def apply(self, change: _Change) -> None:
        if change.op == b"insert":
            assert change.row is not None
            self._add(self.layout.row_line(change.row, (), None))
        elif change.op == b"delete":
            assert change.key is not None
            self._take(change.key)
        elif change.op == b"update":
            assert change.key is not None and change.row is not None
            old = self._take(change.key)
            self._add(self.layout.row_line(change.row, change.unchanged, old))
        else:  # truncate
            if self.recording:
                for lines in self.state.values():
                    for line in lines:
                        self.delta[line] -= 1
                self.full_lines_removed = self.full_lines_removed or self.full_lines_left
            self.state.clear()
            self.rows = 0
            self.full_lines_left = False


@dataclass(frozen=True)
class TableSpan:
    """One table between the two backups: its row counts in each, and when a change
    between them touched it, the scratch files of the lines each state holds that the
    other does not (``before``, ``after``), for the engine."""

    table: BackupTable  # as the engine sees it (``_Layout.view``)
    rows_before: int
    rows_after: int
    before: tuple[BackupFile, ...] = ()
    after: tuple[BackupFile, ...] = ()
    touched: bool = False


def _count(span: ChainSpan, table: BackupTable, upto: int) -> int:
    """The table's rows after ``upto`` increments: each change line's op is enough."""
    rows = table.rows
    for _, increment, entry in (f for f in span.table_files(table.key) if f[0] <= upto):
        for block in _lines(increment, entry):
            for op in _OP.findall(block):
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
    layout = _Layout(table)
    changes: list[tuple[int, _Change]] = []
    for i, increment, entry in files:
        changes += [(i, c) for c in _parse(table, layout, increment, entry)]
    named = {c.key for _, c in changes if c.key is not None}
    replay = _Replay(layout, table.rows)
    if named:
        for line in _full_lines(span.full, table, layout, named):
            replay.state.setdefault(layout.line_key(line), []).append(line)
    for i, change in changes:
        if i > span.before and not replay.recording:
            rows_before = replay.rows
            replay.recording = True
        replay.apply(change)
    if not replay.recording:  # pragma: no cover - a change after ``before`` exists
        raise AssertionError("no change between the two backups")
    rows_after = replay.rows
    removed = (
        _full_lines(span.full, table, layout, named, unnamed=True)
        if replay.full_lines_removed
        else iter(())
    )
    before = _write(scratch / f"chain-{number}-before.ndjson", replay.delta, -1, removed)
    after = _write(scratch / f"chain-{number}-after.ndjson", replay.delta, 1, iter(()))
    if span.swapped:
        before, after, rows_before, rows_after = after, before, rows_after, rows_before
    return TableSpan(layout.view, rows_before, rows_after, (before,), (after,), True)


def _full_lines(
    full: Backup,
    table: BackupTable,
    layout: _Layout,
    named: set[bytes],
    *,
    unnamed: bool = False,
) -> Iterator[bytes]:
    """The full backup's lines (as held here) whose identity is in ``named``, or with
    ``unnamed`` those whose identity is not (after a TRUNCATE: most of the table)."""
    if layout.identity is None:  # no change named a row: every line is unnamed
        if unnamed:
            for entry in table.files:
                for block in _lines(full, entry):
                    yield from (layout.normal(line) for line in block.splitlines())
        return
    if unnamed or not layout.identity:
        # Each line's identity read here, by the JSON grammar: most lines are kept, or
        # every line is named (a table without columns, named by its empty identity).
        for entry in table.files:
            for block in _lines(full, entry):
                for line in block.splitlines():
                    if (layout.full_line_key(line) in named) != unnamed:
                        yield layout.normal(line)
        return
    yield from _picked_lines(full, table, layout, named)


def _picked_lines(
    full: Backup, table: BackupTable, layout: _Layout, named: set[bytes]
) -> Iterator[bytes]:
    """The full backup's lines whose identity is in ``named``: each line's identity read
    natively, by the JSON grammar (``_rows.pick_lines``: a line whose identity hashes as
    a named one's is a candidate), each candidate read again here and kept if named. The
    files are read two at a time (the reading and picking let other threads run)."""
    assert layout.identity
    names = [c.name for c in table.columns]
    identity = tuple(names.index(n) for n in layout.identity)
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
                    raise _damaged(
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
                for line in picked.splitlines():
                    if layout.full_line_key(line) in named:
                        yield layout.normal(line)
    finally:
        stop.set()
        pool.shutdown(cancel_futures=True)


def _write(path: Path, delta: Counter[bytes], sign: int, extra: Iterator[bytes]) -> BackupFile:
    """A scratch file of the lines whose count moved by ``sign`` (each as many times as it
    moved), then ``extra``'s lines."""
    rows = 0
    size = 0
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        for line, moved in delta.items():
            for _ in range(moved * sign):
                out.write(line + b"\n")
                rows += 1
                size += len(line) + 1
        for line in extra:
            out.write(line + b"\n")
            rows += 1
            size += len(line) + 1
    return BackupFile(str(path), rows, size, size, "", longest_line=None)


def describe(span: ChainSpan) -> str:
    """Why the schema's SQL and the large objects are not compared for a chain."""
    return (
        f"backups of one chain ({backup_name(span.full.path)} and its increments): its "
        "schema is the full backup's (DDL on its tables fails an increment); large objects "
        "are not carried by increments"
    )
