"""The dump: every selected table, read at one moment, to NDJSON files and a manifest.

Flow: the coordinator opens and exports a snapshot, reads the catalog, locks the tables;
a pool of ``jobs`` connections copies chunks (largest first), each in a transaction that
imports the snapshot; the server renders each row as JSON and COPY streams it here, where
it is only counted, compressed, hashed and written. Then SHA256SUMS, then the manifest,
then the rename from ``<name>.partial`` to ``<name>``. Any failure removes the
``.partial`` directory: nothing half-done is left looking done.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import asyncpg

from . import __version__, manifest
from .backup import Skipped
from .catalog import (
    Catalog,
    Table,
    TypeInfo,
    describe_tables,
    list_tables,
    read_sequences,
    read_server_info,
    read_types,
    sample_page_weights,
    sql_name,
)
from .catalog import (
    Sequence as SequenceInfo,
)
from .connection import (
    RENDER_SETTINGS,
    connect,
    create_pool,
    describe_target,
    resolve_dsn,
)
from .errors import (
    DataIntegrityError,
    DumpFailed,
    LockTimeout,
    PermissionDenied,
    StatementTimeout,
    TimeLimitExceeded,
    UsageError,
    VerificationFailed,
    most_telling,
    some_names,
)
from .patterns import Selection
from .plan import (
    Chunk,
    RestoreOrder,
    chunk_count,
    plan_chunks,
    restore_order,
    sample_pages,
)
from .progress import (
    PROGRESS_INTERVAL,
    ChunkFinished,
    ChunkProgress,
    ChunkStarted,
    DumpFinished,
    DumpStarted,
    EventCallback,
    Notice,
)
from .prune import prune
from .render import COPY_OPTIONS_KWARGS, encodings, select_rows_sql
from .snapshot import Coordinator, snapshot_lost, snapshot_transaction
from .storage import COMPRESSIONS, BackupDirectory, Compression, OutputLock, StoredFile
from .verify import verify

DEFAULT_LOCK_TIMEOUT = 30.0
# One stream renders JSON at roughly 100-150 MB/s of table (DESIGN.md): above this a table
# is worth several backends.
DEFAULT_SPLIT_LARGER_THAN = 64 * 1024 * 1024
TID_RANGE_SCAN_VERSION = 140000


@dataclass(frozen=True)
class TableResult:
    """What was written for one table."""

    schema: str
    name: str
    rows: int
    bytes: int  # uncompressed NDJSON
    stored_bytes: int  # on disk
    files: tuple[str, ...]  # relative to the backup directory
    seconds: float  # summed over the table's chunks


@dataclass(frozen=True)
class DumpResult:
    """What ``dump`` did. The CLI renders it; tests assert on it."""

    path: Path  # the finished backup directory
    snapshot_id: str
    tables: list[TableResult]
    rows: int
    bytes: int
    stored_bytes: int
    files: int
    seconds: float
    snapshot_held_seconds: float  # how long VACUUM was held back on the server
    skipped: tuple[Skipped, ...]  # --skip-unreadable
    verified: bool  # every file was read back and checked before the rename (--verify)
    manifest: dict[str, Any] = field(repr=False)


def default_backup_name(now: datetime | None = None) -> str:
    """``backup_YYYYMMDDTHHMMSSZ`` in UTC."""
    return (now or datetime.now(UTC)).strftime("backup_%Y%m%dT%H%M%SZ")


def _utc_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def dump(
    dsn: str | None = None,
    *,
    output: str | Path,
    jobs: int = 2,
    tables: Iterable[str] = (),
    exclude_tables: Iterable[str] = (),
    schemas: Iterable[str] = (),
    exclude_schemas: Iterable[str] = (),
    compression: Compression = "zstd",
    name: str | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    statement_timeout: float = 0.0,
    max_duration: float | None = None,
    split_larger_than: int | None = DEFAULT_SPLIT_LARGER_THAN,
    skip_unreadable: bool = False,
    keep: int | None = None,
    keep_partial: bool = False,
    verify_output: bool = False,
    on_event: EventCallback | None = None,
) -> DumpResult:
    """Export the selected tables at one moment into ``<output>/<name>``.

    :param dsn: connection string; ``None`` uses ``$DATABASE_URL``, ``./.env``, then
        libpq's ``PG*`` variables and ``~/.pgpass``.
    :param output: directory that receives the backup directory (created if missing).
    :param jobs: connections copying at once (besides the coordinator).
    :param tables, exclude_tables, schemas, exclude_schemas: pg_dump-style patterns
        (-t, -T, -n, -N).
    :param compression: ``"zstd"`` (default), ``"gzip"`` or ``"none"``.
    :param name: backup directory name; default ``backup_YYYYMMDDTHHMMSSZ`` (UTC).
    :param lock_timeout: seconds to wait for each table's ACCESS SHARE lock; 0 waits.
    :param statement_timeout: seconds the server may spend on one statement (a chunk's
        COPY, a catalog query) before cancelling it and so the dump; 0 (default): no limit.
    :param max_duration: seconds the whole dump may take; past it the dump is cancelled
        (nothing kept) and ``TimeLimitExceeded`` raised, which bounds how long the snapshot
        holds back VACUUM. ``None``: no limit.
    :param split_larger_than: tables larger than this many bytes (heap + TOAST) are read
        in ctid page ranges by several connections, one file each; ``None`` never splits.
    :param skip_unreadable: leave out tables and sequences the role may not SELECT (a
        notice each, listed under ``skipped`` in the manifest) instead of failing.
    :param keep: after success, keep only the ``keep`` newest complete backups in ``output``
        (see ``asyncsnap.prune``); ``None`` keeps everything.
    :param keep_partial: on failure or cancellation leave ``<name>.partial`` with the files
        finished so far (never a manifest) instead of removing it, for inspection.
    :param verify_output: before the backup gets its final name, read every file back and
        check it as ``asyncsnap.verify`` does; a problem fails the dump
        (``VerificationFailed``) and the backup is not kept.
    :param on_event: called with progress events (see ``asyncsnap.progress``).

    Example::

        result = anyio.run(lambda: asyncsnap.dump("postgresql:///app", output="backups"))
        print(result.path, result.rows)
    """
    selection, output, name = _check_arguments(
        output=output,
        jobs=jobs,
        tables=tables,
        exclude_tables=exclude_tables,
        schemas=schemas,
        exclude_schemas=exclude_schemas,
        compression=compression,
        name=name,
        lock_timeout=lock_timeout,
        statement_timeout=statement_timeout,
        max_duration=max_duration,
        keep=keep,
    )
    emit: EventCallback = on_event or (lambda event: None)
    dsn = resolve_dsn(dsn)

    started = time.monotonic()
    started_at = datetime.now(UTC)
    finished = False
    # Everything until the backup is complete runs under the deadline (None: none); the
    # cancellation it causes takes the same clean-up path as Ctrl-C.
    with anyio.move_on_after(max_duration):
        conn = await connect(dsn, statement_timeout=statement_timeout)
        backup: BackupDirectory | None = None
        lock: OutputLock | None = None
        try:
            try:
                coordinator = await Coordinator.begin(conn)
                server = await read_server_info(conn)
                selected = selection.require(await list_tables(conn))
                selected, skipped = _readable_only(selected, skip_unreadable, emit)
                await coordinator.lock(selected, lock_timeout=lock_timeout)
                described = await describe_tables(conn, selected)
                catalog = Catalog(server=server, tables=described, types=await read_types(conn))
                sequences, skipped_sequences = await read_sequences(
                    conn, described, skip_unreadable=skip_unreadable
                )
                for key in skipped_sequences:
                    skipped.append(Skipped("sequence", *key, "permission denied"))
                    emit(Notice(f"skipped sequence {skipped[-1].qualified}: permission denied"))
                if split_larger_than is not None and server.version_num < TID_RANGE_SCAN_VERSION:
                    emit(
                        Notice(
                            f"PostgreSQL {server.version} has no TID Range Scan (14+): "
                            "large tables are copied in one stream each"
                        )
                    )
                    split_larger_than = None
                # Where split tables' bytes lie (TOAST included), to balance their ranges.
                weights = {}
                for t in described:
                    ranges = chunk_count(t, split_larger_than=split_larger_than, jobs=jobs)
                    if t.has_data and ranges > 1:
                        weights[t.key] = await sample_page_weights(
                            conn, t, pages=sample_pages(ranges)
                        )
                chunks = plan_chunks(
                    described, split_larger_than=split_larger_than, jobs=jobs, weights=weights
                )
                order = restore_order(described)

                # Taken just before anything is written, so a run that fails earlier leaves no
                # trace; held until the backup has its final name.
                BackupDirectory.prepare_parent(output)
                lock = OutputLock(output)
                lock.acquire()
                backup = BackupDirectory.create(output, name)
                emit(
                    DumpStarted(
                        snapshot_id=coordinator.snapshot_id,
                        target=str(describe_target(dsn)),
                        tables=sum(1 for t in described if t.has_data),
                        chunks=len(chunks),
                        est_rows=sum(c.est_rows for c in chunks),
                        jobs=jobs,
                        path=str(backup.path),
                    )
                )
                coordinator_lost = anyio.Event()
                conn.add_termination_listener(lambda _: coordinator_lost.set())
                copying = _CopyContext(
                    coordinator.snapshot_id, catalog.types, backup, compression, emit
                )
                stored = await _copy_all(
                    dsn, chunks, copying, jobs, coordinator_lost, statement_timeout
                )
                # The data is only consistent if the snapshot outlived every import.
                await coordinator.ensure_alive()
                finished_at = datetime.now(UTC)
                snapshot_held = time.monotonic() - coordinator.began
                body = _manifest_body(
                    catalog=catalog,
                    chunks=chunks,
                    stored=stored,
                    sequences=sequences,
                    order=order,
                    snapshot_id=coordinator.snapshot_id,
                    snapshot_taken_at=coordinator.taken_at,
                    started_at=started_at,
                    finished_at=finished_at,
                    compression=compression,
                    skipped=skipped,
                )
                files = [(s.path, s.sha256) for c in chunks for s in [stored[c.stem]]]
                backup.write_small_file(manifest.SUMS_NAME, manifest.sha256sums(sorted(files)))
                backup.write_small_file(manifest.MANIFEST_NAME, manifest.serialize(body))
                await _end_snapshot(conn)
                if verify_output:
                    await _verify_written(backup.path, emit)
                # From the rename on the backup is complete: a signal or the deadline
                # arriving now must not undo it.
                with anyio.CancelScope(shield=True):
                    final_path = await anyio.to_thread.run_sync(backup.commit)
                    finished = True
                    if keep is not None:  # under our lock, after this backup is complete
                        pruned = await anyio.to_thread.run_sync(
                            lambda: prune(output, keep=keep, locked=True)
                        )
                        for path in pruned.removed:
                            emit(Notice(f"removed old backup {path} (--keep {keep})"))
            except asyncpg.QueryCanceledError as exc:
                raise _cancelled_by_server(exc, "a catalog query or lock") from exc
            except asyncpg.PostgresError as exc:
                # Catalog reads and locks failing for a reason not translated nearer the cause.
                raise DumpFailed(
                    f"server error: {exc}", hint=getattr(exc, "hint", None) or "see the server log"
                ) from exc
            except (asyncpg.ConnectionDoesNotExistError, ConnectionError) as exc:
                raise snapshot_lost() from exc  # the coordinator's own connection died
        except BaseException:
            if backup is not None and not finished:
                _abandon(backup, keep_partial, emit)
            raise
        finally:
            if lock is not None:
                lock.release()
            if not conn.is_closed():
                conn.terminate()
    if not finished:
        raise TimeLimitExceeded(
            f"the dump did not finish within --max-duration {max_duration:g}s and was "
            "cancelled" + ("; the incomplete backup was kept" if keep_partial else ""),
            hint="raise --max-duration, dump fewer tables (-t/-T), or use more -j",
        )

    results = _table_results(described, chunks, stored)
    result = DumpResult(
        path=final_path,
        snapshot_id=coordinator.snapshot_id,
        tables=results,
        rows=sum(r.rows for r in results),
        bytes=sum(r.bytes for r in results),
        stored_bytes=sum(r.stored_bytes for r in results),
        files=len(stored),
        seconds=time.monotonic() - started,
        snapshot_held_seconds=snapshot_held,
        skipped=tuple(skipped),
        verified=verify_output,
        manifest=body,
    )
    emit(
        DumpFinished(
            path=str(final_path),
            tables=len(results),
            rows=result.rows,
            bytes=result.bytes,
            stored_bytes=result.stored_bytes,
            seconds=result.seconds,
            snapshot_held_seconds=snapshot_held,
        )
    )
    return result


async def _verify_written(path: Path, emit: EventCallback) -> None:
    """Read back the whole ``.partial`` backup as ``asyncsnap verify`` would, before the
    rename makes it complete. The files come back through the page cache, so this checks
    what the dump wrote (compression, hashes, counts, JSON), not the disk's media."""
    started = time.monotonic()
    result = await anyio.to_thread.run_sync(
        lambda: verify(
            path,
            in_progress=True,
            # A signal or --max-duration stops the check between files.
            on_file=lambda _: anyio.from_thread.check_cancelled(),
        )
    )
    if not result.ok:
        problems = some_names([str(p) for p in result.problems], limit=3, sep="; ")
        raise VerificationFailed(
            f"the backup failed its own verification: {problems}",
            hint="nothing was kept; check the disk and the filesystem, then run the dump again",
        )
    emit(
        Notice(
            f"verified {result.files} files, {result.rows} rows "
            f"in {time.monotonic() - started:.2f}s"
        )
    )


