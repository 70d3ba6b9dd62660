"""The lines two backups' files of one table do not share, found by reading both in order.

Two backups of one table taken around a benchmark run hold its rows mostly in the same
order (a dump copies in physical order): an updated row has left its place on one side
and appears elsewhere, often at the end. So both sides are read at once, a block of whole
lines each, and the run of lines they both begin with is passed over in the native
module (``_rows.equal_lines``: compared as bytes, never hashed, copied or handed to the
engine). Where the sides part, the line of each is set aside, unless the other side has
already set the same line aside: then both copies are gone, and the side that had it
reads on. The usual parting (A's line left its place: A's next line is B's) sets aside
A's line alone and passes over the run after it at once. What is left at the end is
exact, multiplicities included: the lines of A that B does not hold (as many times more
as A holds them) and those of B that A does not.

Why it is exact: each step takes one copy of a line from a side and either cancels it
against one copy set aside by the other side, or sets it aside; a line is set aside on
one side only while the other side holds no copy of it aside. So the lines set aside are
always the multiset difference of what each side has read so far, and at the end of both
sides that of the tables.

Lines set aside are held in memory; when they pass ``limit_bytes`` (the sides are far
apart: a table rewritten in another order, most rows changed), or the sides part too
often for the work to stay small, ``TooFarApart`` is raised and the caller groups every
line out of core instead (``diff._TableReader``), as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .. import _rows
from ..format import Backup, BackupFile
from ..storage.backup import DataFileReader
from .batches import _read_ahead, plain_blocks

LIMIT_BYTES = 64 << 20  # lines set aside, with a dict entry's overhead each
_ENTRY_OVERHEAD = 100  # bytes a line costs beyond its own in a dict of bytes
PROJECT_AFTER_LINES = 100_000  # fewer read: too few to project the rest from
PARTED_AT_MOST = 100_000  # partings allowed whatever the lines (then a quarter of them)
_BLOCK = 4 << 20


class TooFarApart(Exception):
    """The sides' differing lines would not stay small: group them another way."""


@dataclass
class Differing:
    """What the merge leaves: ``removed`` (lines of A, with how many copies more than B
    holds) and ``added`` (of B), and every line read on each side."""

    removed: dict[bytes, int]
    added: dict[bytes, int]
    rows_before: int
    rows_after: int


class _Side:
    """One side's lines as blocks of whole lines, read ahead in a thread of its own."""

    def __init__(self, backup: Backup | None, files: Sequence[BackupFile]) -> None:
        self.files = [f for f in files if f.rows]
        self.expected = sum(f.rows for f in self.files)
        self.rows = 0
        self._blocks = _read_ahead([self._read(backup)])
        self.block: bytes | bytearray = b""
        self.at = 0

    def _read(self, backup: Backup | None) -> Iterator[tuple[bytes | bytearray, int]]:
        """Each block with its lines, counted once here (in the reading thread) for both
        the reader's check and the side's own count."""
        for entry in self.files:
            if backup is None:
                for plain in plain_blocks(entry, _BLOCK):
                    yield plain, _rows.count_lines(plain)
                continue
            reader = DataFileReader(backup, entry, block_size=_BLOCK, count_rows=False)
            try:
                for block in reader:
                    lines = _rows.count_lines(block)
                    reader.rows += lines
                    yield block, lines
                reader.finish()  # its size, SHA-256 and lines against the manifest
            finally:
                reader.close()

    def next_block(self) -> bool:
        """Move to the next block; False at the end of the side's files."""
        for block, lines in self._blocks:
            self.rows += lines
            self.block, self.at = block, 0
            return True
        self.block, self.at = b"", 0
        return False

    def line(self) -> bytes:
        """The line at ``at`` (with its newline), which it then passes."""
        end = self.block.index(b"\n", self.at) + 1
        line = bytes(self.block[self.at : end])  # a reader's block may be a bytearray
        self.at = end
        return line

    def close(self) -> None:
        close = getattr(self._blocks, "close", None)
        if close is not None:
            close()


