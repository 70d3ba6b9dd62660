"""A table's lines as Arrow record batches, read through asyncsnap's own reader.

The analysis commands (``diff``, ``convert``, ``read_arrow``) hand their lines to DuckDB
this way, never through DuckDB's CSV or JSON readers: those drop a long last line without
a word and cannot read lines of a few MB in mid-file in parallel (measured, DuckDB 1.5.5
and 2.0.1), and DuckDB's ``hash()`` collides on lines of one shape. Here:

- every file is read by ``DataFileReader`` (the reader of ``verify`` and ``restore``): the
  stored bytes checked against the manifest's SHA-256 and size, decrypted when the backup
  is encrypted, decompressed, lines up to the file's line limit, the row count checked;
- each line's identity is the first 128 bits of its SHA-256, computed in the native module
  (``_rows.line_columns``), never by the engine: two columns ``h1``, ``h2`` (UBIGINT);
- the rows and the fingerprint of everything read are kept (``rows``, ``fingerprint``),
  for the callers' checks that the engine's answer accounts for every row.

A failure inside the stream (a damaged file, a line that is not UTF-8) stops the engine's
query; ``engine_errors`` then raises the reader's own error, not the engine's wrapping of
it (which would quote the Python traceback).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from . import _rows
from .backup import DataFileReader
from .errors import VerificationFailed
from .fingerprint import MODULUS
from .manifest import Backup, BackupFile

HASHES = (("h1", pa.uint64()), ("h2", pa.uint64()))
TEXT = (("line", pa.large_string()),)
_BLOCK = 4 << 20  # bytes of lines per batch (DataFileReader's block)


class LineBatches:
    """The lines of some of a backup's files, as Arrow record batches, read once.

    ``hashes``: columns ``h1``, ``h2`` (the line's 128-bit identity); ``text``: column
    ``line`` (the line without its newline, checked UTF-8). Iterate (or ``reader()``) to
    read; ``rows`` and ``fingerprint`` are then of every line read, and ``complete`` says
    whether every file was read to its end and matched its manifest entry."""

    def __init__(
        self,
        backup: Backup,
        files: Sequence[BackupFile],
        *,
        hashes: bool = True,
        text: bool = True,
        block_size: int = _BLOCK,
    ) -> None:
        self.backup = backup
        self.files = [f for f in files if f.rows]
        self.hashes = hashes
        self.text = text
        self.block_size = block_size
        self.schema = pa.schema([*(HASHES if hashes else ()), *(TEXT if text else ())])
        self.rows = 0
        self.total = 0  # the sum of the lines' 128-bit values, modulo 2**128
        self.complete = False
        self.error: BaseException | None = None  # what stopped the reading, if anything
        self._started = False

    @property
    def expected_rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def fingerprint(self) -> str:
        return f"{self.total:032x}"

    def reader(self) -> pa.RecordBatchReader:
        """A one-pass Arrow stream (what DuckDB scans when it is registered)."""
        return pa.RecordBatchReader.from_batches(self.schema, iter(self))

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        if self._started:
            raise RuntimeError("LineBatches are read once")
        self._started = True
        try:
            for entry in self.files:
                yield from self._file(entry)
            self.complete = True
        except BaseException as exc:
            self.error = exc
            raise

    def _file(self, entry: BackupFile) -> Iterator[pa.RecordBatch]:
        reader = DataFileReader(self.backup, entry, block_size=self.block_size)
        try:
            for block in reader:
                yield self._batch(reader, block)
                del block
            reader.finish()
        finally:
            reader.close()

    def _batch(self, reader: DataFileReader, block: bytes | bytearray) -> pa.RecordBatch:
        try:
            rows, hi, lo, total, offsets, text = _rows.line_columns(block, self.hashes, self.text)
        except _rows.LineError as exc:
            line = reader.rows - block.count(b"\n") + exc.line + 1
            raise VerificationFailed(
                f"{reader.entry.path}: line {line} is {exc.what}",
                hint="the backup is damaged; `asyncsnap verify` says more",
            ) from None
        columns: list[pa.Array] = []
        if self.hashes:
            assert hi is not None and lo is not None and total is not None
            columns.append(pa.Array.from_buffers(pa.uint64(), rows, [None, pa.py_buffer(hi)]))
            columns.append(pa.Array.from_buffers(pa.uint64(), rows, [None, pa.py_buffer(lo)]))
            self.total = (self.total + int.from_bytes(total, "big")) % MODULUS
        if self.text:
            assert offsets is not None and text is not None
            columns.append(
                pa.Array.from_buffers(
                    pa.large_string(), rows, [None, pa.py_buffer(offsets), pa.py_buffer(text)]
                )
            )
        self.rows += rows
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)

    def check_read(self, what: str) -> None:
        """Raise unless every line of every file was read (and each file matched its
        manifest entry): an engine that stopped early must not give an answer."""
        if self.error is not None:
            raise self.error
        if not self.complete or self.rows != self.expected_rows:
            raise VerificationFailed(
                f"{what}: {self.rows} rows read of the {self.expected_rows} the manifest lists",
                hint="report this: every row of a table must reach the answer",
            )


def engine_errors(sources: Sequence[LineBatches]) -> contextlib.AbstractContextManager[None]:
    """Re-raise a reader's own error when the engine's query failed because of it."""
    return _EngineErrors(sources)


class _EngineErrors(contextlib.AbstractContextManager[None]):
    def __init__(self, sources: Sequence[LineBatches]) -> None:
        self.sources = sources

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            return
        for source in self.sources:
            if source.error is not None and source.error is not exc:
                raise source.error from None