def _check_arguments(
    *,
    output: str | Path,
    jobs: int,
    tables: Iterable[str],
    exclude_tables: Iterable[str],
    schemas: Iterable[str],
    exclude_schemas: Iterable[str],
    compression: str,
    name: str | None,
    lock_timeout: float,
    statement_timeout: float,
    max_duration: float | None,
    keep: int | None,
) -> tuple[Selection, Path, str]:
    """Everything that can be wrong before connecting: fail fast, write nothing."""
    if not isinstance(jobs, int) or jobs < 1:
        raise UsageError(f"-j must be at least 1, not {jobs!r}", hint="try -j 2")
    if compression not in COMPRESSIONS:
        raise UsageError(f"unknown compression {compression!r}", hint="use zstd, gzip or none")
    if lock_timeout < 0:
        raise UsageError("--lock-timeout cannot be negative", hint="0 waits forever")
    if statement_timeout < 0:
        raise UsageError("--statement-timeout cannot be negative", hint="0 means no limit")
    if max_duration is not None and max_duration <= 0:
        raise UsageError("--max-duration must be positive", hint="e.g. --max-duration 3600")
    if keep is not None and keep < 1:
        raise UsageError(f"--keep must be at least 1, not {keep}", hint="--keep 7 keeps a week")
    selection = Selection.from_strings(
        include=tables, exclude=exclude_tables, schemas=schemas, exclude_schemas=exclude_schemas
    )
    output_dir = Path(output).absolute()
    name = name or default_backup_name()
    BackupDirectory.check_free(output_dir, name)  # create() checks again later
    return selection, output_dir, name


