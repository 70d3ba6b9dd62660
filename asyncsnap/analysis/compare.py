"""Whether a live database holds exactly a backup's rows: ``asyncsnap compare``.

Per table, the row count and the fingerprint (docs/format.md, "Row fingerprints") of the
backup, against the same two numbers of the database's table read in one exported
snapshot, exactly as a dump reads it: the same ``COPY``, the same native line encoder
(``rowcodec``), the same worker pool and page ranges (``copy``), with writers that keep
nothing but the count and the sum. One definition, one encoder: the lines whose sum is
taken are the lines a dump would have written, so equal numbers mean equal rows whatever
their physical order, and a type the encoder cannot render identically cannot make two
different tables look equal.

The backup's numbers come from its manifest (recorded by the dump since 0.8.0; the
manifest's own checksum covers them) or, for an older backup, from its files, read and
checked as ``verify`` reads them.

Why the client and not the server computes the database's side: the server can only
render the lines with ``to_json`` per row, which costs several times what ``COPY`` and
the native encoder cost (docs/format.md, "Which path a column takes"), and a second
renderer would be a second definition to keep byte-identical with the first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from ..catalog import (
    Table,
    describe_tables,
    list_sequences,
    list_tables,
    read_sequence_states,
    read_server_info,
    read_types,
)
from ..comparison import CompareResult, SequenceComparison, TableComparison
from ..connection import ConnectionSpec, ConnectParams, resolve
from ..copy import CopyContext, close_pool, copy_all
from ..errors import DumpFailed, UsageError, most_telling, server_error
from ..events import EventCallback
from ..fingerprint import RowFingerprint, combine
from ..format import Backup, BackupFile, BackupSequence, BackupTable, Compression
from ..jobs import LargeObjectsJob, WorkItem, cancelled_by_server
from ..plan import DEFAULT_SPLIT_LARGER_THAN, TID_RANGE_SCAN_VERSION, plan_chunks
from ..session import CONNECTION_LOST, Session, SessionPolicy
from ..snapshot import Coordinator, snapshot_lost
from ..storage.backup import DataFileReader, open_backup
from ..storage.files import CountingWriter, DataFileWriter, StoredFile

_LARGE_OBJECTS = ("", "large objects")  # the key of the large objects' numbers


def _file_numbers(backup: Backup, entry: BackupFile) -> tuple[int, str]:
    """A file's rows and fingerprint, read from the file (checked as ``verify`` checks)."""
    fingerprint = RowFingerprint()
    reader = DataFileReader(backup, entry)
    try:
        for block in reader:
            fingerprint.update(block)
        reader.finish()
    finally:
        reader.close()
    return fingerprint.rows, fingerprint.hexdigest()


def backup_numbers(backup: Backup, files: Sequence[BackupFile]) -> tuple[int, str, bool]:
    """Rows and fingerprint of some files of a backup: from the manifest when the dump
    recorded them, else read from the files. The last value says which (True: read)."""
    if all(f.fingerprint is not None for f in files):
        return (
            sum(f.rows for f in files),
            combine(f.fingerprint for f in files if f.fingerprint is not None),
            False,
        )
    numbers = [_file_numbers(backup, f) for f in files]
    return sum(r for r, _ in numbers), combine(f for _, f in numbers), True


def _column_difference(saved: BackupTable, live: Table) -> str:
    """How the live table's columns differ from the backup's (empty: they do not)."""
    before = [(c.name, c.type) for c in saved.columns]
    after = [(c.name, c.type) for c in live.columns]
    if before == after:
        return ""
    names_before, names_after = [n for n, _ in before], [n for n, _ in after]
    missing = [n for n in names_before if n not in names_after]
    extra = [n for n in names_after if n not in names_before]
    parts = []
    if missing:
        parts.append("no column " + ", ".join(missing))
    if extra:
        parts.append("extra column " + ", ".join(extra))
    retyped = [
        f"{n} is {dict(after)[n]}, was {t}"
        for n, t in before
        if n in dict(after) and dict(after)[n] != t
    ]
    parts += retyped
    if not parts:
        parts.append("columns in another order")
    return "; ".join(parts)


