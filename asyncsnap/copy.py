"""The dump's workers: a pool of connections copying chunks in the one snapshot, with retries.

Each work item (a table or a page range of one, or the large objects) is copied by one
connection in a transaction that imports the coordinator's snapshot. Rows stream from the
server's COPY into a ``DataFileWriter``, which counts, compresses, hashes and writes them;
the writer is fed from asyncpg's COPY sink, so a slow disk slows the server instead of
filling memory.

A connection lost at any point of an item (before the COPY, during it, at the commit, or
while the transaction ends) discards the item's file and copies it again on a fresh
connection that imports the same snapshot, at most ``CHUNK_ATTEMPTS`` times: the file is
the same as a fault-free run would write. A connection that failed is never handed back
to the pool in an unknown protocol state: it is terminated, and the pool opens a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import anyio
import anyio.to_thread
import asyncpg

from .catalog import TypeInfo, sql_name
from .encode import bigrows
from .encode.rowcodec import DumpShape, LineSplitter, copy_query
from .errors import (
    DataIntegrityError,
    DumpFailed,
    LockTimeout,
    PermissionDenied,
    StatementTimeout,
    most_telling,
)
from .events import (
    PROGRESS_INTERVAL,
    ChunkFinished,
    ChunkProgress,
    ChunkStarted,
    EventCallback,
    Notice,
)
from .format import MAX_LINE_BYTES, Compression
from .largeobjects import LARGE_OBJECTS_STEM, dump_large_objects
from .plan import Chunk
from .session import CONNECTION_LOST, RELEASE_ERRORS
from .snapshot import snapshot_lost, snapshot_transaction
from .storage.files import DataFileWriter, DataTarget, StoredFile

# A chunk whose connection dies (backend terminated, network reset) is copied again on a
# fresh connection that imports the same snapshot, at most this many times in all.
CHUNK_ATTEMPTS = 3
_RETRY_PAUSE = 0.5
# How long a failed or cancelled dump waits for the server to cancel its COPYs and for
# the connections to close cleanly before it cuts them.
_CLOSE_GRACE = 5.0


@dataclass(frozen=True)
class LargeObjectsJob:
    """The work item that copies every large object (one file)."""

    est_rows: int  # objects, for progress
    readable_only: bool  # --skip-unreadable: leave out those the role may not read
    stem: str = LARGE_OBJECTS_STEM
    label: str = "large objects"


WorkItem = Chunk | LargeObjectsJob


@dataclass(frozen=True)
class CopyContext:
    """What every item's copy needs besides its connection."""

    snapshot_id: str
    types: dict[int, TypeInfo]
    backup: DataTarget
    compression: Compression
    emit: EventCallback
    # Each file's row fingerprint (dump --fingerprints): SHA-256 of every line, measured
    # at 1.12 of the dump's time on pgbench scale 50, so asked for, not by default.
    fingerprints: bool = True


class _ConnectionLost(DumpFailed):
    """A worker's connection died mid-item; the item may be retried."""


def _lost(item: WorkItem, exc: BaseException) -> _ConnectionLost:
    return _ConnectionLost(
        f"lost the connection while copying {item.label}: {exc}",
        hint="check the server log; nothing was kept",
    )


def _connection_gone(conn: asyncpg.Connection) -> bool:
    """Whether ``conn`` died. The pool detaches a proxy whose connection was lost, and
    then even ``is_closed()`` raises."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


async def copy_all(
    pool: asyncpg.Pool,
    items: Sequence[WorkItem],
    ctx: CopyContext,
    coordinator_lost: anyio.Event,
) -> dict[str, StoredFile]:
    """Copy every item with the pool's connections; returns the stored files by stem."""
    stored: dict[str, StoredFile] = {}
    queue: Iterator[WorkItem] = iter(items)  # shared: each worker takes the next largest

    async def worker() -> None:
        for item in queue:
            stored[item.stem] = await _copy_with_retries(pool, item, ctx)

    async def watch_coordinator() -> None:
        # Fail fast: once the snapshot holder is gone no further chunk can import it.
        await coordinator_lost.wait()
        raise snapshot_lost()

    workers = max(1, min(pool.get_max_size(), len(items)))
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_coordinator)
            async with anyio.create_task_group() as copying:
                for _ in range(workers):
                    copying.start_soon(worker)
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise most_telling(group) from None
    return stored


async def _copy_with_retries(pool: asyncpg.Pool, item: WorkItem, ctx: CopyContext) -> StoredFile:
    for attempt in range(1, CHUNK_ATTEMPTS + 1):
        # Acquired per attempt: the pool replaces a connection that died.
        conn = await pool.acquire()
        broken = True  # until the item is copied: a failure leaves the protocol unknown
        try:
            stored = await _copy_item(conn, item, ctx)
            broken = False
            return stored
        except _ConnectionLost as exc:
            if attempt == CHUNK_ATTEMPTS:
                raise DumpFailed(
                    f"{exc.message} (gave up after {CHUNK_ATTEMPTS} attempts)", hint=exc.hint
                ) from exc
            ctx.emit(
                Notice(
                    f"{exc.message}; its file was discarded, retrying on a new "
                    f"connection in the same snapshot ({attempt + 1}/{CHUNK_ATTEMPTS})"
                )
            )
        except BaseException:
            # A server error leaves the connection usable; anything else (cancellation
            # included) may have left it mid-protocol. Cancelled COPYs are cancelled on
            # the server when the pool closes (``close_pool``).
            broken = False
            raise
        finally:
            await _give_back(pool, conn, broken=broken)
        await anyio.sleep(_RETRY_PAUSE * attempt)
    raise AssertionError("unreachable")