def _readable_only(
    tables: list[Table], skip_unreadable: bool, emit: EventCallback
) -> tuple[list[Table], list[Skipped]]:
    """The tables the role can read. Unreadable ones are an error naming them all, before
    anything is written, or with ``skip_unreadable`` left out with a notice each."""
    unreadable = [t for t in tables if t.has_data and not t.readable]
    if not unreadable:
        return tables, []
    names = [t.qualified for t in unreadable]
    if not skip_unreadable:
        raise PermissionDenied(
            f"permission denied for {'table' if len(names) == 1 else 'tables'} {some_names(names)}",
            hint="GRANT SELECT to this role, leave them out with -T, or --skip-unreadable",
        )
    readable = [t for t in tables if t.readable or not t.has_data]
    if not any(t.has_data for t in readable):
        raise PermissionDenied(
            f"permission denied for every selected table ({some_names(names)})",
            hint="GRANT SELECT to this role, or check -t/-n",
        )
    for table in unreadable:
        emit(Notice(f"skipped table {table.qualified}: permission denied"))
    return readable, [Skipped("table", t.schema, t.name, "permission denied") for t in unreadable]


def _abandon(backup: BackupDirectory, keep_partial: bool, emit: EventCallback) -> None:
    """After a failure: remove ``<name>.partial``, or with ``keep_partial`` keep the files
    written so far, but never a manifest, so it cannot pass for a backup."""
    if not keep_partial:
        backup.remove()
        return
    for small in (manifest.MANIFEST_NAME, manifest.SUMS_NAME):
        (backup.path / small).unlink(missing_ok=True)
    emit(Notice(f"kept the incomplete backup at {backup.path} (--keep-partial)"))