class _Counting:
    """The copy's target: every chunk gets a writer that keeps only counts and sums."""

    cheap_writers = True

    def data_writer(self, stem: str, compression: Compression) -> DataFileWriter:
        return CountingWriter(stem)


async def compare(
    backup_path: str | Path | Backup,
    dsn: str | ConnectionSpec | ConnectParams | None = None,
    *,
    jobs: int = 2,
    only: Collection[tuple[str, str]] | None = None,
    lock_timeout: float = 30.0,
    split_larger_than: int | None = DEFAULT_SPLIT_LARGER_THAN,
    identities: Sequence[Any] = (),
    on_event: EventCallback | None = None,
) -> CompareResult:
    """Compare a backup's tables, sequences and large objects with a live database.

    Every table of the backup that holds rows is looked up by schema and name in the
    database (``dsn``, resolved as for dump); tables of the database that the backup does
    not hold are not looked at (a backup of some tables compares with those).

    :param backup_path: a backup directory or its URL in an object store (or a backup
        already opened, ``open_backup``).
    :param only: compare only these tables (schema, name), the sequences they own and no
        large objects (``restore --compare`` after a restore of some tables).
    :param jobs: connections reading the database at once.
    :param lock_timeout: seconds to wait for each table's ACCESS SHARE lock.
    :param split_larger_than: read tables larger than this many bytes in page ranges on
        several connections, as dump does.
    :param identities: age secret keys, needed only for an encrypted backup whose manifest
        has no fingerprints (before 0.8.0).
    :raises VerificationFailed: a file read for its fingerprint does not match the manifest.
    :raises AsyncsnapError: connection, permission and lock failures, as for dump.

    Example::

        result = anyio.run(lambda: asyncsnap.compare("backups/b1", "postgresql:///shop"))
        print(result.equal, [t.qualified for t in result.differences])
    """
    if jobs < 1:
        raise UsageError(f"-j must be at least 1, not {jobs!r}", hint="try -j 2")
    started = time.monotonic()
    emit: EventCallback = on_event or (lambda event: None)
    backup = (
        backup_path
        if isinstance(backup_path, Backup)
        else await anyio.to_thread.run_sync(open_backup, backup_path)
    )
    if identities:
        backup = replace(backup, identities=tuple(identities))
    tables = [t for t in backup.tables if t.has_data and (only is None or t.key in only)]
    sequences = [
        s for s in backup.sequences if only is None or (s.table is not None and s.table in only)
    ]
    with_large_objects = backup.large_objects is not None and only is None
    recorded = all(f.fingerprint is not None for t in tables for f in t.files)
    if not recorded and backup.encryption and not backup.identities:
        raise UsageError(
            f"{backup.path} has no fingerprints in its manifest (dumped without "
            "--fingerprints) and is encrypted: its files must be read",
            hint="give the matching secret key file with --identity",
        )

    params = dsn if isinstance(dsn, ConnectParams) else resolve(dsn)
    sides = _Sides(backup, tables, sequences, with_large_objects)
    database = await sides.run(params, jobs, lock_timeout, split_larger_than, emit)
    results, large_objects, read_files = sides.judge(database)
    return CompareResult(
        backup=backup.path,
        snapshot_id=database.snapshot_id,
        tables=tuple(results),
        sequences=tuple(database.sequences),
        large_objects=large_objects,
        seconds=time.monotonic() - started,
        fingerprints_from="files" if read_files else "manifest",
        not_compared=tuple(s.describe() for s in backup.skipped),
    )


