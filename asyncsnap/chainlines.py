"""A chain's change lines (docs/format.md, "Change files") read and replayed on the
full backup's lines, as bytes: what a chain's diff and a chain's restore share.

A change's ``row`` is, column for column, the bytes a full backup writes, and a change
names the row it changes by its identity's values as the full backup's line holds them
(the server sends the old key's values as stored), so the state a chain reaches is the
full backup's lines with each change replayed on the lines it names (``Replay``): an
update's new line is its ``row``'s values with the ``unchanged`` (TOASTed, not sent) ones
taken from the line it replaces. A change carries no generated column (the server
computes them): ``Layout.sent`` are the columns a change holds.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import orjson

from . import _rows
from .errors import VerificationFailed
from .format import Backup, BackupFile, BackupTable
from .storage.backup import DataFileReader

# One change line (docs/format.md, "Change files"): its keys in their fixed order; ``key``
# and ``row`` are objects of column values, which hold no object (an ``{`` or ``}`` occurs
# only inside a string), so an object ends at the first brace outside a string.
_OBJECT = rb'\{(?:[^"{}]++|"(?:[^"\\]++|\\.)*+")*+\}'
CHANGE_LINE = re.compile(
    rb'\{"op":"(insert|update|delete|truncate)","lsn":"([0-9A-F]{1,8})/([0-9A-F]{1,8})",'
    rb'"xid":[0-9]+,"n":[0-9]+,"key":(null|' + _OBJECT + rb'),"row":(null|' + _OBJECT + rb"),"
    rb'"unchanged":(\[[^\n]*\])\}'
)
OP = re.compile(rb'^\{"op":"(insert|update|delete|truncate)"', re.MULTILINE)
# The key of each update and delete line of a block, read without the rest of the line
# (which ``CHANGE_LINE`` checks when the changes are read).
NAMED_KEYS = re.compile(
    rb'^\{"op":"(?:update|delete)","lsn":"[0-9A-F]{1,8}/[0-9A-F]{1,8}","xid":[0-9]+,"n":[0-9]+,'
    rb'"key":(' + _OBJECT + rb")",
    re.MULTILINE,
)


class RowNotHeld(VerificationFailed):
    """A change names a row the chain's state does not hold: the chain is damaged."""


class MixedIdentity(ValueError):
    """A table's changes name rows by different columns (REPLICA IDENTITY FULL with values
    the server did not send): no line's identity can be read one way."""


def object_prefixes(names: Sequence[str]) -> list[bytes]:
    """What precedes each column's value in an object of these columns, in this order."""
    return [
        (b"{" if i == 0 else b",") + _rows.json_string(n.encode()) + b":"
        for i, n in enumerate(names)
    ]


def damaged(what: str) -> VerificationFailed:
    return VerificationFailed(what, hint="the backup was altered or not made by asyncsnap")


def join_object(prefixes: Sequence[bytes], values: Sequence[bytes]) -> bytes:
    return b"".join(p + v for p, v in zip(prefixes, values, strict=True)) + b"}"


@dataclass(slots=True)
class Change:
    op: bytes
    lsn: int  # its transaction's commit
    key: bytes | None  # the identity's values (``Layout.key``), for update and delete
    row: bytes | None  # the row object as written
    unchanged: tuple[str, ...]
    # the identity's values in ``row`` when it holds every column a change carries and
    # the identity was known when it was read (else None: read when it is needed)
    row_key: bytes | None = None