def _cancelled_by_server(exc: asyncpg.QueryCanceledError, doing: str) -> DumpFailed:
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


async def _end_snapshot(conn: asyncpg.Connection) -> None:
    # Read-only: ROLLBACK and COMMIT are the same; ROLLBACK says so.
    await conn.execute("ROLLBACK")
    await conn.close()


@dataclass(frozen=True)
class _CopyContext:
    """What every chunk's copy needs besides its connection."""

    snapshot_id: str
    types: dict[int, TypeInfo]
    backup: BackupDirectory
    compression: Compression
    emit: EventCallback


async def _copy_all(
    dsn: str | None,
    chunks: Sequence[Chunk],
    ctx: _CopyContext,
    jobs: int,
    coordinator_lost: anyio.Event,
    statement_timeout: float,
) -> dict[str, StoredFile]:
    """Copy every chunk with ``jobs`` connections; returns the stored files by stem."""
    workers = max(1, min(jobs, len(chunks)))
    pool = await create_pool(dsn, size=workers, statement_timeout=statement_timeout)
    stored: dict[str, StoredFile] = {}
    queue: Iterator[Chunk] = iter(chunks)  # shared: each worker takes the next largest

    async def worker() -> None:
        for chunk in queue:
            stored[chunk.stem] = await _copy_chunk_with_retries(pool, chunk, ctx)

    async def watch_coordinator() -> None:
        # Fail fast: once the snapshot holder is gone no further chunk can import it.
        await coordinator_lost.wait()
        raise snapshot_lost()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_coordinator)
            async with anyio.create_task_group() as copying:
                for _ in range(workers):
                    copying.start_soon(worker)
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise most_telling(group) from None
    finally:
        await _close_pool(pool)
    return stored