class _Aside:
    """The lines one side set aside, with their copies, and the bytes they hold."""

    def __init__(self) -> None:
        self.lines: dict[bytes, int] = {}
        self.bytes = 0

    def add(self, line: bytes) -> None:
        copies = self.lines.get(line, 0)
        self.lines[line] = copies + 1
        if not copies:
            self.bytes += len(line) + _ENTRY_OVERHEAD

    def take(self, line: bytes) -> bool:
        """Cancel one copy of ``line`` if it is set aside here."""
        copies = self.lines.get(line)
        if copies is None:
            return False
        if copies == 1:
            del self.lines[line]
            self.bytes -= len(line) + _ENTRY_OVERHEAD
        else:
            self.lines[line] = copies - 1
        return True


def differing_lines(
    a: Backup | None,
    before: Sequence[BackupFile],
    b: Backup | None,
    after: Sequence[BackupFile],
    *,
    limit_bytes: int = LIMIT_BYTES,
) -> Differing:
    """The lines of ``before`` and ``after`` whose copies differ (see the module doc).

    :raises TooFarApart: the lines set aside passed ``limit_bytes`` or would at their
        rate so far (past a tenth of the lines), or the sides parted
        more often than a quarter of their lines (and 100,000 times).
    :raises VerificationFailed: a file does not match its manifest entry.
    """
    old, new = _Side(a, before), _Side(b, after)
    try:
        return _merge(old, new, limit_bytes)
    finally:
        old.close()
        new.close()


def _merge(old: _Side, new: _Side, limit_bytes: int) -> Differing:
    aside_old, aside_new = _Aside(), _Aside()
    parted = 0
    more_old, more_new = old.next_block(), new.next_block()
    while more_old and more_new:
        run = _rows.equal_lines(old.block, old.at, new.block, new.at)
        old.at += run
        new.at += run
        if old.at == len(old.block):
            more_old = old.next_block()
            continue
        if new.at == len(new.block):
            more_new = new.next_block()
            continue
        parted += 1
        if parted > PARTED_AT_MOST and parted * 4 > old.rows + new.rows:
            raise TooFarApart(f"the sides parted {parted} times")
        line_old = old.line()
        if aside_new.take(line_old):  # B set it aside: A catches up
            continue
        # The usual parting: a row that left its place (updated, deleted). A's next
        # line is B's, so only A's line is set aside, and the run after it passed over.
        run = _rows.equal_lines(old.block, old.at, new.block, new.at)
        if run:
            aside_old.add(line_old)
            old.at += run
            new.at += run
            _bounded_now_and_at_the_end(aside_old, aside_new, limit_bytes, old, new)
            continue
        line_new = new.line()
        if aside_old.take(line_new):  # A set it aside: B catches up; A's line again
            old.at -= len(line_old)
            continue
        aside_old.add(line_old)
        aside_new.add(line_new)
        _bounded_now_and_at_the_end(aside_old, aside_new, limit_bytes, old, new)
    for side, aside, other, more in (
        (old, aside_old, aside_new, more_old),
        (new, aside_new, aside_old, more_new),
    ):
        while more:  # the other side has ended: every line left cancels or is set aside
            while side.at < len(side.block):
                line = side.line()
                if not other.take(line):
                    aside.add(line)
                    _bounded(aside_old, aside_new, limit_bytes)
            more = side.next_block()
    return Differing(aside_old.lines, aside_new.lines, old.rows, new.rows)


def _bounded_now_and_at_the_end(
    one: _Aside, other: _Aside, limit_bytes: int, old: _Side, new: _Side
) -> None:
    _bounded(one, other, limit_bytes)
    _projected(one, other, limit_bytes, old, new)


def _projected(one: _Aside, other: _Aside, limit_bytes: int, old: _Side, new: _Side) -> None:
    """Give up early when, at the rate lines are set aside so far, the bound would be
    passed by the end: a tenth of a table read is enough to tell, and giving up there
    saves reading the rest twice (a tenth of the rows changed: the rate is steady)."""
    read, total = old.rows + new.rows, old.expected + new.expected
    if read * 10 < total or read < PROJECT_AFTER_LINES:
        return
    held = one.bytes + other.bytes
    if held * total > limit_bytes * read:
        raise TooFarApart(f"{held} bytes set aside after {read} of {total} lines")


def _bounded(one: _Aside, other: _Aside, limit_bytes: int) -> None:
    if one.bytes + other.bytes > limit_bytes:
        raise TooFarApart(f"{one.bytes + other.bytes} bytes of lines set aside")
