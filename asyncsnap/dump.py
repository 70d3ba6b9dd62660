"""The dump: every selected table, read at one moment, to NDJSON files and a manifest.

Phases: *snapshot* (the coordinator exports a snapshot, reads the catalog in it, decides
what the backup holds (``inventory``), locks the tables, and checks that none changed
between the snapshot and its lock); *copy* (a pool of ``jobs`` connections copies chunks,
largest first, each importing the snapshot: ``copy.py``); *seal* (SHA256SUMS, the
manifest, the rename from ``<name>.partial`` to ``<name>``). Any failure removes the
``.partial`` directory: nothing half-done is left looking done.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import asyncpg

from . import format as manifest
from . import schema
from .catalog import (
    Catalog,
    ServerInfo,
    Table,
    default_sequences,
    describe_tables,
    list_sequences,
    list_tables,
    read_lock_capacity,
    read_sequence_states,
    read_server_info,
    read_types,
    sample_page_weights,
)
from .catalog import Sequence as SequenceState
from .cluster import BackgroundCluster, ClusterAddress
from .connection import ConnectionSpec, ConnectParams, resolve
from .copy import CopyContext, close_pool, copy_all
from .database import read_properties
from .encode.render import encodings
from .errors import (
    DumpFailed,
    SnapshotLost,
    StoreFailed,
    TimeLimitExceeded,
    UsageError,
    VerificationFailed,
    most_telling,
    server_error,
    some_names,
)
from .events import DumpFinished, DumpStarted, EventCallback, Notice
from .format import (
    COMPRESSIONS,
    RENDER_SETTINGS,
    SCHEMA_ARCHIVE_PATH,
    SCHEMA_SQL_PATH,
    BackupColumn,
    BackupForeignKey,
    BackupLargeObjects,
    BackupSchema,
    BackupSequence,
    BackupTable,
    Compression,
    DatabaseProperties,
    Skipped,
)
from .inventory import Inventory, LargeObjectCounts, take_inventory
from .jobs import LargeObjectsJob, WorkItem, cancelled_by_server
from .largeobjects import count_large_objects
from .patterns import Selection
from .plan import (
    DEFAULT_SPLIT_LARGER_THAN,
    TID_RANGE_SCAN_VERSION,
    Chunk,
    RestoreOrder,
    chunk_count,
    plan_chunks,
    restore_order,
    sample_pages,
)
from .prune import prune
from .session import CONNECTION_LOST, Session, SessionPolicy
from .slot import SlotKeeper, check_publication_name, check_slot_name
from .snapshot import (
    Coordinator,
    changed_since_snapshot,
    locks_fit_together,
    snapshot_lost,
    until_unchanged,
)
from .storage.encryption import parse_recipients
from .storage.files import (
    BackupDirectory,
    BackupTarget,
    OutputLock,
    StoredFile,
    validate_backup_name,
    write_content_file,
)
from .storage.location import backup_location
from .storage.output import (
    abandon_target,
    claim_target,
    default_backup_name,
    file_entry,
    open_store_output,
    utc_iso,
)
from .storage.s3 import S3Store, StoreUrl
from .text import count
from .verify import verify_backup
from .version import __version__

DEFAULT_LOCK_TIMEOUT = 30.0


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
    wall_seconds: float = 0.0  # from its first file's start to its last file's end


@dataclass(frozen=True)
class DumpResult:
    """What ``dump`` did. The CLI renders it; tests assert on it."""

    path: Path | str  # the finished backup directory, or its URL in an object store
    snapshot_id: str
    # (out of the repr, as the manifest: asyncio.run reprs its main task's result as it
    # ends, on Python 3.11, twice; ten thousand tables' would be megabytes of text)
    tables: list[TableResult] = field(repr=False)
    rows: int
    bytes: int
    stored_bytes: int
    files: int
    seconds: float
    snapshot_held_seconds: float  # how long VACUUM was held back on the server
    skipped: tuple[Skipped, ...] = field(repr=False)  # selected but not in the backup, and why
    schema: BackupSchema | None  # None: a data-only backup (--no-schema)
    verified: bool  # every file was read back and checked before the rename (--verify)
    large_objects: int = 0  # objects written
    snapshots: int = 1  # snapshots taken: more than one when a table changed under the first
    written: manifest.Manifest | None = field(default=None, repr=False)  # the manifest
    slot: manifest.SlotInfo | None = None  # dump --slot: where increments start

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest's body as written, built when asked for (for ten thousand tables
        the dicts take tens of MB)."""
        return self.written.to_json() if self.written is not None else {}


@dataclass
class _Planned:
    """What the snapshot phase decided: everything the copy and seal phases need."""

    coordinator: Coordinator
    catalog: Catalog
    inventory: Inventory
    sequences: list[SequenceState]
    chunks: list[Chunk]
    items: list[WorkItem]
    order: RestoreOrder
    database: DatabaseProperties | None = None  # the database's own (restore --create)
    # Locked only after pg_dump has taken the schema (``snapshot.locks_fit_together``);
    # the lock table's size then, for the notice.
    schema_first: bool = False
    lock_capacity: int = 0
    slot: manifest.SlotInfo | None = None  # dump --slot: the slot whose start this is