class Layout:
    """How a table's lines are cut and keyed: the full backup's lines hold every column;
    lines here hold the columns a change carries (``sent``: the generated ones left out)."""

    def __init__(self, table: BackupTable) -> None:
        self.table = table
        self.identity: tuple[str, ...] | None = None  # the columns change keys name rows by
        self.sent = tuple(c.name for c in self.table.columns if c.generated is None)
        self.all_prefixes = object_prefixes([c.name for c in self.table.columns])
        self.sent_prefixes = object_prefixes(self.sent)
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

    @property
    def identity_columns(self) -> tuple[int, ...]:
        """Where the identity's columns are among a full backup's line's (as
        ``_rows.pick_lines`` and ``_rows.line_keys`` take them)."""
        names = [c.name for c in self.table.columns]
        return tuple(names.index(n) for n in self.identity or ())

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
            raise damaged(
                f"{self.table.qualified}: a {what} that is not an object of columns"
            ) from None
        known = self._all_escaped if generated else self._escaped
        found = {}
        for escaped, value in members:
            name = known.get(escaped)
            if name is None or name in found:
                raise damaged(
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
            raise MixedIdentity(
                f"{self.table.qualified}: its changes name rows by different columns "
                f"({', '.join(self.identity)} and {', '.join(names)}: REPLICA IDENTITY FULL "
                "with values the server did not send)"
            )
        return self._key(list(values.values()))

    def change_keys(self, objs: list[bytes]) -> list[bytes]:
        """``change_key`` of each of ``objs``, read natively when each is exactly the
        identity's columns (the first one read names them)."""
        if not objs:
            return []
        if self.identity is None:
            self.change_key(objs[0])
        assert self.identity is not None
        if self.identity:
            try:
                return _rows.line_keys(
                    b"\n".join(objs) + b"\n",
                    tuple(object_prefixes(self.identity)),
                    tuple(range(len(self.identity))),
                    True,
                )
            except _rows.LineError:
                pass  # one that is not: read each as change_key does, which says why
        return [self.change_key(obj) for obj in objs]

    def row_keys(self, rows: list[bytes]) -> list[bytes | None]:
        """The identity's values of each change's row that holds every column a change
        carries (``sent``), read natively; None for each when the identity is not known
        yet, or one is not such a row (read when needed, which says what is wrong)."""
        if not rows or not self.identity:
            return [None] * len(rows)
        try:
            keys: list[bytes | None] = list(
                _rows.line_keys(
                    b"\n".join(rows) + b"\n",
                    tuple(self.sent_prefixes),
                    tuple(self.sent.index(n) for n in self.identity),
                    True,
                )
            )
        except _rows.LineError:
            return [None] * len(rows)
        return keys

    def _key(self, values: Sequence[bytes]) -> bytes:
        # no raw NUL occurs in JSON text (a string escapes it), so it separates values
        return b"\0".join(values)

    def _sent_values(self, line: bytes) -> dict[str, bytes]:
        values = self.values(line, "line")
        if tuple(values) != self.sent:
            raise damaged(f"{self.table.qualified}: a line without the table's columns")
        return values

    def full_line_key(self, line: bytes) -> bytes:
        """The identity's values of a full backup's line (every column)."""
        assert self.identity is not None
        values = self.values(line, "line", generated=True)
        if len(values) != len(self.table.columns):
            raise damaged(f"{self.table.qualified}: a line without the table's columns")
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
            raise damaged(f"{self.table.qualified}: a line without the table's columns")
        return join_object(self.sent_prefixes, [values[n] for n in self.sent])

    def row_line(self, row: bytes, unchanged: tuple[str, ...], old: bytes | None) -> bytes:
        """A change's new line: its ``row``'s values, the ``unchanged`` ones from ``old``."""
        given = self.values(row, "change's row")
        names = tuple(n for n in self.sent if n not in unchanged) if unchanged else self.sent
        if tuple(given) != names:
            raise damaged(f"{self.table.qualified}: a change's row without the table's columns")
        if not unchanged:
            return row
        assert old is not None
        before = self._sent_values(old)
        return join_object(self.sent_prefixes, [given.get(n, before[n]) for n in self.sent])


def file_lines(backup: Backup, entry: BackupFile, block_size: int = 4 << 20) -> Iterator[bytes]:
    """A data file's blocks of whole lines, the file checked against its manifest."""
    reader = DataFileReader(backup, entry, count_rows=False, block_size=block_size)
    try:
        for block in reader:
            reader.rows += _rows.count_lines(block)
            yield bytes(block)
        reader.finish()
    finally:
        reader.close()


def read_changes(layout: Layout, backup: Backup, entry: BackupFile) -> Iterator[Change]:
    """A change file's changes, in order, each line checked against the format (its
    key read as ``layout``'s identity), a block of lines at a time, natively
    (``_rows.change_lines``, whose reference is ``CHANGE_LINE``).

    :raises VerificationFailed: a line that is not a change line.
    :raises MixedIdentity: changes that name rows by different columns."""
    number = 0
    # (small blocks: each is held as its lines too, while the changes are replayed)
    for block in file_lines(backup, entry, block_size=1 << 20):
        try:
            parsed = _rows.change_lines(block)
        except _rows.LineError as exc:
            raise VerificationFailed(
                f"{entry.path}: line {number + exc.line + 1} is not a change line",
                hint="the backup was altered or not made by asyncsnap",
            ) from None
        del block
        keys = iter(layout.change_keys([key for _, _, key, _, _ in parsed if key is not None]))
        whole = [
            row for op, _, _, row, unchanged in parsed if row is not None and unchanged == b"[]"
        ]
        row_keys = iter(layout.row_keys(whole))
        for op, lsn, key, row, unchanged in parsed:
            number += 1
            if (key is None) != (op in (b"insert", b"truncate")) or (row is None) != (
                op in (b"delete", b"truncate")
            ):
                raise damaged(f"{entry.path}: line {number}'s key or row does not fit its op")
            names: tuple[str, ...] = ()
            row_key = None
            if unchanged != b"[]":
                try:
                    names = tuple(orjson.loads(unchanged))
                except orjson.JSONDecodeError:
                    names = (0,)  # type: ignore[assignment]  # refused just below
                if op != b"update" or not all(isinstance(n, str) for n in names):
                    raise damaged(f"{entry.path}: line {number}'s unchanged is not a list of names")
            elif row is not None:
                row_key = next(row_keys)
            yield Change(op, lsn, None if key is None else next(keys), row, names, row_key)


class Replay:
    """A table's rows, as far as the changes touch them, moved change by change; between
    the two backups it counts each line's copies gained and lost (``delta``)."""

    def __init__(self, layout: Layout, rows: int) -> None:
        self.layout = layout
        self.state: dict[bytes, list[bytes]] = {}  # identity -> its lines now
        self.rows = rows
        self.full_lines_left = True  # the full backup's untracked lines are still there
        self.full_lines_removed = False  # ... and a TRUNCATE between the two removed them
        self.recording = False
        self.delta: Counter[bytes] = Counter()

    def _add(self, line: bytes, key: bytes | None = None) -> None:
        if key is None:
            key = self.layout.line_key(line) if self.layout.identity is not None else line
        self.state.setdefault(key, []).append(line)
        self.rows += 1
        if self.recording:
            self.delta[line] += 1

    def _take(self, key: bytes) -> bytes:
        lines = self.state.get(key)
        if not lines:
            raise RowNotHeld(
                f"{self.layout.table.qualified}: a change names a row the chain's state does "
                "not hold",
                hint="the chain is damaged or not made by asyncsnap (verify says more)",
            )
        line = lines.pop()
        self.rows -= 1
        if self.recording:
            self.delta[line] -= 1
        return line

    def apply(self, change: Change) -> None:
        if change.op == b"insert":
            assert change.row is not None
            if change.row_key is not None:  # the row read whole, every column there
                self._add(change.row, change.row_key)
            else:
                self._add(self.layout.row_line(change.row, (), None))
        elif change.op == b"delete":
            assert change.key is not None
            self._take(change.key)
        elif change.op == b"update":
            assert change.key is not None and change.row is not None
            old = self._take(change.key)
            if change.row_key is not None:
                self._add(change.row, change.row_key)
            else:
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
