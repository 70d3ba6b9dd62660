"""The dump's workers: a pool of connections copying chunks in the one snapshot, with retries.

Each work item (a table or a page range of one, or the large objects) is a ``jobs.ChunkJob``
run by one connection of the pool (``jobs.run_chunk``), largest first, in a transaction
that imports the coordinator's snapshot; a worker keeps its connection and that
transaction from one item to the next (``snapshot.SnapshotReader``).

A connection lost at any point of an item (before the COPY, during it, at the commit, or
while the transaction ends) discards the item's file and copies it again on a fresh
connection that imports the same snapshot, at most ``CHUNK_ATTEMPTS`` times: the file is
the same as a fault-free run would write. A connection that failed is never handed back
to the pool in an unknown protocol state: it is terminated, and the pool opens a new one.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
import asyncpg

from .catalog import Table, TypeInfo
from .errors import DumpFailed, most_telling
from .events import EventCallback, Notice
from .format import Compression
from .jobs import (
    ChunkConnectionLost,
    ChunkJob,
    WorkItem,
    connection_gone,
    run_chunk,
)
from .plan import Chunk
from .session import RELEASE_ERRORS
from .snapshot import SnapshotReader, snapshot_lost
from .storage.files import DataTarget, StoredFile

# A chunk whose connection dies (backend terminated, network reset) is copied again on a
# fresh connection that imports the same snapshot, at most this many times in all.
CHUNK_ATTEMPTS = 3
_RETRY_PAUSE = 0.5
# A table this small (heap and TOAST) is copied in a run with the small ones after it, up
# to SMALL_RUN of them: at most a few MB, tens of milliseconds, per run.
SMALL_TABLE = 256 << 10
SMALL_RUN = 20
# How long a failed or cancelled dump waits for the server to cancel its COPYs and for
# the connections to close cleanly before it cuts them.
_CLOSE_GRACE = 5.0


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

    def job(self, item: WorkItem) -> ChunkJob:
        return ChunkJob(
            snapshot_id=self.snapshot_id,
            item=item,
            types=self.types,
            target=self.backup,
            compression=self.compression,
            fingerprints=self.fingerprints,
        )


async def copy_all(
    pool: asyncpg.Pool,
    items: Sequence[WorkItem],
    ctx: CopyContext,
    coordinator_lost: anyio.Event,
) -> dict[str, StoredFile]:
    """Copy every item with the pool's connections; returns the stored files by stem."""
    stored: dict[str, StoredFile] = {}
    queue = deque(items)  # shared: each worker takes the next largest

    async def worker() -> None:
        held = _Held(pool, ctx.snapshot_id)
        try:
            while queue:
                run = [queue.popleft()]
                # A small table takes the small ones after it: one LOCK statement for
                # them all (``SnapshotReader.lock``); a run is short, so the workers
                # still end together.
                while _small(run[0]) and queue and _small(queue[0]) and len(run) < SMALL_RUN:
                    run.append(queue.popleft())
                held.plan([item.table for item in run if isinstance(item, Chunk)])
                for item in run:
                    stored[item.stem] = await _copy_with_retries(held, item, ctx)
        finally:
            await held.give_back(broken=False)

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


def _small(item: WorkItem) -> bool:
    return isinstance(item, Chunk) and item.pages is None and item.table.table_bytes <= SMALL_TABLE


class _Held:
    """A worker's connection, kept from one item to the next with its transaction in the
    snapshot (``SnapshotReader``), until the worker ends or the connection fails."""

    def __init__(self, pool: asyncpg.Pool, snapshot_id: str) -> None:
        self.pool, self.snapshot_id = pool, snapshot_id
        self.conn: asyncpg.Connection | None = None
        self.reader: SnapshotReader | None = None
        self.planned: list[Table] = []

    def plan(self, tables: list[Table]) -> None:
        """The tables this worker copies next (``SnapshotReader.plan``)."""
        self.planned = tables
        if self.reader is not None:
            self.reader.plan(tables)

    async def get(self) -> tuple[asyncpg.Connection, SnapshotReader]:
        if self.conn is None or self.reader is None:
            # Acquired anew after a failure: the pool replaces a connection that died.
            self.conn = await self.pool.acquire()
            self.reader = SnapshotReader(self.conn, self.snapshot_id)
            self.reader.plan(self.planned)
        return self.conn, self.reader

    async def give_back(self, *, broken: bool) -> None:
        """Back to the pool, its transaction ended; a broken one is terminated first so
        that the pool never tries to reset it (which raises on a connection stuck
        mid-COPY)."""
        conn, reader, self.conn, self.reader = self.conn, self.reader, None, None
        if conn is None:
            return
        with anyio.CancelScope(shield=True):
            if broken and not connection_gone(conn):
                conn.terminate()
            if reader is not None and not broken:
                await reader.end()
            # A failed release terminated the connection; the pool opens a new one.
            with contextlib.suppress(*RELEASE_ERRORS):
                await self.pool.release(conn)


async def _copy_with_retries(held: _Held, item: WorkItem, ctx: CopyContext) -> StoredFile:
    for attempt in range(1, CHUNK_ATTEMPTS + 1):
        conn, reader = await held.get()
        try:
            return await run_chunk(conn, ctx.job(item), ctx.emit, reader)
        except ChunkConnectionLost as exc:
            # A failure leaves the protocol unknown: this connection is not used again.
            await held.give_back(broken=True)
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
            await held.give_back(broken=False)
            raise
        await anyio.sleep(_RETRY_PAUSE * attempt)
    raise AssertionError("unreachable")


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