async def dump(
    dsn: str | ConnectionSpec | None = None,
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
    enable_row_security: bool = False,
    large_objects: bool | None = None,
    unlogged_table_data: bool = True,
    keep: int | None = None,
    keep_partial: bool = False,
    verify_output: bool = False,
    with_schema: bool = True,
    encrypt_to: Sequence[str] = (),
    fingerprints: bool = False,
    slot: str | None = None,
    publication: str | None = None,
    cluster: str | None = None,
    on_event: EventCallback | None = None,
) -> DumpResult:
    """Export the selected tables at one moment into ``<output>/<name>``.

    :param dsn: connection string (URI, libpq key/value with ``service=`` resolved, or a
        database name), or a ``ConnectionSpec`` (a string with -h/-p/-U style overrides);
        ``None`` uses ``$DATABASE_URL``, ``./.env``, then libpq's ``PG*`` variables and
        ``~/.pgpass``.
    :param output: directory that receives the backup directory (created if missing), or
        an object store prefix (``s3://bucket/prefix``; see ``asyncsnap.bucket``) that
        receives ``<prefix>/<name>/``, streamed there with no local copy.
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
    :param skip_unreadable: leave out tables, sequences and large objects the role may not
        SELECT (a notice each, listed under ``skipped`` in the manifest) instead of failing.
    :param enable_row_security: read tables with row-level security as this role sees
        them (pg_dump's ``--enable-row-security``), marked ``row_security`` in the
        manifest; without it such a table fails the dump, naming it.
    :param large_objects: dump large objects (``True``), not (``False``), or ``None``:
        unless a ``tables`` or ``schemas`` filter is given, as pg_dump does.
    :param unlogged_table_data: ``False`` leaves unlogged tables' rows out (named in
        ``skipped``), as pg_dump's ``--no-unlogged-table-data``.
    :param keep: after success, keep only the ``keep`` newest complete backups in ``output``
        (see ``asyncsnap.prune``), and in a store remove abandoned dumps; ``None`` keeps
        everything.
    :param keep_partial: on failure or cancellation leave ``<name>.partial`` with the files
        finished so far (never a manifest) instead of removing it, for inspection.
    :param verify_output: before the backup gets its final name, read every file back and
        check it as ``asyncsnap.verify`` does; a problem fails the dump
        (``VerificationFailed``) and the backup is not kept.
    :param with_schema: take the schema with pg_dump in the same snapshot (see
        ``asyncsnap.schema``); ``False`` writes a data-only backup, marked so in the manifest.
    :param fingerprints: record each data file's row fingerprint in the manifest (see
        docs/format.md "Row fingerprints"), so that ``compare`` reads no file and ``diff``
        can skip tables whose rows are the same; costs the dump a SHA-256 of every line
        (1.12 of the time on pgbench scale 50, measured), hence not by default.
    :param slot: create the logical replication slot of this name, and dump in the
        snapshot that is its start (``asyncsnap.slot``): the backup an incremental one can
        follow. The manifest records the slot, its publication and its consistent LSN.
        Needs ``wal_level = logical``, a role with REPLICATION and psycopg 3
        (``asyncsnap[incremental]``).
    :param publication: with ``slot``, the existing publication to decode with (checked,
        never changed); without it one named like the slot is created for the tables.
    :param cluster: copy the chunks as tasks on a Dask cluster (``asyncsnap.cluster``):
        a scheduler's address (``tcp://host:8786``) or ``local:N`` (N worker processes
        started here); the workers write the files, so ``output`` is an object store or a
        directory they all share. Needs ``asyncsnap[cluster]``.
    :param on_event: called with progress events (see ``asyncsnap.events``).
    :raises ClientToolMissing: when no pg_dump can dump the server and ``with_schema``.
    :raises AsyncsnapError: a subclass with the exit code for every expected failure.

    Example::

        result = anyio.run(lambda: asyncsnap.dump("postgresql:///app", output="backups"))
        print(result.path, result.rows)
    """
    build = partial(
        DumpOptions.build,
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
        split_larger_than=split_larger_than,
        skip_unreadable=skip_unreadable,
        enable_row_security=enable_row_security,
        large_objects=large_objects,
        unlogged_table_data=unlogged_table_data,
        keep=keep,
        keep_partial=keep_partial,
        verify_output=verify_output,
        with_schema=with_schema,
        encrypt_to=encrypt_to,
        fingerprints=fingerprints,
        slot=slot,
        publication=publication,
        cluster=None if cluster is None else ClusterAddress.parse(cluster),
    )
    options = await anyio.to_thread.run_sync(build)  # reads key files, looks at -o
    return await _DumpRun(options, dsn, on_event or (lambda event: None)).run()