class _Sides:
    """The two sides of a comparison: the backup's numbers (each table's rows and
    fingerprint, from the manifest or its files) and the database's (read in one
    snapshot, as a dump reads), then the judgement."""

    def __init__(
        self,
        backup: Backup,
        tables: list[BackupTable],
        sequences: list[BackupSequence],
        with_large_objects: bool,
    ) -> None:
        self.backup, self.tables, self.sequences = backup, tables, sequences
        self.with_large_objects = with_large_objects
        self.expected: dict[tuple[str, str], tuple[int, str, bool]] = {}
        self.stop = threading.Event()  # the database's side failed: stop between files

    def backup_side(self) -> None:
        backup = self.backup
        for saved in self.tables:
            if self.stop.is_set():
                return
            self.expected[saved.key] = backup_numbers(backup, saved.files)
        if self.with_large_objects and not self.stop.is_set():
            assert backup.large_objects is not None
            self.expected[_LARGE_OBJECTS] = backup_numbers(backup, backup.large_objects.files)

    async def run(
        self,
        params: ConnectParams,
        jobs: int,
        lock_timeout: float,
        split_larger_than: int | None,
        emit: EventCallback,
    ) -> _DatabaseSide:
        """Both sides at once. The backup's reads and hashes every file of a backup
        without fingerprints (dump without --fingerprints), about as long as reading the
        database; both mostly wait in native code without the GIL."""
        found: list[_DatabaseSide] = []
        try:
            async with anyio.create_task_group() as sides:
                sides.start_soon(
                    partial(anyio.to_thread.run_sync, self.backup_side, abandon_on_cancel=True)
                )
                try:
                    found.append(
                        await _database_side(
                            params,
                            self.backup,
                            self.tables,
                            self.sequences,
                            self.with_large_objects,
                            jobs,
                            lock_timeout,
                            split_larger_than,
                            emit,
                        )
                    )
                except BaseException:
                    self.stop.set()
                    raise
        except BaseExceptionGroup as group:
            raise most_telling(group) from None
        return found[0]

    def judge(
        self, database: _DatabaseSide
    ) -> tuple[list[TableComparison], TableComparison | None, bool]:
        """Each table equal or different, the large objects', and whether any file of
        the backup had to be read."""
        stored = database.stored
        results: list[TableComparison] = []
        read_files = False
        chunks_by_table: dict[tuple[str, str], list[StoredFile]] = {}
        for item in database.items:
            if not isinstance(item, LargeObjectsJob):
                chunks_by_table.setdefault(item.table.key, []).append(stored[item.stem])
        for saved in self.tables:
            if saved.key in database.early:
                results.append(database.early[saved.key])
                continue
            rows, fingerprint, from_files = self.expected[saved.key]
            read_files |= from_files
            live_files = chunks_by_table.get(saved.key, [])
            live_rows = sum(f.rows for f in live_files)
            live_fingerprint = combine(f.fingerprint or "" for f in live_files)
            same = rows == live_rows and fingerprint == live_fingerprint
            results.append(
                TableComparison(
                    saved.schema,
                    saved.name,
                    "equal" if same else "different",
                    backup_rows=rows,
                    database_rows=live_rows,
                    backup_fingerprint=fingerprint,
                    database_fingerprint=live_fingerprint,
                )
            )
        if not self.with_large_objects:
            return results, None, read_files
        rows, fingerprint, from_files = self.expected[_LARGE_OBJECTS]
        live_lo = stored[LargeObjectsJob.stem]
        same = (rows, fingerprint) == (live_lo.rows, live_lo.fingerprint)
        large_objects = TableComparison(
            "",
            "large objects",
            "equal" if same else "different",
            backup_rows=rows,
            database_rows=live_lo.rows,
            backup_fingerprint=fingerprint,
            database_fingerprint=live_lo.fingerprint,
        )
        return results, large_objects, read_files | from_files


@dataclass(frozen=True)
class _DatabaseSide:
    items: list[WorkItem]  # what was read: chunks of tables, the large objects
    stored: dict[str, StoredFile]  # per item's stem: its rows and fingerprint
    early: dict[tuple[str, str], TableComparison]  # decided unread: missing, columns differ
    sequences: list[SequenceComparison]
    snapshot_id: str