# A chunk whose connection dies (backend terminated, network reset) is copied again on a
# fresh connection that imports the same snapshot, at most this many times in all.
CHUNK_ATTEMPTS = 3
_RETRY_PAUSE = 0.5


class _ConnectionLost(DumpFailed):
    """A worker's connection died mid-chunk; the chunk may be retried."""


async def _copy_chunk_with_retries(
    pool: asyncpg.Pool, chunk: Chunk, ctx: _CopyContext
) -> StoredFile:
    for attempt in range(1, CHUNK_ATTEMPTS + 1):
        try:
            # Acquired per chunk: the pool replaces a connection that died.
            async with pool.acquire() as conn:
                return await _copy_chunk(conn, chunk, ctx)
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
            await anyio.sleep(_RETRY_PAUSE * attempt)
    raise AssertionError("unreachable")


# How long a failed or cancelled dump waits for the server to cancel its COPYs and for
# the connections to close cleanly before it cuts them.
_CLOSE_GRACE = 5.0


async def _close_pool(pool: asyncpg.Pool) -> None:
    """Close the pool, shielded from cancellation: cancelled COPYs get a cancel request
    from asyncpg; closing waits for the server to acknowledge it, so no backend keeps
    streaming into a closed socket. Terminate if that takes too long."""
    with anyio.CancelScope(shield=True):
        with anyio.move_on_after(_CLOSE_GRACE) as grace:
            await pool.close()
        if grace.cancelled_caught:
            pool.terminate()