@dataclass(frozen=True)
class DumpOptions:
    """The dump's options, gathered and checked once (``build``); every step reads them
    here. ``output`` is absolute, and ``name`` is chosen for a local directory (a
    store's is chosen once the store is asked: ``_DumpRun.open_output``)."""

    output: Path | StoreUrl
    name: str | None
    jobs: int
    selection: Selection
    pg_dump_selection: list[str]  # the same patterns, as pg_dump's arguments
    compression: Compression
    lock_timeout: float
    statement_timeout: float
    max_duration: float | None
    split_larger_than: int | None
    skip_unreadable: bool
    enable_row_security: bool
    large_objects: bool | None
    unlogged_table_data: bool
    keep: int | None
    keep_partial: bool
    verify_output: bool
    with_schema: bool
    recipients: tuple[Any, ...]  # age recipients, parsed; empty: not encrypted
    fingerprints: bool
    slot: str | None
    publication: str | None
    cluster: ClusterAddress | None  # --cluster: the chunks as tasks on a Dask cluster

    @classmethod
    def build(
        cls,
        *,
        output: str | Path,
        tables: Iterable[str],
        exclude_tables: Iterable[str],
        schemas: Iterable[str],
        exclude_schemas: Iterable[str],
        name: str | None,
        encrypt_to: Sequence[str],
        **given: Any,
    ) -> DumpOptions:
        """Everything that can be wrong before connecting: fail fast, write nothing.

        :raises UsageError: naming the first option that is wrong.
        """
        recipients = tuple(parse_recipients(encrypt_to)) if encrypt_to else ()
        _check_numbers(**given)
        _check_slot(given["slot"], given["publication"])
        tables, exclude_tables = list(tables), list(exclude_tables)
        schemas, exclude_schemas = list(schemas), list(exclude_schemas)
        selection = Selection.from_strings(
            include=tables, exclude=exclude_tables, schemas=schemas, exclude_schemas=exclude_schemas
        )
        where = backup_location(output, role="-o")
        if isinstance(where, StoreUrl):
            if name is not None:
                validate_backup_name(name)
        else:
            where = where.absolute()
            name = name or default_backup_name(where)
            BackupDirectory.check_free(where, name)  # create() checks again later
        return cls(
            output=where,
            name=name,
            selection=selection,
            pg_dump_selection=schema.selection_arguments(
                tables, exclude_tables, schemas, exclude_schemas
            ),
            recipients=recipients,
            **given,
        )


def _check_slot(slot: str | None, publication: str | None) -> None:
    if slot is not None:
        check_slot_name(slot)
    if publication is not None:
        if slot is None:
            raise UsageError(
                "--publication is for a backup with a replication slot",
                hint="add --slot NAME, or leave out --publication",
            )
        check_publication_name(publication)


def _check_numbers(
    *,
    jobs: int,
    compression: str,
    lock_timeout: float,
    statement_timeout: float,
    max_duration: float | None,
    keep: int | None,
    **_: Any,
) -> None:
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


