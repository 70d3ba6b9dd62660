"""Row fingerprints: an order-independent checksum of a table's rows.

A fingerprint is the sum, modulo 2**128, of the first 16 bytes of the SHA-256 of every
row's line (as a data file holds it, without its newline), each read as a big-endian
integer; written as 32 lowercase hex digits. Any order of the same lines gives the same
sum, so it is the same for a table's files however the table was split, for a restored
table whose rows lie in another physical order, and for the rows a live database sends
when they are encoded as a dump encodes them (``asyncsnap.compare``). In Python::

    sum(int.from_bytes(hashlib.sha256(line).digest()[:16], "big") for line in lines) % 2**128

It detects accidental differences (a changed, missing or extra row: a miss has a chance
of 2**-128), not a forgery: a sum of hashes can be steered by someone who chooses many
rows. The backup's files are protected by their SHA-256 in the manifest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from . import _rows

MODULUS = 1 << 128
EMPTY = "0" * 32  # the fingerprint of no rows


def _digest_value(digest: bytes) -> int:
    return int.from_bytes(digest[:16], "big")


def line_value(line: bytes) -> int:
    """One line's term of the sum (its SHA-256's first 16 bytes, big-endian)."""
    return _digest_value(hashlib.sha256(line).digest())


class RowFingerprint:
    """Accumulates the fingerprint of NDJSON lines given in any pieces: a line may cross
    calls (a row written column by column arrives in many). Whole lines are hashed in
    native code without the GIL; call ``update`` from a worker thread for large data."""

    __slots__ = ("_partial", "rows", "total")

    def __init__(self) -> None:
        self.rows = 0
        self.total = 0
        self._partial: hashlib._Hash | None = None  # a line that has not ended yet

    def update(self, data: bytes | bytearray) -> None:
        start = 0
        if self._partial is not None:
            newline = data.find(b"\n")
            if newline < 0:
                self._partial.update(data)
                return
            self._partial.update(memoryview(data)[:newline])
            self._add(1, _digest_value(self._partial.digest()))
            self._partial = None
            start = newline + 1
        view = memoryview(data)[start:]
        rows, total, end = _rows.line_fingerprint(view)
        self._add(rows, int.from_bytes(total, "big"))
        if end < len(view):
            self._partial = hashlib.sha256(view[end:])

    def _add(self, rows: int, value: int) -> None:
        self.rows += rows
        self.total = (self.total + value) % MODULUS

    @property
    def complete(self) -> bool:
        """Whether the data so far ended with a whole line."""
        return self._partial is None

    def hexdigest(self) -> str:
        return f"{self.total:032x}"


def combine(fingerprints: Iterable[str]) -> str:
    """The fingerprint of the rows of several files (a split table's), from theirs."""
    return f"{sum(int(f, 16) for f in fingerprints) % MODULUS:032x}"


def of_lines(lines: Iterable[bytes]) -> str:
    """The definition, line by line (for tests and readers without the native code)."""
    total = sum(line_value(line) for line in lines)
    return f"{total % MODULUS:032x}"