async def _database_side(
    params: ConnectParams,
    backup: Backup,
    tables: Sequence[BackupTable],
    sequences: Sequence[BackupSequence],
    with_large_objects: bool,
    jobs: int,
    lock_timeout: float,
    split_larger_than: int | None,
    emit: EventCallback,
) -> _DatabaseSide:
    """The database's side of ``compare``: the tables read in one exported snapshot,
    exactly as a dump reads them, into writers that keep only counts and fingerprints."""
    session = Session(params, SessionPolicy(render=backup.settings))
    conn = await session.connect()
    pool: asyncpg.Pool | None = None
    try:
        try:
            coordinator = await Coordinator.begin(conn)
            server = await read_server_info(conn)
            live = {t.key: t for t in await list_tables(conn, server) if t.is_table}
            found = [live[t.key] for t in tables if t.key in live]
            await coordinator.lock(found, lock_timeout=lock_timeout)
            described = {t.key: t for t in await describe_tables(conn, found)}
            types = await read_types(conn)
            sequence_states = await _sequence_states(conn, sequences)
            comparable: dict[tuple[str, str], Table] = {}
            early: dict[tuple[str, str], TableComparison] = {}
            for saved in tables:
                table = described.get(saved.key)
                if table is None:
                    early[saved.key] = TableComparison(
                        saved.schema, saved.name, "missing", backup_rows=saved.rows
                    )
                    continue
                difference = _column_difference(saved, table)
                if difference:
                    early[saved.key] = TableComparison(
                        saved.schema,
                        saved.name,
                        "columns differ",
                        backup_rows=saved.rows,
                        detail=difference,
                    )
                    continue
                comparable[saved.key] = table
            split = split_larger_than if server.version_num >= TID_RANGE_SCAN_VERSION else None
            items: list[WorkItem] = list(
                plan_chunks(comparable.values(), split_larger_than=split, jobs=jobs)
            )
            if with_large_objects:
                assert backup.large_objects is not None
                items.insert(
                    0,
                    LargeObjectsJob(est_rows=backup.large_objects.objects, readable_only=False),
                )
            stored: dict[str, StoredFile] = {}
            if items:
                pool = await session.create_pool(max(1, min(jobs, len(items))))
                lost = anyio.Event()
                conn.add_termination_listener(lambda _: lost.set())
                ctx = CopyContext(coordinator.snapshot_id, types, _Counting(), "none", emit)
                stored = await copy_all(pool, items, ctx, lost)
                await close_pool(pool)
                pool = None
            await coordinator.ensure_alive()
        except asyncpg.QueryCanceledError as exc:
            raise cancelled_by_server(exc, "a catalog query or lock") from exc
        except CONNECTION_LOST as exc:
            raise snapshot_lost() from exc
        except asyncpg.PostgresError as exc:
            message, hint = server_error(exc, "compare fewer tables at once (-t/-T)")
            raise DumpFailed(f"server error: {message}", hint=hint) from exc
    finally:
        if pool is not None:
            await close_pool(pool)
        if not conn.is_closed():
            conn.terminate()

    return _DatabaseSide(items, stored, early, sequence_states, coordinator.snapshot_id)


async def _sequence_states(
    conn: asyncpg.Connection, sequences: Sequence[BackupSequence]
) -> list[SequenceComparison]:
    """The backup's sequences against the database's, read in the snapshot."""
    if not sequences:
        return []
    live = {s.key: s for s in await list_sequences(conn)}
    present = [live[s.key] for s in sequences if s.key in live]
    states = await read_sequence_states(conn, present)
    found = []
    for s in sequences:
        info = live.get(s.key)
        found.append(
            SequenceComparison(
                s.schema,
                s.name,
                backup=(s.last_value, s.is_called),
                database=None if info is None else states[info.oid],
            )
        )
    return found