class _DumpRun:
    """One dump as a list of steps (``run``), each a call into its phase's module; the
    state the clean-up must undo lives here."""

    def __init__(
        self, options: DumpOptions, dsn: str | ConnectionSpec | None, emit: EventCallback
    ) -> None:
        self.o = options
        self.dsn = dsn
        self.emit = emit
        self.name = options.name
        self.store: S3Store | None = None
        self.conn: asyncpg.Connection | None = None
        self.pool: asyncpg.Pool | None = None
        self.target: BackupTarget | None = None
        self.lock: OutputLock | None = None
        # pg_dump's archive when it was taken before the locks (``_Planned.schema_first``).
        self.schema_archive: Path | None = None
        self.schema_failure: DumpFailed | None = None  # pg_dump's, until the check below
        self.session: Session | None = None
        self.slot: SlotKeeper | None = None  # dump --slot
        self.cluster: BackgroundCluster | None = None  # dump --cluster, started first
        self.finished = False
        self.started = time.monotonic()
        self.started_at = datetime.now(UTC)

    async def run(self) -> DumpResult:
        o = self.o
        await self.open_output()
        session = Session(
            resolve(self.dsn),
            SessionPolicy(
                statement_timeout=o.statement_timeout, row_security=o.enable_row_security
            ),
        )
        self.session = session
        # Everything until the backup is complete runs under the deadline (None: none); the
        # cancellation it causes takes the same clean-up path as Ctrl-C.
        with anyio.move_on_after(o.max_duration):
            return await self._run(session)
        raise TimeLimitExceeded(
            f"the dump did not finish within --max-duration {o.max_duration:g}s and was "
            "cancelled" + ("; the incomplete backup was kept" if o.keep_partial else ""),
            hint="raise --max-duration, dump fewer tables (-t/-T), or use more -j",
        )

    async def _run(self, session: Session) -> DumpResult:
        """The steps, under ``run``'s deadline (and with its cluster, if any)."""
        try:
            try:
                # The cluster (if any) starts first, in the background, while this connects
                # and plans; it is closed once the chunks are copied, before the manifest:
                # a failure's clean-up (below) then finds a local cluster's workers stopped
                # (none still writing into the directory it removes), and a signal while
                # the cluster closes comes before the backup is complete, never after.
                async with self.cluster_if_any(session):
                    self.conn = await session.connect()
                    planned, snapshots = await self.take_snapshot(session)
                    pg_dump = await self.pick_pg_dump(planned)
                    if self.target is None:
                        await self.claim_target()
                    stored, schema_files = await self.copy(session, planned, pg_dump)
                body = await self.seal(planned, stored, schema_files)
                final_path = await self.complete()
            except asyncpg.QueryCanceledError as exc:
                raise cancelled_by_server(exc, "a catalog query or lock") from exc
            except CONNECTION_LOST as exc:
                raise snapshot_lost() from exc  # the coordinator's own connection died
            except asyncpg.PostgresError as exc:
                # Catalog reads and locks failing for a reason not translated nearer
                # (a full lock table: other sessions' locks count too).
                message, hint = server_error(exc, "dump fewer tables at once (-t/-T/-n/-N)")
                raise DumpFailed(f"server error: {message}", hint=hint) from exc
        except BaseException:
            await self.clean_up()
            raise
        finally:
            if self.lock is not None:
                self.lock.release()
            if self.conn is not None and not self.conn.is_closed():
                self.conn.terminate()
        return self.result(final_path, planned, stored, schema_files, body, snapshots)

    @contextlib.asynccontextmanager
    async def cluster_if_any(self, session: Session) -> AsyncIterator[None]:
        """With ``--cluster``: its client opened in the background (``self.cluster``) for
        the body's duration, and closed after it, however it ends."""
        if self.o.cluster is None:
            yield
            return
        from .cluster import background_cluster

        async with background_cluster(self.o.cluster, session.params) as self.cluster:
            yield

    async def open_output(self) -> None:
        """A store's credentials, bucket and name, checked before connecting: a typo
        fails fast."""
        if isinstance(self.o.output, StoreUrl):
            self.store, self.name = await anyio.to_thread.run_sync(
                open_store_output, self.o.output, self.name
            )

    async def take_snapshot(self, session: Session) -> tuple[_Planned, int]:
        """Export a snapshot, decide what the backup holds, lock it, plan the chunks; again
        on a new snapshot if a table changed before its lock (``snapshot.until_unchanged``)."""
        assert self.conn is not None
        conn = self.conn
        if self.o.slot is not None:
            self.slot = SlotKeeper(session.params, self.o.slot, self.o.publication)
            await _prepare_slot(conn, self.o, self.slot)

        async def changed(planned: _Planned) -> list[str]:
            if self.pool is None:
                self.pool = await session.create_pool(max(1, min(self.o.jobs, len(planned.items))))
            tables = planned.inventory.tables
            found = await changed_since_snapshot(conn, self.pool.acquire(), tables)
            failure, self.schema_failure = self.schema_failure, None
            if failure is not None and not found:
                raise failure  # pg_dump failed, and not because a table changed
            return found

        async def plan() -> _Planned:
            planned = await _plan_in_snapshot(conn, self.o, self.emit, self.slot)
            if planned.schema_first:
                await self.schema_before_locks(session, planned)
            return planned

        planned, snapshots = await until_unchanged(conn, plan, changed, self.emit)
        for skip in planned.inventory.skipped:
            self.emit(Notice(f"not dumped: {skip.describe()}"))
        return planned, snapshots

    async def schema_before_locks(self, session: Session, planned: _Planned) -> None:
        """pg_dump's archive of the snapshot, then the snapshot's locks: for a selection
        whose locks and pg_dump's do not fit in the server's lock table at once. pg_dump
        holds its own locks while it reads, and ``until_unchanged`` then finds any table
        that changed between the snapshot and our locks (the archive is taken again on
        the next snapshot)."""
        tables = len(planned.inventory.tables)
        if self.schema_archive is None:  # once, not on each snapshot
            self.emit(
                Notice(
                    f"{count(tables, 'table')}: pg_dump takes the schema before the data is "
                    f"copied; the server's lock table ({planned.lock_capacity} locks, "
                    "max_locks_per_transaction x connections) cannot hold pg_dump's locks "
                    "beside the snapshot's"
                )
            )
        pg_dump = await self.pick_pg_dump(planned)
        assert pg_dump is not None  # schema_first implies with_schema
        if self.target is None:
            await self.claim_target()
        assert self.target is not None
        try:
            self.schema_archive = await _pg_dump_archive(
                pg_dump,
                session.params,
                planned.coordinator.snapshot_id,
                self.o.pg_dump_selection + _unreadable_excluded(planned.inventory),
                self.o.lock_timeout,
                self.target,
            )
        except SnapshotLost:
            raise
        except DumpFailed as failure:
            # pg_dump reads some definitions from the present catalog (pg_get_indexdef
            # and the like): a table rewritten since the snapshot can fail it ("cache
            # lookup failed for index"). That is a change like any other: the check that
            # follows finds it and starts over; with no change found, the failure stands.
            self.schema_failure = failure
            return
        await planned.coordinator.lock(planned.inventory.tables, lock_timeout=self.o.lock_timeout)

    async def pick_pg_dump(self, planned: _Planned) -> schema.ClientTool | None:
        """The pg_dump for the server's major, before anything is written: a missing tool
        fails fast."""
        if not self.o.with_schema:
            return None
        major = planned.catalog.server.version_num // 10000
        return await anyio.to_thread.run_sync(schema.pick_pg_dump, major)

    async def claim_target(self) -> None:
        """The ``<name>.partial`` directory under the output's lock, or the store's claim
        (``storage.output.claim_target``); the lock held until the backup has its final
        name."""
        assert self.name is not None
        self.target, self.lock = await anyio.to_thread.run_sync(
            claim_target,
            self.o.output,
            self.store,
            self.name,
            list(self.o.recipients) or None,
        )

    async def copy(
        self, session: Session, planned: _Planned, pg_dump: schema.ClientTool | None
    ) -> tuple[dict[str, StoredFile], list[BackupSchema]]:
        """Every chunk by the pool's connections in the snapshot, and pg_dump's schema of
        the same snapshot beside them."""
        o, conn, target, pool = self.o, self.conn, self.target, self.pool
        assert conn is not None and target is not None and pool is not None
        coordinator = planned.coordinator
        self.emit(
            DumpStarted(
                snapshot_id=coordinator.snapshot_id,
                target=str(session.target),
                tables=sum(1 for t in planned.inventory.tables if t.has_data),
                chunks=len(planned.items),
                est_rows=sum(c.est_rows for c in planned.items),
                jobs=o.jobs,
                path=str(target.path),
            )
        )
        coordinator_lost = anyio.Event()
        conn.add_termination_listener(lambda _: coordinator_lost.set())
        copying = CopyContext(
            coordinator.snapshot_id,
            planned.catalog.types,
            target,
            o.compression,
            self.emit,
            fingerprints=o.fingerprints,
        )
        schema_files: list[BackupSchema] = []
        try:
            async with anyio.create_task_group() as tg:
                if pg_dump is not None and self.schema_archive is not None:
                    tg.start_soon(_store_schema, pg_dump, self.schema_archive, target, schema_files)
                elif pg_dump is not None:
                    tg.start_soon(
                        _capture_schema,
                        pg_dump,
                        session.params,  # where the coordinator went (pinned)
                        coordinator.snapshot_id,
                        o.pg_dump_selection + _unreadable_excluded(planned.inventory),
                        o.lock_timeout,
                        target,
                        schema_files,
                    )
                if o.cluster is None:
                    stored = await copy_all(pool, planned.items, copying, coordinator_lost)
                else:
                    from .cluster import copy_on_cluster

                    assert self.cluster is not None
                    stored = await copy_on_cluster(
                        self.cluster,
                        planned.items,
                        copying,
                        session.params,
                        session.policy,
                        coordinator_lost,
                    )
        except BaseExceptionGroup as group:
            raise most_telling(group) from None
        finally:
            await close_pool(pool)
            self.pool = None
        # The data is only consistent if the snapshot outlived every import.
        await coordinator.ensure_alive()
        self.snapshot_held = time.monotonic() - coordinator.began
        return stored, schema_files

    async def seal(
        self, planned: _Planned, stored: dict[str, StoredFile], schema_files: list[BackupSchema]
    ) -> manifest.Manifest:
        """SHA256SUMS, then the manifest (not yet where readers trust it); the snapshot
        ends."""
        assert self.conn is not None and self.target is not None
        target = self.target
        body = _manifest_body(
            planned=planned,
            stored=stored,
            started_at=self.started_at,
            finished_at=datetime.now(UTC),
            compression=self.o.compression,
            schema_files=schema_files[0] if schema_files else None,
            recipients=[str(r) for r in self.o.recipients],
        )
        files = [(f.path, f.sha256) for f in stored.values()]
        for captured in schema_files:
            files += [(f.path, f.sha256) for f in captured.files]
        sums = manifest.sha256sums(sorted(files))
        await anyio.to_thread.run_sync(target.sync_data)  # data files first, then the lists
        await anyio.to_thread.run_sync(target.write_small_file, manifest.SUMS_NAME, sums)
        await anyio.to_thread.run_sync(target.write_manifest, body)
        await _end_snapshot(self.conn)
        return body

    async def complete(self) -> Path | str:
        """``--verify``, then the rename (or the store's manifest): the backup is complete;
        then ``--keep``."""
        assert self.target is not None
        if self.o.verify_output:
            await _verify_written(self.target, self.emit)
        # From the rename on the backup is complete: a signal or the deadline arriving
        # now must not undo it.
        with anyio.CancelScope(shield=True):
            final_path = await anyio.to_thread.run_sync(self.target.commit)
            self.finished = True
            if self.o.keep is not None:  # under our lock, after this backup is complete
                await anyio.to_thread.run_sync(_keep_newest, self.o.output, self.o.keep, self.emit)
        return final_path

    async def clean_up(self) -> None:
        """After a failure or a cancellation: the pool closed, what was written removed
        (or kept without a manifest with --keep-partial)."""
        if self.pool is not None:
            await close_pool(self.pool)
        if self.slot is not None and self.slot.made_anything and not self.finished:
            with anyio.CancelScope(shield=True):
                await self.abandon_slot(self.slot)
        if self.target is not None and not self.finished:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(
                    abandon_target, self.target, self.o.keep_partial, self.emit
                )

    async def abandon_slot(self, slot: SlotKeeper) -> None:
        """The slot and publication this failed dump made, dropped on a connection of
        their own (the coordinator's may be mid-transaction or gone); a failure to drop
        them is said, not raised over the dump's own error."""
        assert self.session is not None
        try:
            with anyio.fail_after(30):
                conn = await self.session.connect()
                try:
                    await slot.abandon(conn)
                finally:
                    await conn.close()
        except (Exception, TimeoutError) as exc:
            self.emit(
                Notice(
                    f"could not drop replication slot {slot.name} after the failure "
                    f"({exc}); drop it with: asyncsnap drop-slot {slot.name}"
                )
            )

    def result(
        self,
        final_path: Path | str,
        planned: _Planned,
        stored: dict[str, StoredFile],
        schema_files: list[BackupSchema],
        body: manifest.Manifest,
        snapshots: int,
    ) -> DumpResult:
        results = _table_results(planned.inventory.tables, planned.chunks, stored)
        lo_file = stored.get(LargeObjectsJob.stem)
        result = DumpResult(
            path=final_path,
            snapshot_id=planned.coordinator.snapshot_id,
            tables=results,
            rows=sum(r.rows for r in results),
            bytes=sum(r.bytes for r in results),
            stored_bytes=sum(r.stored_bytes for r in results),
            files=len(stored),
            seconds=time.monotonic() - self.started,
            snapshot_held_seconds=self.snapshot_held,
            skipped=tuple(planned.inventory.skipped),
            schema=schema_files[0] if schema_files else None,
            verified=self.o.verify_output,
            large_objects=lo_file.objects if lo_file is not None else 0,
            snapshots=snapshots,
            written=body,
            slot=planned.slot,
        )
        self.emit(
            DumpFinished(
                path=str(final_path),
                tables=len(results),
                rows=result.rows,
                bytes=result.bytes,
                stored_bytes=result.stored_bytes,
                seconds=result.seconds,
                snapshot_held_seconds=self.snapshot_held,
            )
        )
        return result


