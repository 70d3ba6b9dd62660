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
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa

from .. import _rows
from ..errors import VerificationFailed
from ..fingerprint import MODULUS
from ..format import Backup, BackupFile
from ..storage.backup import DataFileReader

HASHES = (("h1", pa.uint64()), ("h2", pa.uint64()))
TEXT = (("line", pa.large_string()),)
CUT = (("cut", pa.bool_()),)  # the line is a stand-in; the line itself is in LongLines
_BLOCK = 4 << 20  # bytes of lines per batch (DataFileReader's block)


class LineBatches:
    """The lines of some of a backup's files, as Arrow record batches, read once.

    ``hashes``: columns ``h1``, ``h2`` (the line's 128-bit identity); ``text``: column
    ``line`` (the line without its newline, checked UTF-8). Iterate (or ``reader()``) to
    read; ``rows`` and ``fingerprint`` are then of every line read, and ``complete`` says
    whether every file was read to its end and matched its manifest entry."""

    def __init__(
        self,
        backup: Backup | None,
        files: Sequence[BackupFile],
        *,
        hashes: bool = True,
        text: bool = True,
        block_size: int = _BLOCK,
        long_lines: LongLines | None = None,
        wanted: bytes | None = None,
        record_firsts: BinaryIO | None = None,
        firsts: BinaryIO | None = None,
    ) -> None:
        """``long_lines`` (with ``hashes`` and ``text``): lines longer than its ``limit`` go
        there, and the batch's ``line`` holds ``long_lines.stand_in(line)`` instead, with
        ``cut`` true: the engine never holds a huge line (DuckDB needs several times a
        value's size, and slowed to a crawl on a 300 MB one).

        ``wanted`` (with ``hashes``): a sorted array of native uint64s; only the lines
        whose identity's first half is in it are given (every line is still read, checked
        and counted).

        ``record_firsts`` (with ``hashes``, without ``wanted``): each line's identity's
        first half is written there, a native uint64 a line in the order read (diff's
        first pass). ``firsts`` (with ``wanted``): such a record of the same files, read
        along: a line whose recorded half is not wanted is passed over without being
        hashed (diff's second pass hashes the few it gives, not every line). A file
        changed in between gives fewer lines, never others: the caller counts them."""
        self.long_lines = long_lines
        self.wanted = wanted
        self.record_firsts = record_firsts
        self.firsts = firsts
        self.backup = backup
        self.files = [f for f in files if f.rows]
        self.hashes = hashes
        self.text = text
        self.block_size = block_size
        self.schema = pa.schema(
            [
                *(HASHES if hashes else ()),
                *(TEXT if text else ()),
                *(CUT if long_lines is not None else ()),
            ]
        )
        self.rows = 0
        self.total = 0  # the sum of the lines' 128-bit values, modulo 2**128
        self.longest = 0  # the longest line read so far
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
        """A one-pass Arrow stream (what DuckDB scans when it is registered), read ahead
        in a thread of its own: the engine pulls its streams one batch at a time, and
        reading (decompression, hashing) mostly runs without the GIL, so two streams and
        the engine keep two cores busy."""
        return pa.RecordBatchReader.from_batches(self.schema, _read_ahead([iter(self)]))

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        if self._started:
            raise RuntimeError("LineBatches are read once")
        self._started = True
        try:
            for entry in self.files:
                yield from self._file(entry)
            self.complete = True
        except GeneratorExit:
            raise  # closed early (the engine stopped: another source failed), not a failure
        except BaseException as exc:
            self.error = exc
            raise

    def _file(self, entry: BackupFile) -> Iterator[pa.RecordBatch]:
        if self.backup is None:
            yield from self._scratch_file(entry)
            return
        reader = DataFileReader(self.backup, entry, block_size=self.block_size, count_rows=False)
        try:
            for block in reader:
                yield self._batch(reader, block)
                del block
            reader.finish()
        finally:
            reader.close()

    def _scratch_file(self, entry: BackupFile) -> Iterator[pa.RecordBatch]:
        """A plain file's lines, in blocks of whole lines, its line count checked."""
        counted = _Counted(entry)
        for block in plain_blocks(entry, self.block_size):
            yield self._batch(counted, block)

    def _batch(self, reader: DataFileReader | _Counted, block: bytes | bytearray) -> pa.RecordBatch:
        try:
            if self.wanted is None:
                found = _rows.line_columns(block, self.hashes, self.text)
            elif self.firsts is None:
                found = _rows.line_columns(block, self.hashes, self.text, self.wanted)
            else:
                known = self._recorded(_rows.count_lines(block), reader)
                found = _rows.line_columns(block, self.hashes, self.text, self.wanted, known)
            rows, hi, lo, total, offsets, text, longest, lines = found
        except _rows.LineError as exc:
            line = reader.rows + exc.line + 1
            raise VerificationFailed(
                f"{reader.entry.path}: line {line} is {exc.what}",
                hint="the backup is damaged; `asyncsnap verify` says more",
            ) from None
        columns: list[pa.Array] = []
        if self.record_firsts is not None:
            assert hi is not None
            self.record_firsts.write(hi)
        if self.hashes:
            assert hi is not None and lo is not None and total is not None
            columns.append(pa.Array.from_buffers(pa.uint64(), rows, [None, pa.py_buffer(hi)]))
            columns.append(pa.Array.from_buffers(pa.uint64(), rows, [None, pa.py_buffer(lo)]))
            self.total = (self.total + int.from_bytes(total, "big")) % MODULUS
        if self.text:
            assert offsets is not None and text is not None
            strings = pa.Array.from_buffers(
                pa.large_string(), rows, [None, pa.py_buffer(offsets), pa.py_buffer(text)]
            )
            if self.long_lines is None:
                columns.append(strings)
            elif longest <= self.long_lines.limit:
                none_cut = pa.py_buffer(bytes((rows + 7) // 8))  # a bitmap of zeros
                columns += [strings, pa.Array.from_buffers(pa.bool_(), rows, [None, none_cut])]
            else:
                assert hi is not None and lo is not None
                columns += self.long_lines.take(offsets, text, hi, lo)
        self.rows += lines
        reader.rows += lines  # finish() checks them against the manifest
        self.longest = max(self.longest, longest)
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)

    def _recorded(self, lines: int, reader: DataFileReader | _Counted) -> bytes:
        """The next ``lines`` entries of ``firsts``."""
        assert self.firsts is not None
        known = self.firsts.read(8 * lines)
        if len(known) != 8 * lines:
            raise VerificationFailed(
                f"{reader.entry.path}: more lines than the first reading found",
                hint="the files changed while diff read them; run it again",
            )
        return known

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


def plain_blocks(entry: BackupFile, block_size: int = _BLOCK) -> Iterator[bytes]:
    """A plain file of this machine (a chain's table, written by diff itself) as blocks of
    whole lines; its line count is checked against ``entry.rows`` at its end."""
    rows = 0
    with open(entry.path, "rb") as fh:
        pending = bytearray()  # grown in place: a long line is not copied per read
        while chunk := fh.read(block_size):
            end = chunk.rfind(b"\n") + 1
            if not end:
                pending += chunk
                continue
            block = bytes(pending) + chunk[:end]
            pending = bytearray(chunk[end:])
            rows += _rows.count_lines(block)
            yield block
        if pending:
            raise VerificationFailed(f"{entry.path}: its last line has no newline")
    if rows != entry.rows:
        raise VerificationFailed(f"{entry.path}: {rows} lines, not {entry.rows}")


class _Counted:
    """What ``LineBatches._batch`` keeps of a reader for a scratch file: its lines."""

    def __init__(self, entry: BackupFile) -> None:
        self.entry = entry
        self.rows = 0


def read_together(
    sources: Sequence[LineBatches], sides: Sequence[int] | None = None
) -> pa.RecordBatchReader:
    """One Arrow stream of several sources' batches, each source read in a thread of its
    own, batches in whatever order they are ready (with ``sides``, each batch gets a
    column ``side`` holding its source's number).

    An engine pulls a stream one batch at a time from one thread, and a UNION of streams
    is read one after another; reading (decompression, hashing) mostly runs without the
    GIL, so two sources read at once keep two cores busy while the engine works."""
    schema = sources[0].schema
    if sides is not None:
        schema = schema.append(pa.field("side", pa.int8()))
    iterators = []
    for number, source in enumerate(sources):
        if sides is None:
            iterators.append(iter(source))
        else:
            iterators.append(_with_side(iter(source), sides[number]))
    return pa.RecordBatchReader.from_batches(schema, _read_ahead(iterators))


def _with_side(batches: Iterator[pa.RecordBatch], side: int) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        yield batch.append_column("side", pa.repeat(pa.scalar(side, pa.int8()), batch.num_rows))


_DONE = object()


def _read_ahead(sources: Sequence[Iterator[pa.RecordBatch]]) -> Iterator[pa.RecordBatch]:
    """The batches of ``sources``, each produced in a thread of its own, at most two
    ahead of the consumer per source. A failure in a thread is raised here; a consumer
    that stops early stops the threads."""
    ready: queue.Queue[Any] = queue.Queue(maxsize=2 * len(sources))
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce(batches: Iterator[pa.RecordBatch]) -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(_DONE)
        except BaseException as exc:
            put(exc)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # the generator runs here, so it is closed here

    threads = [
        threading.Thread(target=produce, args=(s,), name="asyncsnap-read-ahead", daemon=True)
        for s in sources
    ]
    for thread in threads:
        thread.start()
    try:
        running = len(threads)
        while running:
            item = ready.get()
            if item is _DONE:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        stop.set()
        for thread in threads:
            while thread.is_alive():  # a producer blocked on a full queue must see the stop
                with contextlib.suppress(queue.Empty):
                    while True:
                        ready.get_nowait()
                thread.join(0.05)


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


class LongLines:
    """Lines too long to hand to the engine, kept in a private file (0600, in a 0700
    directory removed after the command) by their 128-bit identity; the engine gets a
    stand-in (``stand_in``: the line with only some columns' values kept) to work on.

    A line met twice (in both backups, or in two passes) is stored once. ``diff`` reads
    both backups at once, in two threads, into one store: storing is serialised (the file
    is created once, and a line's offset is where its own bytes went)."""

    def __init__(
        self, directory: Path, stand_in: Callable[[bytes, int, int], bytes], limit: int = 1 << 20
    ) -> None:
        self.limit = limit
        self.stand_in = stand_in
        self._path = directory / "long-lines"
        self._file: BinaryIO | None = None
        self._index: dict[tuple[int, int], tuple[int, int]] = {}  # identity: (offset, size)
        self._lock = threading.Lock()

    def take(self, offsets: bytes, text: bytes, hi: bytes, lo: bytes) -> list[pa.Array]:
        """The batch's ``line`` and ``cut`` columns (from ``line_columns``' buffers), long
        lines stored and stood in for; no line is copied but into the file."""
        starts = memoryview(offsets).cast("q")
        firsts, seconds = memoryview(hi).cast("Q"), memoryview(lo).cast("Q")
        view = memoryview(text)
        kept: list[bytes] = []
        cut: list[bool] = []
        for i in range(len(firsts)):
            start, end = starts[i], starts[i + 1]
            if end - start <= self.limit:
                kept.append(text[start:end])
                cut.append(False)
            else:
                self._store((firsts[i], seconds[i]), view[start:end])
                kept.append(self.stand_in(text, start, end))
                cut.append(True)
        return [pa.array(kept, pa.large_string()), pa.array(cut, pa.bool_())]

    def _store(self, identity: tuple[int, int], raw: memoryview) -> None:
        with self._lock:
            if identity in self._index:
                return
            if self._file is None:
                flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                self._file = os.fdopen(os.open(self._path, flags, 0o600), "w+b")
            offset = self._file.seek(0, os.SEEK_END)
            self._file.write(raw)
            self._index[identity] = (offset, len(raw))

    def copy_to(self, identity: tuple[int, int], out: BinaryIO) -> None:
        """Write the stored line ``identity`` to ``out``, a block at a time."""
        offset, size = self._index[identity]
        assert self._file is not None
        self._file.flush()
        self._file.seek(offset)
        while size:
            block = self._file.read(min(size, 4 << 20))
            out.write(block)
            size -= len(block)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
