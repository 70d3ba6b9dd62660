"""A chunk as a job: one value holding everything a worker needs to copy one work item
(a table, a page range of one, or the large objects) of the snapshot into its file, and
the one function that runs it (``run_chunk``) on any connection of any process.

A ``ChunkJob`` whose target is a ``FileTarget`` is picklable: the snapshot's id, the item
(its table as the catalog described it in the snapshot), the types it needs, the
encoding choices and where its file goes, by value. A worker elsewhere opens a
connection with the run's session policy (``run_chunk_alone``), imports the snapshot,
copies, and returns the file's ``StoredFile``, which is all the manifest needs of it.
The local dump runs the same function on its pool's connections (``copy.copy_all``).

The server sends COPY (binary where every column has a binary renderer, else text;
``rowcodec.DumpShape``); ``_Pipe`` turns it into NDJSON on the client's cores, and the
writer counts, compresses, hashes, encrypts and writes it; the writer is fed from
asyncpg's COPY sink, so a slow disk slows the server instead of filling memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread
import asyncpg

from .catalog import TypeInfo
from .connection import ConnectParams
from .encode import bigrows
from .encode.rowcodec import DumpShape, copy_query
from .errors import (
    DataIntegrityError,
    DumpFailed,
    LockTimeout,
    PermissionDenied,
    StatementTimeout,
    server_error,
)
from .events import (
    PROGRESS_INTERVAL,
    ChunkFinished,
    ChunkProgress,
    ChunkStarted,
    EventCallback,
    Notice,
)
from .format import DATA_DIR, EXTENSIONS, MAX_LINE_BYTES, Compression
from .largeobjects import LARGE_OBJECTS_STEM, dump_large_objects
from .plan import Chunk
from .session import CONNECTION_LOST, Session, SessionPolicy
from .snapshot import SnapshotReader
from .storage.encryption import parse_recipients
from .storage.files import (
    WRITE_BUFFER,
    BackupDirectory,
    DataFileWriter,
    DataTarget,
    StoredFile,
    store_writer,
)
from .storage.location import backup_location
from .storage.prefix import BackupPrefix
from .storage.s3 import S3Store, StoreUrl
from .storage.store import LocalStore

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class LargeObjectsJob:
    """The work item that copies every large object (one file)."""

    est_rows: int  # objects, for progress
    readable_only: bool  # --skip-unreadable: leave out those the role may not read
    stem: str = LARGE_OBJECTS_STEM
    label: str = "large objects"


WorkItem = Chunk | LargeObjectsJob


@dataclass(frozen=True)
class FileTarget:
    """Where a job's file goes, as a value that travels to another process: the backup
    being written, a local directory (the dump's ``<name>.partial``) or ``<url>/<name>``
    in an object store, and the age public keys its files are encrypted to. Credentials
    never travel: a worker's store client reads its own environment."""

    root: str  # a local directory, or an object store URL (the dump's -o prefix)
    name: str = ""  # the backup's name under a store's prefix; "" for a local directory
    recipients: tuple[str, ...] = ()  # age public keys (age1...)
    # In a local directory, each write's temporary name gets a part of its own: a job
    # run again elsewhere after its first run was killed finds that run's file in place.
    unique_temporaries: bool = False

    @classmethod
    def of(cls, target: BackupDirectory | BackupPrefix) -> FileTarget:
        """The value form of a backup being written."""
        recipients = tuple(str(r) for r in target.recipients or ())
        if isinstance(target, BackupPrefix):
            return cls(target.store.where, target.name, recipients)  # an s3:// URL
        return cls(str(target.path), "", recipients)

    cheap_writers = False  # it opens a store for each file

    def data_writer(self, stem: str, compression: Compression) -> DataFileWriter:
        relpath = f"{DATA_DIR}/{stem}{EXTENSIONS[compression]}"
        recipients = parse_recipients(self.recipients) if self.recipients else None
        where = backup_location(self.root, role="target")
        store = (
            S3Store(where)
            if isinstance(where, StoreUrl)
            else LocalStore(
                Path(where), attempt=secrets.token_hex(6) if self.unique_temporaries else ""
            )
        )
        key = f"{self.name}/{relpath}" if self.name else relpath
        return store_writer(store, key, relpath, compression, recipients)


@dataclass(frozen=True)
class ChunkJob:
    """Everything one work item's copy needs besides a connection."""

    snapshot_id: str
    item: WorkItem
    types: Mapping[int, TypeInfo]  # the catalog's types, for the item's columns
    target: DataTarget  # a ``FileTarget`` for a job that leaves this process
    compression: Compression
    # Each file's row fingerprint (dump --fingerprints): SHA-256 of every line, measured
    # at 1.12 of the dump's time on pgbench scale 50, so asked for, not by default.
    fingerprints: bool = True


async def run_chunk_alone(
    job: ChunkJob, params: ConnectParams, policy: SessionPolicy, emit: EventCallback | None = None
) -> StoredFile:
    """``run_chunk`` on a connection of its own, opened with the run's session policy (in
    a worker process, on another machine). The snapshot's coordinator must still hold it.

    :raises SnapshotLost: when the snapshot is gone (the coordinator ended).
    :raises ChunkConnectionLost: when the connection died mid-copy; the job may run again.
    """
    conn = await Session(params, policy).connect()
    try:
        return await run_chunk(conn, job, emit or (lambda event: None))
    finally:
        with anyio.CancelScope(shield=True):
            if not connection_gone(conn):
                await conn.close()


class ChunkConnectionLost(DumpFailed):
    """Raised by ``run_chunk`` when its connection died mid-item; the item may be run
    again (its file was discarded)."""


def _lost(item: WorkItem, exc: BaseException) -> ChunkConnectionLost:
    return ChunkConnectionLost(
        f"lost the connection while copying {item.label}: {exc}",
        hint="check the server log; nothing was kept",
    )


def connection_gone(conn: asyncpg.Connection) -> bool:
    """Whether ``conn`` died. The pool detaches a proxy whose connection was lost, and
    then even ``is_closed()`` raises."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


def cancelled_by_server(exc: asyncpg.QueryCanceledError, doing: str) -> DumpFailed:
    """The server cancelled a statement: our statement timeout, or someone else."""
    if "statement timeout" in str(exc):
        return StatementTimeout(
            f"the server cancelled {doing}: it ran longer than --statement-timeout",
            hint="raise --statement-timeout (0 means no limit)",
        )
    return DumpFailed(
        f"the server cancelled {doing}: {exc}",
        hint="someone ran pg_cancel_backend() on the dump's session? run it again",
    )


async def run_chunk(
    conn: asyncpg.Connection,
    job: ChunkJob,
    emit: EventCallback,
    reader: SnapshotReader | None = None,
) -> StoredFile:
    """Copy one job's item into its file inside a transaction that imports the snapshot;
    every failure is translated, a lost connection to ``ChunkConnectionLost``.

    ``reader``: the connection's transaction in the snapshot, kept open from one chunk to
    the next by a caller that copies many (the dump's workers); without it the chunk has
    a transaction of its own."""
    if reader is None:
        reader = SnapshotReader(conn, job.snapshot_id)
        try:
            return await run_chunk(conn, job, emit, reader)
        finally:
            await reader.end()
    item = job.item
    emit(ChunkStarted(label=item.label, est_rows=item.est_rows))
    started = time.monotonic()
    # Creating a file costs about a millisecond here (measured: 0.25 s for 300 files): off
    # the event loop, like its flush, fsync and rename. A cheap writer touches no disk
    # before its first flush (made here, its file created in the conversion's or the
    # seal's thread); others (an upload, age's thread) are made in a thread.
    if job.target.cheap_writers:
        writer = job.target.data_writer(item.stem, job.compression)
    else:
        writer = await anyio.to_thread.run_sync(job.target.data_writer, item.stem, job.compression)
    if not job.fingerprints:
        writer.fingerprint = None
    objects = (0, 0)
    longest = 0
    try:
        try:
            if isinstance(item, LargeObjectsJob):
                async with reader.transaction():
                    objects = await dump_large_objects(
                        conn,
                        writer,
                        readable_only=item.readable_only,
                        on_progress=lambda: emit(
                            ChunkProgress(item.label, writer.rows, writer.raw_bytes)
                        ),
                    )
                    emit(ChunkProgress(item.label, writer.rows, writer.raw_bytes))
            else:
                longest = await _copy_rows(conn, job, writer, emit, reader)
        except asyncpg.LockNotAvailableError as exc:
            assert isinstance(item, Chunk)
            raise LockTimeout(
                f"table {item.table.qualified} has a lock request waiting behind the dump",
                hint="someone asked for an ACCESS EXCLUSIVE lock (ALTER, DROP, VACUUM FULL?) "
                "after the dump started; run the dump when it is done",
            ) from exc
        except asyncpg.QueryCanceledError as exc:
            raise cancelled_by_server(exc, f"copying {item.label}") from exc
        except asyncpg.InsufficientPrivilegeError as exc:
            raise PermissionDenied(
                f"permission denied reading {item.label}: {exc.message}",
                hint=_privilege_hint(exc),
            ) from exc
        except CONNECTION_LOST as exc:
            raise _lost(item, exc) from exc
        except asyncpg.PostgresError as exc:
            if connection_gone(conn):  # e.g. the transaction's exit after the backend died
                raise _lost(item, exc) from exc
            message, hint = server_error(exc, "dump fewer tables at once (-t/-T/-n/-N)")
            raise DumpFailed(
                f"server error while copying {item.label}: {message}", hint=hint
            ) from exc
        stored = await _in_thread(_seal, writer)
    except BaseException:
        # Off the event loop: a store-backed file aborts its upload over the network.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(writer.discard)
        raise
    stored = replace(
        stored,
        seconds=time.monotonic() - started,
        started=started,
        objects=objects[0],
        object_bytes=objects[1],
        longest_line=longest,
    )
    emit(
        ChunkFinished(
            label=item.label,
            rows=stored.rows,
            bytes=stored.bytes,
            stored_bytes=stored.stored_bytes,
            seconds=stored.seconds,
        )
    )
    return stored


def _seal(writer: DataFileWriter) -> StoredFile:
    writer.close_data()
    return writer.finish()


async def _in_thread(function: Callable[[T], R], argument: T) -> R:
    """``function(argument)`` in the event loop's executor; if the caller is cancelled
    meanwhile, the cancellation waits for the thread (which may still write) to end, as
    ``anyio.to_thread.run_sync`` does. A bare executor hop: anyio's costs its capacity
    limiter and run variables every call (py-spy of a 3,000-table dump: 10% of the
    loop's time, a seal per table)."""
    running = asyncio.get_running_loop().run_in_executor(None, function, argument)
    try:
        return await asyncio.shield(running)
    except BaseException:
        with anyio.CancelScope(shield=True), contextlib.suppress(BaseException):
            await running
        raise


def _privilege_hint(exc: asyncpg.InsufficientPrivilegeError) -> str:
    if "row-level security" in str(exc):
        return (
            "dump as the owner, a superuser or a BYPASSRLS role; or pass "
            "--enable-row-security to dump only the rows this role may see"
        )
    return "GRANT SELECT to this role, or leave the table out with -T"


# COPY text handed to a worker thread at once: enough to make the hop to the thread cheap
# (tens of microseconds each), small enough to keep memory flat. Measured, pgbench_accounts
# -j 2: peak RSS 62-65 MiB with 256 KiB, 74-77 MiB with 1 MiB, no clear change in time.
PIPE_BATCH = 256 << 10
# A chunk whose whole COPY is this small (most tables of an application database) is
# converted on the event loop, into a cheap writer's buffer: tens of microseconds, less
# than the hop to a thread and back. Its NDJSON is at most ~15 times the COPY bytes (a
# bool under a long column name), well under the writer's buffer: no disk I/O here.
INLINE_BATCH = 16 << 10
assert INLINE_BATCH * 16 < WRITE_BUFFER


# A big chunk's COPY read in small pieces is gathered: after a read of less than
# SMALL_READ, the sink waits READ_PAUSE before asyncpg reads the socket again (it reads
# no more until the sink returns), so that the server's 8 KiB sends pile up in the socket
# and the next read takes them at once. A loop serving one connection (a cluster's
# worker, ``dump -j 1``) otherwise woke for each of them: a worker read pgbench's 543 MiB
# of COPY in 13,656 pieces (median 7.7 KiB), a local ``-j 2`` dump, its loop kept busy by
# two connections, in 2,459 (median 245 KiB); each piece costs the loop a pass through
# asyncpg's COPY and two changes to its selector. With the pause, the worker's reads
# were 2,451 (median 245 KiB), and ``dump --cluster local:2`` took 2.91-3.06 s against
# 3.21-3.50 s (alternating, three pairs, 2026-12-07); the local dump did not change
# (1.96-2.05 s against 2.00-2.11 s). Chunks smaller than GATHER_FROM never wait: a small
# table's whole COPY is one small read, and 3,000 of them would wait 3 s.
SMALL_READ = 64 << 10
READ_PAUSE = 0.001
GATHER_FROM = 4 << 20


def read_pause(chunk: Chunk, read: int) -> float:
    """Seconds the sink waits after a read of ``read`` bytes of ``chunk``'s COPY."""
    return READ_PAUSE if read < SMALL_READ and chunk.est_bytes >= GATHER_FROM else 0.0


class _Pipe:
    """Converts a chunk's COPY text to NDJSON (``rowcodec``), compresses, hashes and writes
    it in a worker thread, one batch behind the socket: the event loop only gathers bytes,
    and the chunks of a dump convert on all cores (the converter, zstd and hashlib release
    the GIL). At most one batch is in flight per chunk, so lines stay in order and memory
    is about two batches; a batch waits for the one before it, which slows the server
    down when the client cannot keep up."""

    def __init__(self, shape: DumpShape, writer: DataFileWriter, *, inline: bool) -> None:
        self._shape = shape
        self._writer = writer
        self._inline = inline  # the writer is cheap: a small first batch converts here
        self._splitter = shape.splitter()
        self._pieces: list[bytes] = []
        self._size = 0
        self._inflight: asyncio.Future[None] | None = None
        self.longest = 0  # the longest NDJSON line converted

    async def feed(self, data: bytes) -> None:
        self._pieces.append(data)
        self._size += len(data)
        if self._size >= PIPE_BATCH:
            await self._submit()

    async def _submit(self) -> None:
        await self._settle()
        data = self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces)
        self._pieces.clear()
        self._size = 0
        lines = self._splitter.whole_lines(data)
        if not lines:
            return
        if self._inline and len(lines) <= INLINE_BATCH and self._writer.raw_bytes == 0:
            self._convert(lines)  # the whole chunk, small; into the writer's buffer
            return
        loop = asyncio.get_running_loop()
        self._inflight = loop.run_in_executor(None, self._convert, lines)

    def _convert(self, lines: bytes | memoryview) -> None:
        out, rows, longest = self._shape.encode(lines)
        self.longest = max(self.longest, longest)
        self._writer.write(out, rows)

    async def _settle(self) -> None:
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            await inflight

    async def flush(self, label: str) -> None:
        """Convert what arrived; every line must have arrived whole. The next COPY starts
        afresh (a binary one with its header)."""
        await self._submit()
        await self._settle()
        if self._splitter.pending:
            raise DataIntegrityError(
                f"{label}: the COPY data does not end with a whole line",
                hint="please report this as a bug",
            )
        self._splitter = self._shape.splitter()

    async def abandon(self) -> None:
        """After a failure: wait for the batch in flight (its thread writes to the file
        about to be discarded) and drop what was not converted."""
        with anyio.CancelScope(shield=True):
            if self._inflight is not None:
                with contextlib.suppress(Exception):
                    await self._inflight
                self._inflight = None
        self._pieces.clear()
        self._splitter = self._shape.splitter()


async def _copy_rows(
    conn: asyncpg.Connection,
    job: ChunkJob,
    writer: DataFileWriter,
    emit: EventCallback,
    reader: SnapshotReader,
) -> int:
    """COPY one chunk's rows into ``writer``, in a transaction that imports the snapshot;
    returns the length of the longest line when one is longer than any value can be
    (written column by column, or converted from a row whose text form fit), else 0.

    The server sends COPY text or binary; ``_Pipe`` turns it into NDJSON on the client's cores. A
    row too big for the server to send as one COPY row fails the COPY after the rows
    before it arrived whole. A new transaction in the same snapshot then finds that row,
    writes it with ``bigrows``, and copies the rest of the chunk after it.
    """
    chunk = job.item
    assert isinstance(chunk, Chunk)
    table = chunk.table
    shape = DumpShape.of(table, job.types)
    next_report = time.monotonic() + PROGRESS_INTERVAL
    pipe = _Pipe(shape, writer, inline=job.target.cheap_writers)

    async def sink(data: bytes) -> None:
        # Runs between two reads of the socket: asyncpg pauses reading until it
        # returns, so a slow disk or a busy converter slows the server down instead of
        # filling memory.
        nonlocal next_report
        await pipe.feed(data)
        pause = read_pause(chunk, len(data))
        if pause:
            await asyncio.sleep(pause)
        now = time.monotonic()
        if now >= next_report:
            next_report = now + PROGRESS_INTERVAL
            emit(ChunkProgress(label=chunk.label, rows=writer.rows, bytes=writer.raw_bytes))

    after: tuple[int, int] | None = None  # the last row written column by column
    arrived: int | None = None  # rows of the failed COPY that arrived before its big row
    longest = 0
    while True:
        before = writer.rows
        try:
            async with reader.transaction():
                await reader.lock(table)  # NOWAIT: pg_dump's guard against a deadlock
                if arrived is not None:
                    after = await bigrows.nth_row(conn, table, chunk.pages, after, arrived)
                    emit(
                        Notice(
                            f"{chunk.label}: the row at {after} is too large for one JSON "
                            "value; reading it column by column"
                        )
                    )
                    line = await bigrows.write_row(conn, table, job.types, after, writer)
                    longest, arrived = max(longest, line), None
                    before = writer.rows
                try:
                    if shape.plain_table and chunk.pages is None and after is None:
                        # COPY of a table copies its own rows only, as FROM ONLY does
                        status = await conn.copy_from_table(
                            table.name,
                            schema_name=table.schema,
                            columns=[c.name for c in table.columns],
                            output=sink,
                            format=shape.copy_format,
                        )
                    else:
                        status = await conn.copy_from_query(
                            copy_query(table, shape, chunk.pages, after),
                            output=sink,
                            format=shape.copy_format,
                        )
                except asyncpg.PostgresError as exc:
                    if bigrows.too_big(exc):  # the rows before the big one arrived whole
                        await pipe.flush(chunk.label)
                    else:
                        await pipe.abandon()
                    raise
                except BaseException:
                    await pipe.abandon()
                    raise
                await pipe.flush(chunk.label)
                expected = _copy_count(status)
                if writer.rows - before != expected:
                    raise DataIntegrityError(
                        f"{chunk.label}: the server sent {expected} rows but "
                        f"{writer.rows - before} lines arrived",
                        hint="a value broke the one-row-per-line rule; please report this as a bug",
                    )
                _check_whole_lines(chunk, writer)
                # The last count before the transaction ends (and the moment a test can
                # end the connection "at commit").
                emit(ChunkProgress(label=chunk.label, rows=writer.rows, bytes=writer.raw_bytes))
            if pipe.longest > MAX_LINE_BYTES:
                longest = max(longest, pipe.longest)
            return longest
        except asyncpg.PostgresError as exc:
            if not bigrows.too_big(exc) or arrived is not None:
                raise
            _check_whole_lines(chunk, writer)
            arrived = writer.rows - before


def _check_whole_lines(chunk: Chunk, writer: DataFileWriter) -> None:
    if writer.raw_bytes and writer.last_byte != b"\n":
        raise DataIntegrityError(
            f"{chunk.label}: the data does not end with a whole line",
            hint="a value broke the one-row-per-line rule; please report this as a bug",
        )


def _copy_count(status: str) -> int:
    """The row count from a ``COPY n`` command tag."""
    word, _, count = status.partition(" ")
    if word != "COPY" or not count.isdigit():
        raise DumpFailed(f"unexpected COPY status {status!r} from the server")
    return int(count)