async def _select(
    conn: asyncpg.Connection, options: DumpOptions, server: ServerInfo
) -> tuple[Inventory, LargeObjectCounts]:
    """What the options select of what the catalog lists, as ``conn`` sees it."""
    relations = await list_tables(conn, server)
    sequences = await list_sequences(conn)
    table_oids = [t.oid for t in relations if t.is_table]
    object_counts = await count_large_objects(conn)
    inventory = take_inventory(
        relations,
        sequences,
        await default_sequences(conn, table_oids),
        options.selection,
        skip_unreadable=options.skip_unreadable,
        enable_row_security=options.enable_row_security,
        unlogged_table_data=options.unlogged_table_data,
        large_objects=options.large_objects,
        large_object_counts=object_counts,
    )
    return inventory, object_counts


async def _prepare_slot(conn: asyncpg.Connection, options: DumpOptions, slot: SlotKeeper) -> None:
    """``--slot``'s checks and publication, before the snapshot: for the tables the options
    select now (checked again in the snapshot)."""
    server = await read_server_info(conn)
    inventory, _ = await _select(conn, options, server)
    await slot.prepare(
        conn,
        inventory.tables,
        lock_timeout=options.lock_timeout,
        server_version=server.version_num,
    )


async def _plan_in_snapshot(
    conn: asyncpg.Connection,
    options: DumpOptions,
    emit: EventCallback,
    slot: SlotKeeper | None = None,
) -> _Planned:
    """Begin and export a snapshot on ``conn`` (with ``slot``, the new slot's), decide
    what the backup holds, lock it and plan the chunks, all inside that snapshot."""
    coordinator = await (Coordinator.begin(conn) if slot is None else slot.begin(conn))
    server = await read_server_info(conn)
    database = await read_properties(conn, server.version_num)
    inventory, object_counts = await _select(conn, options, server)
    if slot is not None:
        await slot.check(conn, inventory.tables)
    capacity, schema_first = 0, False
    if options.with_schema:
        capacity, indexes = await read_lock_capacity(conn, [t.oid for t in inventory.tables])
        schema_first = not locks_fit_together(
            tables=len(inventory.tables), indexes=indexes, jobs=options.jobs, capacity=capacity
        )
    if not schema_first:  # else after pg_dump (_DumpRun.take_snapshot)
        await coordinator.lock(inventory.tables, lock_timeout=options.lock_timeout)
    described = await describe_tables(conn, inventory.tables)
    types = await read_types(conn, [t.oid for t in described])
    catalog = Catalog(server=server, tables=described, types=types)
    states = await read_sequence_states(conn, [p.info for p in inventory.sequences])
    sequence_states = [
        SequenceState(
            schema=p.info.schema,
            name=p.info.name,
            table=p.table,
            column=p.column,
            last_value=states[p.info.oid][0],
            is_called=states[p.info.oid][1],
        )
        for p in inventory.sequences
    ]
    split = options.split_larger_than
    if split is not None and server.version_num < TID_RANGE_SCAN_VERSION:
        emit(
            Notice(
                f"PostgreSQL {server.version} has no TID Range Scan (14+): "
                "large tables are copied in one stream each"
            )
        )
        split = None
    # Where split tables' bytes lie (TOAST included), to balance their ranges.
    weights = {}
    for t in described:
        ranges = chunk_count(t, split_larger_than=split, jobs=options.jobs)
        if t.has_data and ranges > 1:
            weights[t.key] = await sample_page_weights(conn, t, pages=sample_pages(ranges))
    chunks = plan_chunks(described, split_larger_than=split, jobs=options.jobs, weights=weights)
    items: list[WorkItem] = list(chunks)
    if inventory.large_objects:
        # First: one stream of unknown length, started early so that it ends early.
        items.insert(
            0,
            LargeObjectsJob(
                est_rows=object_counts.total
                - (object_counts.unreadable if inventory.skip_unreadable_large_objects else 0),
                readable_only=inventory.skip_unreadable_large_objects,
            ),
        )
    return _Planned(
        coordinator=coordinator,
        catalog=catalog,
        inventory=inventory,
        sequences=sequence_states,
        chunks=chunks,
        items=items,
        order=restore_order(described),
        database=database,
        schema_first=schema_first,
        lock_capacity=capacity,
        slot=slot.info if slot is not None else None,
    )