async def _copy_chunk(conn: asyncpg.Connection, chunk: Chunk, ctx: _CopyContext) -> StoredFile:
    """Stream one chunk into its file inside a transaction that imports the snapshot."""
    table, emit = chunk.table, ctx.emit
    emit(ChunkStarted(label=chunk.label, est_rows=chunk.est_rows))
    started = time.monotonic()
    writer = ctx.backup.data_writer(chunk.stem, ctx.compression)
    next_report = started + PROGRESS_INTERVAL

    async def sink(data: bytes) -> None:
        # Runs between two reads of the socket: asyncpg pauses reading until it
        # returns, so a slow disk slows the server down instead of filling memory.
        nonlocal next_report
        writer.write(data)
        now = time.monotonic()
        if now >= next_report:
            next_report = now + PROGRESS_INTERVAL
            emit(ChunkProgress(label=chunk.label, rows=writer.rows, bytes=writer.raw_bytes))

    try:
        try:
            async with snapshot_transaction(conn, ctx.snapshot_id):
                # pg_dump's guard: if someone queued an ACCESS EXCLUSIVE lock behind the
                # coordinator's ACCESS SHARE, waiting here would deadlock undetected
                # (we wait for them, they wait for the coordinator, which waits for us).
                await conn.execute(
                    f"LOCK TABLE ONLY {sql_name(table.schema, table.name)} "
                    "IN ACCESS SHARE MODE NOWAIT"
                )
                status = await conn.copy_from_query(
                    select_rows_sql(table, ctx.types, chunk.pages),
                    output=sink,
                    **COPY_OPTIONS_KWARGS,
                )
        except asyncpg.LockNotAvailableError as exc:
            raise LockTimeout(
                f"table {table.qualified} has a lock request waiting behind the dump",
                hint="someone asked for an ACCESS EXCLUSIVE lock (ALTER, DROP, VACUUM FULL?) "
                "after the dump started; run the dump when it is done",
            ) from exc
        except asyncpg.QueryCanceledError as exc:
            raise _cancelled_by_server(exc, f"copying {chunk.label}") from exc
        except asyncpg.InsufficientPrivilegeError as exc:
            raise PermissionDenied(
                f"permission denied reading {table.qualified}: {exc.message}",
                hint="GRANT SELECT to this role, or leave the table out with -T",
            ) from exc
        except (
            asyncpg.ConnectionDoesNotExistError,
            asyncpg.AdminShutdownError,
            ConnectionError,
        ) as exc:
            raise _ConnectionLost(
                f"lost the connection while copying {chunk.label}: {exc}",
                hint="check the server log; nothing was kept",
            ) from exc
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if _connection_gone(conn):  # e.g. the transaction's exit after the backend died
                raise _ConnectionLost(
                    f"lost the connection while copying {chunk.label}: {exc}",
                    hint="check the server log; nothing was kept",
                ) from exc
            if isinstance(exc, asyncpg.InterfaceError):
                raise
            raise DumpFailed(
                f"server error while copying {chunk.label}: {exc}",
                hint=getattr(exc, "hint", None) or "see the server log",
            ) from exc
        expected = _copy_count(status)
        if writer.rows != expected or (writer.raw_bytes and writer.last_byte != b"\n"):
            raise DataIntegrityError(
                f"{chunk.label}: the server sent {expected} rows but {writer.rows} lines arrived",
                hint="a value broke the one-row-per-line rule; please report this as a bug",
            )
        writer.close_data()
        stored = await anyio.to_thread.run_sync(writer.sync_and_rename)
    except BaseException:
        writer.discard()
        raise
    stored = replace(stored, seconds=time.monotonic() - started)
    emit(
        ChunkFinished(
            label=chunk.label,
            rows=stored.rows,
            bytes=stored.bytes,
            stored_bytes=stored.stored_bytes,
            seconds=stored.seconds,
        )
    )
    return stored