async def _give_back(pool: asyncpg.Pool, conn: asyncpg.Connection, *, broken: bool) -> None:
    """Return ``conn`` to the pool; a broken one is terminated first so that the pool
    never tries to reset it (which raises on a connection stuck mid-COPY)."""
    with anyio.CancelScope(shield=True):
        if broken and not _connection_gone(conn):
            conn.terminate()
        # A failed release terminated the connection; the pool opens a new one.
        with contextlib.suppress(*RELEASE_ERRORS):
            await pool.release(conn)


async def close_pool(pool: asyncpg.Pool) -> None:
    """Close the pool, shielded from cancellation: cancelled COPYs get a cancel request
    from asyncpg; closing waits for the server to acknowledge it, so no backend keeps
    streaming into a closed socket. Terminate if that takes too long."""
    with anyio.CancelScope(shield=True):
        with anyio.move_on_after(_CLOSE_GRACE) as grace:
            try:
                await pool.close()
            except RELEASE_ERRORS:
                pool.terminate()
        if grace.cancelled_caught:
            pool.terminate()


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


async def _copy_item(conn: asyncpg.Connection, item: WorkItem, ctx: CopyContext) -> StoredFile:
    """Copy one item into its file inside a transaction that imports the snapshot; every
    failure is translated, a lost connection to ``_ConnectionLost``."""
    emit = ctx.emit
    emit(ChunkStarted(label=item.label, est_rows=item.est_rows))
    started = time.monotonic()
    # Creating a file costs about a millisecond here (measured: 0.25 s for 300 files):
    # off the event loop, like its flush, fsync and rename.
    writer = await anyio.to_thread.run_sync(ctx.backup.data_writer, item.stem, ctx.compression)
    if not ctx.fingerprints:
        writer.fingerprint = None
    objects = (0, 0)
    longest = 0
    try:
        try:
            if isinstance(item, LargeObjectsJob):
                async with snapshot_transaction(conn, ctx.snapshot_id):
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
                longest = await _copy_rows(conn, item, writer, ctx)
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
            if _connection_gone(conn):  # e.g. the transaction's exit after the backend died
                raise _lost(item, exc) from exc
            raise DumpFailed(
                f"server error while copying {item.label}: {exc}",
                hint=getattr(exc, "hint", None) or "see the server log",
            ) from exc
        stored = await anyio.to_thread.run_sync(_seal, writer)
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


class _Pipe:
    """Converts a chunk's COPY text to NDJSON (``rowcodec``), compresses, hashes and writes
    it in a worker thread, one batch behind the socket: the event loop only gathers bytes,
    and the chunks of a dump convert on all cores (the converter, zstd and hashlib release
    the GIL). At most one batch is in flight per chunk, so lines stay in order and memory
    is about two batches; a batch waits for the one before it, which slows the server
    down when the client cannot keep up."""

    def __init__(self, shape: DumpShape, writer: DataFileWriter) -> None:
        self._shape = shape
        self._writer = writer
        self._splitter = LineSplitter()
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
        if lines:
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
        """Convert what arrived; every line must have arrived whole."""
        await self._submit()
        await self._settle()
        if self._splitter.pending:
            raise DataIntegrityError(
                f"{label}: the COPY data does not end with a whole line",
                hint="please report this as a bug",
            )

    async def abandon(self) -> None:
        """After a failure: wait for the batch in flight (its thread writes to the file
        about to be discarded) and drop what was not converted."""
        with anyio.CancelScope(shield=True):
            if self._inflight is not None:
                with contextlib.suppress(Exception):
                    await self._inflight
                self._inflight = None
        self._pieces.clear()
        self._splitter = LineSplitter()


async def _copy_rows(
    conn: asyncpg.Connection, chunk: Chunk, writer: DataFileWriter, ctx: CopyContext
) -> int:
    """COPY one chunk's rows into ``writer``, in a transaction that imports the snapshot;
    returns the length of the longest line when one is longer than any value can be
    (written column by column, or converted from a row whose text form fit), else 0.

    The server sends COPY text; ``_Pipe`` turns it into NDJSON on the client's cores. A
    row too big for the server to send as one COPY row fails the COPY after the rows
    before it arrived whole. A new transaction in the same snapshot then finds that row,
    writes it with ``bigrows``, and copies the rest of the chunk after it.
    """
    table, emit = chunk.table, ctx.emit
    shape = DumpShape.of(table, ctx.types)
    next_report = time.monotonic() + PROGRESS_INTERVAL
    pipe = _Pipe(shape, writer)

    async def sink(data: bytes) -> None:
        # Runs between two reads of the socket: asyncpg pauses reading until it
        # returns, so a slow disk or a busy converter slows the server down instead of
        # filling memory.
        nonlocal next_report
        await pipe.feed(data)
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
            async with snapshot_transaction(conn, ctx.snapshot_id):
                # pg_dump's guard: if someone queued an ACCESS EXCLUSIVE lock behind the
                # coordinator's ACCESS SHARE, waiting here would deadlock undetected
                # (we wait for them, they wait for the coordinator, which waits for us).
                await conn.execute(
                    f"LOCK TABLE ONLY {sql_name(table.schema, table.name)} "
                    "IN ACCESS SHARE MODE NOWAIT"
                )
                if arrived is not None:
                    after = await bigrows.nth_row(conn, table, chunk.pages, after, arrived)
                    emit(
                        Notice(
                            f"{chunk.label}: the row at {after} is too large for one JSON "
                            "value; reading it column by column"
                        )
                    )
                    line = await bigrows.write_row(conn, table, ctx.types, after, writer)
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
                        )
                    else:
                        status = await conn.copy_from_query(
                            copy_query(table, shape, chunk.pages, after), output=sink
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