async def _capture_schema(
    pg_dump: schema.ClientTool,
    params: ConnectParams,
    snapshot_id: str,
    selection: list[str],
    lock_timeout: float,
    backup: BackupTarget,
    out: list[BackupSchema],
) -> None:
    """pg_dump's schema archive of the snapshot, and its plain SQL, into ``schema/``."""
    archive = await _pg_dump_archive(pg_dump, params, snapshot_id, selection, lock_timeout, backup)
    await _store_schema(pg_dump, archive, backup, out)


async def _pg_dump_archive(
    pg_dump: schema.ClientTool,
    params: ConnectParams,
    snapshot_id: str,
    selection: list[str],
    lock_timeout: float,
    backup: BackupTarget,
) -> Path:
    """pg_dump's schema archive of the snapshot, in the backup's scratch directory."""
    directory = await anyio.to_thread.run_sync(backup.scratch_directory)
    temp = directory / ".capture.tmp"
    try:
        await schema.capture(
            pg_dump,
            params,
            snapshot_id=snapshot_id,
            selection=selection,
            lock_timeout=lock_timeout,
            archive=temp,
        )
    except DumpFailed as exc:
        temp.unlink(missing_ok=True)
        # The coordinator died (so its snapshot is gone): say that, as the copy does.
        if "invalid snapshot identifier" in exc.message:
            raise snapshot_lost() from exc
        raise
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