def _connection_gone(conn: asyncpg.Connection) -> bool:
    """Whether ``conn`` died. The pool detaches a proxy whose connection was lost, and
    then even ``is_closed()`` raises."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


def _copy_count(status: str) -> int:
    """The row count from a ``COPY n`` command tag."""
    word, _, count = status.partition(" ")
    if word != "COPY" or not count.isdigit():
        raise DumpFailed(f"unexpected COPY status {status!r} from the server")
    return int(count)


def _manifest_body(
    *,
    catalog: Catalog,
    chunks: Sequence[Chunk],
    stored: dict[str, StoredFile],
    sequences: Sequence[SequenceInfo],
    order: RestoreOrder,
    snapshot_id: str,
    snapshot_taken_at: datetime,
    started_at: datetime,
    finished_at: datetime,
    compression: Compression,
    skipped: Sequence[Skipped],
) -> dict[str, Any]:
    server = catalog.server
    files_by_table: dict[tuple[str, str], list[tuple[StoredFile, Chunk]]] = {}
    for chunk in sorted(chunks, key=lambda c: (c.table.key, c.index)):
        files_by_table.setdefault(chunk.table.key, []).append((stored[chunk.stem], chunk))

    def ref(key: tuple[str, str]) -> dict[str, str]:
        return {"schema": key[0], "name": key[1]}

    tables = []
    for t in sorted(catalog.tables, key=lambda t: t.key):
        encs = encodings(t, catalog.types)
        files = files_by_table.get(t.key, [])
        tables.append(
            {
                "schema": t.schema,
                "name": t.name,
                "kind": t.kind,
                "parent": ref(t.parent) if t.parent else None,
                "rows": sum(f.rows for f, _ in files),
                "columns": [
                    {
                        "name": c.name,
                        "type": c.type,
                        "encoding": encs[c.name],
                        "not_null": c.not_null,
                        "generated": c.generated,
                        "identity": c.identity,
                    }
                    for c in t.columns
                ],
                "primary_key": list(t.primary_key),
                "foreign_keys": [
                    {
                        "name": fk.name,
                        "columns": list(fk.columns),
                        "references": {
                            "schema": fk.ref_schema,
                            "name": fk.ref_table,
                            "columns": list(fk.ref_columns),
                        },
                        "deferrable": fk.deferrable,
                        "initially_deferred": fk.initially_deferred,
                    }
                    for fk in t.foreign_keys
                ],
                "files": [
                    {
                        "path": f.path,
                        "rows": f.rows,
                        "bytes": f.bytes,
                        "stored_bytes": f.stored_bytes,
                        "sha256": f.sha256,
                        "pages": list(chunk.pages) if chunk.pages is not None else None,
                    }
                    for f, chunk in files
                ],
            }
        )
    return {
        "format": manifest.FORMAT_NAME,
        "format_version": manifest.FORMAT_VERSION,
        "tool": {"name": "asyncsnap", "version": __version__},
        "started_at": _utc_iso(started_at),
        "finished_at": _utc_iso(finished_at),
        "snapshot": {"id": snapshot_id, "taken_at": _utc_iso(snapshot_taken_at)},
        "server": {
            "version": server.version,
            "version_num": server.version_num,
            "database": server.database,
            "host": server.host,
            "port": server.port,
            "user": server.user,
        },
        "settings": dict(RENDER_SETTINGS),
        "compression": compression,
        "tables": tables,
        "sequences": [
            {
                "schema": s.schema,
                "name": s.name,
                "table": ref(s.table),
                "column": s.column,
                "last_value": s.last_value,
                "is_called": s.is_called,
            }
            for s in sequences
        ],
        "skipped": [asdict(s) for s in skipped],
        "restore_order": {
            "levels": [[ref(k) for k in level] for level in order.levels],
            "cycles": [[ref(k) for k in cycle] for cycle in order.cycles],
            "self_referencing": [ref(k) for k in order.self_referencing],
        },
        "totals": {
            "tables": sum(1 for t in catalog.tables if t.has_data),
            "files": len(stored),
            "rows": sum(s.rows for s in stored.values()),
            "bytes": sum(s.bytes for s in stored.values()),
            "stored_bytes": sum(s.stored_bytes for s in stored.values()),
        },
    }


def _table_results(
    tables: Sequence[Table], chunks: Sequence[Chunk], stored: dict[str, StoredFile]
) -> list[TableResult]:
    results = []
    for t in sorted((t for t in tables if t.has_data), key=lambda t: t.key):
        mine = sorted((c for c in chunks if c.table.key == t.key), key=lambda c: c.index)
        files = [stored[c.stem] for c in mine]
        results.append(
            TableResult(
                schema=t.schema,
                name=t.name,
                rows=sum(f.rows for f in files),
                bytes=sum(f.bytes for f in files),
                stored_bytes=sum(f.stored_bytes for f in files),
                files=tuple(f.path for f in files),
                seconds=sum(f.seconds for f in files),
            )
        )
    return results