async def _store_schema(
    pg_dump: schema.ClientTool, archive: Path, backup: BackupTarget, out: list[BackupSchema]
) -> None:
    """The archive and its plain SQL as the backup's schema files; the archive's scratch
    copy then removed (after a failure, with the scratch directory)."""
    pg_restore = await anyio.to_thread.run_sync(
        lambda: schema.pick_pg_restore(pg_dump.major, pg_dump.major)[0]
    )

    def seal() -> BackupSchema:
        sql = schema.render_sql(pg_restore, archive)
        stored = BackupSchema(
            pg_dump_version=pg_dump.version,
            archive=write_content_file(backup, SCHEMA_ARCHIVE_PATH, archive.read_bytes()),
            sql=write_content_file(backup, SCHEMA_SQL_PATH, sql),
        )
        archive.unlink()
        return stored

    out.append(await anyio.to_thread.run_sync(seal))


def _unreadable_excluded(inventory: Inventory) -> list[str]:
    """pg_dump's --exclude-table for what --skip-unreadable left out: pg_dump would lock
    it and fail. Exact names, as pg_dump reads a pattern in double quotes."""

    def exact(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    return [
        f"--exclude-table={exact(s.schema)}.{exact(s.name)}"
        for s in inventory.skipped
        if s.kind in ("table", "sequence")
        and s.reason == "permission denied"
        and s.schema is not None
        and s.name is not None
    ]


async def _verify_written(backup: BackupTarget, emit: EventCallback) -> None:
    """Read back the whole backup as ``asyncsnap verify`` would, before the rename (or, in
    a store, the manifest) makes it complete. Local files come back through the page
    cache, so this checks what the dump wrote (compression, hashes, counts, JSON), not the
    disk's media; a store's come back from the store."""
    started = time.monotonic()
    result = await anyio.to_thread.run_sync(
        lambda: verify_backup(
            backup.written(),
            # A signal or --max-duration stops the check between files.
            on_file=lambda _: anyio.from_thread.check_cancelled(),
        )
    )
    if not result.ok:
        # Objects removed while they were read back (a prune that took the dump for a
        # dead one) are that, not the disk's fault.
        await anyio.to_thread.run_sync(backup.written)
        problems = some_names([str(p) for p in result.problems], limit=3, sep="; ")
        raise VerificationFailed(
            f"the backup failed its own verification: {problems}",
            hint="nothing was kept; check the disk and the filesystem, then run the dump again",
        )
    seconds = time.monotonic() - started
    if result.content_checked:
        said = f"verified {count(result.files, 'file')}, {count(result.rows, 'row')}"
    else:
        # Encrypted to recipients: the dump holds no secret key, so what it can read back
        # is each file's stored bytes, not the rows inside them.
        said = (
            f"verified the stored bytes of {count(result.files, 'file')} (size and SHA-256; "
            "encrypted: `asyncsnap verify --identity KEY` checks the rows)"
        )
    emit(Notice(f"{said} in {seconds:.2f}s"))


def _keep_newest(output: Path | StoreUrl, keep: int, emit: EventCallback) -> None:
    """``--keep``: prune the output (locally under the lock the dump holds)."""
    try:
        pruned = prune(str(output), keep=keep, locked=True)
    except StoreFailed as exc:
        # The backup is complete: retention failing must not make it look failed.
        emit(Notice(f"warning: --keep {keep} could not prune {output}: {exc.message}"))
        return
    for path in pruned.removed:
        emit(Notice(f"removed old backup {path} (--keep {keep})"))
    for path in pruned.abandoned:
        emit(Notice(f"removed abandoned dump {path} (no manifest, old claim)"))
    for path in pruned.foreign:
        emit(Notice(f"left {path} in place (not written by asyncsnap)"))


async def _end_snapshot(conn: asyncpg.Connection) -> None:
    # Read-only: ROLLBACK and COMMIT are the same; ROLLBACK says so.
    await conn.execute("ROLLBACK")
    await conn.close()


def _table_entry(
    t: Table, encs: Mapping[str, Any], files: list[tuple[StoredFile, Chunk]]
) -> BackupTable:
    return BackupTable(
        schema=t.schema,
        name=t.name,
        kind=t.kind,
        parent=t.parent,
        rows=sum(f.rows for f, _ in files),
        row_security=t.row_security,
        columns=tuple(
            BackupColumn(
                name=c.name,
                type=c.type,
                encoding=encs[c.name],
                not_null=c.not_null,
                generated=c.generated,
                identity=c.identity,
            )
            for c in t.columns
        ),
        primary_key=tuple(t.primary_key),
        foreign_keys=tuple(
            BackupForeignKey(
                name=fk.name,
                columns=tuple(fk.columns),
                references=(fk.ref_schema, fk.ref_table),
                ref_columns=tuple(fk.ref_columns),
                deferrable=fk.deferrable,
                initially_deferred=fk.initially_deferred,
            )
            for fk in t.foreign_keys
        ),
        files=tuple(file_entry(f, chunk.pages) for f, chunk in files),
    )


def _manifest_body(
    *,
    planned: _Planned,
    stored: dict[str, StoredFile],
    started_at: datetime,
    finished_at: datetime,
    compression: Compression,
    schema_files: BackupSchema | None,
    recipients: list[str],
) -> manifest.Manifest:
    catalog, inventory = planned.catalog, planned.inventory
    server = catalog.server
    files_by_table: dict[tuple[str, str], list[tuple[StoredFile, Chunk]]] = {}
    for chunk in sorted(planned.chunks, key=lambda c: (c.table.key, c.index)):
        files_by_table.setdefault(chunk.table.key, []).append((stored[chunk.stem], chunk))

    tables = [
        _table_entry(t, encodings(t, catalog.types), files_by_table.get(t.key, []))
        for t in sorted(catalog.tables, key=lambda t: t.key)
    ]
    lo_file = stored.get(LargeObjectsJob.stem)
    large_objects = None
    if lo_file is not None:
        large_objects = BackupLargeObjects(
            objects=lo_file.objects,
            bytes=lo_file.object_bytes,
            files=(file_entry(lo_file, None),),
        )
    sequences = [
        BackupSequence(
            schema=s.schema,
            name=s.name,
            table=s.table,
            column=s.column,
            last_value=s.last_value,
            is_called=s.is_called,
        )
        for s in planned.sequences
    ]

    data_files = list(stored.values())
    order = planned.order
    return manifest.Manifest(
        # An encrypted backup is version 4: a reader of version 3 must refuse it rather
        # than take its age files for zstd.
        format_version=manifest.ENCRYPTED_FORMAT_VERSION
        if recipients
        else manifest.PLAIN_FORMAT_VERSION,
        encryption=tuple(recipients),
        tool=manifest.ToolInfo(name="asyncsnap", version=__version__),
        started_at=utc_iso(started_at),
        finished_at=utc_iso(finished_at),
        snapshot=manifest.SnapshotInfo(
            id=planned.coordinator.snapshot_id,
            taken_at=utc_iso(planned.coordinator.taken_at),
        ),
        slot=planned.slot,
        server=manifest.ServerInfo(
            version=server.version,
            version_num=server.version_num,
            database=server.database,
            host=server.host,
            port=server.port,
            user=server.user,
            encoding=server.encoding,
            lc_collate=server.lc_collate,
            lc_ctype=server.lc_ctype,
        ),
        database=planned.database,
        settings=dict(RENDER_SETTINGS),
        compression=compression,
        tables=tuple(tables),
        sequences=tuple(sequences),
        large_objects=large_objects,
        schema=schema_files,
        skipped=tuple(inventory.skipped),
        restore_order=manifest.RestoreOrderInfo(
            levels=tuple(tuple(level) for level in order.levels),
            cycles=tuple(tuple(cycle) for cycle in order.cycles),
            self_referencing=tuple(order.self_referencing),
        ),
        totals=manifest.Totals(
            tables=sum(1 for t in catalog.tables if t.has_data),
            files=len(data_files),
            rows=sum(f.rows for f in data_files if f is not lo_file),
            bytes=sum(f.bytes for f in data_files),
            stored_bytes=sum(f.stored_bytes for f in data_files),
        ),
    )


def _table_results(
    tables: Sequence[Table], chunks: Sequence[Chunk], stored: dict[str, StoredFile]
) -> list[TableResult]:
    results = []
    by_table: dict[tuple[str, str], list[Chunk]] = {}
    for c in chunks:
        by_table.setdefault(c.table.key, []).append(c)
    for t in sorted((t for t in tables if t.has_data), key=lambda t: t.key):
        mine = sorted(by_table.get(t.key, []), key=lambda c: c.index)
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
                wall_seconds=(
                    max(f.started + f.seconds for f in files) - min(f.started for f in files)
                    if files
                    else 0.0
                ),
            )
        )
    return results
