"""``dump --since BACKUP``: an incremental backup, the rows' changes committed after a
backup of a chain (a full backup made with ``dump --slot``, or an increment of it), read
from the chain's logical replication slot (issue 25; docs/format.md "Incremental
backups").

The steps (``_IncrementRun.run``): open the parent and check it ends a chain; connect and
check that the slot still holds everything after the parent's end (``slot.check_followable``)
and that no table of the parent changed its definition or was dropped, and none was added
to the publication; commit a boundary (``changes.emit_mark``) and read every transaction
the slot holds from the parent's end to that boundary, writing each table's changes as
lines (``encode.changerows``: the same value encoding as a full backup) and every
transaction as a line; read the sequences; seal and commit the backup as a dump does
(SHA256SUMS, then the manifest, then the rename or the store's manifest); and only then
advance the slot. A run killed before the advance leaves the slot where it was: the next
run reads the same transactions again (and skips the dead run's boundary, which holds no
row), so it writes the same files.

What decoding cannot carry is never silent: a relation message whose columns differ from
the parent's (DDL) fails the increment, naming the table; a table new in the publication
fails it; tables new in the database (in the parent's schemas) are named.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.to_thread
import asyncpg
import orjson

from . import format as manifest
from .catalog import (
    Table,
    TypeInfo,
    describe_tables,
    list_sequences,
    list_tables,
    read_sequence_states,
    read_server_info,
    read_types,
)
from .changes import (
    ChangesUnreadable,
    RowChange,
    TransactionEnd,
    TransactionStart,
    TruncateChange,
    advance,
    emit_mark,
    stream_batches,
)
from .connection import ConnectionSpec, resolve
from .encode.changerows import ChangeRowEncoder
from .errors import DumpFailed, UsageError, VerificationFailed
from .events import EventCallback, Notice
from .format import (
    CHANGE_OPS,
    COMPRESSIONS,
    INCREMENT_FORMAT_VERSION,
    RENDER_SETTINGS,
    TRANSACTIONS_STEM,
    Backup,
    BackupTable,
    Compression,
    IncrementInfo,
    is_backup_name,
)
from .largeobjects import count_large_objects
from .pgoutput import UNCHANGED, Relation, Value, format_lsn, parse_lsn
from .plan import file_stem
from .session import CONNECTION_LOST, Session, SessionPolicy
from .slot import (
    NEW_FULL_HINT,
    NotReplicable,
    SlotState,
    check_followable,
    check_publication,
    check_system,
    slot_state,
)
from .storage.backup import open_backup
from .storage.encryption import parse_recipients
from .storage.files import BackupDirectory, BackupTarget, DataFileWriter, OutputLock
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
from .version import __version__

# Changes of one table encoded at a time (a converter call and, for array columns, a
# query per column per batch).
ENCODE_BATCH = 1000
# Changes waiting across all tables: past this every table's are encoded and written, so
# that a transaction touching ten thousand tables holds no more than this in memory.
PENDING_LIMIT = 20_000
# pgoutput's commit time: microseconds since PostgreSQL's epoch.
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


class ChainBroken(DumpFailed):
    """The changes after the parent cannot be written as an increment (a table's
    definition changed, a table was added or dropped): a new full backup is needed."""


@dataclass(frozen=True)
class IncrementResult:
    """What ``dump_increment`` wrote."""

    path: Path | str
    parent: str
    start_lsn: str
    end_lsn: str
    transactions: int
    changes: int
    tables: tuple[tuple[str, int], ...]  # (qualified name, changes), tables with changes
    bytes: int
    stored_bytes: int
    files: int
    sequences: int
    seconds: float
    wal_held_bytes: int | None  # the WAL the slot still holds once advanced
    new_tables: tuple[str, ...]  # tables in the parent's schemas the chain does not hold
    written: manifest.Manifest


async def dump_increment(
    dsn: str | ConnectionSpec | None = None,
    *,
    since: str | Path,
    output: str | Path | None = None,
    name: str | None = None,
    compression: Compression = "zstd",
    encrypt_to: tuple[str, ...] | list[str] = (),
    advance_slot: bool = True,
    on_event: EventCallback | None = None,
) -> IncrementResult:
    """Write the changes committed after the backup ``since`` as an incremental backup
    beside it, then advance the chain's slot past them.

    :param since: the chain's last backup (a full backup made with ``slot=``, or an
        increment), a directory or ``s3://bucket/prefix/NAME``.
    :param output: where the increment goes; it must be where ``since`` is (a chain's
        backups are siblings, found by name), which is the default.
    :param name: the increment's name; default ``backup_YYYYMMDDTHHMMSSZ`` (UTC).
    :param compression, encrypt_to: as for ``dump``.
    :param advance_slot: ``False`` leaves the slot where it was, so the next increment
        from the same parent reads the same changes again (a trial run, or a copy of the
        changes for elsewhere); the slot keeps holding their WAL.
    :raises NotReplicable: the slot is gone, invalidated or moved past the parent.
    :raises ChainBroken: a table's definition changed, or one was added or dropped.
    """
    options = await anyio.to_thread.run_sync(
        lambda: _IncrementOptions.build(
            since, output, name, compression, tuple(encrypt_to), advance_slot
        )
    )
    return await _IncrementRun(options, dsn, on_event or (lambda event: None)).run()


@dataclass(frozen=True)
class _IncrementOptions:
    parent: Backup
    parent_name: str
    output: Path | StoreUrl
    name: str | None
    compression: Compression
    recipients: tuple[Any, ...]
    advance_slot: bool

    @classmethod
    def build(
        cls,
        since: str | Path,
        output: str | Path | None,
        name: str | None,
        compression: str,
        encrypt_to: tuple[str, ...],
        advance_slot: bool,
    ) -> _IncrementOptions:
        """Everything that can be wrong before connecting."""
        if compression not in COMPRESSIONS:
            raise UsageError(f"unknown compression {compression!r}", hint="use zstd, gzip or none")
        recipients = tuple(parse_recipients(list(encrypt_to))) if encrypt_to else ()
        where = backup_location(since, role="--since")
        home: Path | StoreUrl
        if isinstance(where, StoreUrl):
            prefix, _, parent_name = where.prefix.rpartition("/")
            home = replace(where, prefix=prefix)
        else:
            where = where.absolute()
            home, parent_name = where.parent, where.name
        if not is_backup_name(parent_name):
            raise UsageError(
                f"--since {since}: {parent_name!r} cannot name a chain's backup (an increment "
                "names its parent by it)",
                hint="give a backup in a directory or prefix, named as dump names one",
            )
        parent = open_backup(since, increments=True)
        if parent.manifest.slot is None:
            raise UsageError(
                f"{parent.path} was not made with a replication slot: no increment can follow it",
                hint="start a chain with a full backup: asyncsnap dump --slot NAME",
            )
        if output is not None:
            given = backup_location(output, role="-o")
            if (given.absolute() if isinstance(given, Path) else given) != home:
                raise UsageError(
                    f"an increment is written beside its parent, in {home}",
                    hint="leave out -o with --since, or give the parent's directory",
                )
        if isinstance(home, Path):
            name = name or default_backup_name(home)
            BackupDirectory.check_free(home, name)
        return cls(parent, parent_name, home, name, compression, recipients, advance_slot)


class _IncrementRun:
    def __init__(
        self, options: _IncrementOptions, dsn: str | ConnectionSpec | None, emit: EventCallback
    ) -> None:
        self.o = options
        self.dsn = dsn
        self.emit = emit
        self.name = options.name
        self.store: S3Store | None = None
        self.target: BackupTarget | None = None
        self.lock: OutputLock | None = None
        self.writers: dict[str, DataFileWriter] = {}
        self.pending = 0  # changes added and not yet encoded, across tables
        self.database = ""
        self.started = time.monotonic()
        self.started_at = datetime.now(UTC)
        parent = options.parent.manifest
        assert parent.slot is not None
        self.slot = parent.slot
        self.start = parse_lsn(
            parent.increment.end_lsn if parent.increment is not None else parent.slot.consistent_lsn
        )

    async def run(self) -> IncrementResult:
        if isinstance(self.o.output, StoreUrl):
            self.store, self.name = await anyio.to_thread.run_sync(
                open_store_output, self.o.output, self.name
            )
        session = Session(resolve(self.dsn), SessionPolicy())
        conn = await session.connect()
        try:
            try:
                return await self._run(conn)
            except CONNECTION_LOST as exc:
                raise DumpFailed(
                    "the connection to the server was lost while reading the slot",
                    hint="run the same command again: the slot was not advanced",
                ) from exc
            except ChangesUnreadable as exc:
                raise DumpFailed(
                    f"the slot's changes cannot be read: {exc}", hint=NEW_FULL_HINT
                ) from exc
            except asyncpg.InsufficientPrivilegeError as exc:
                raise NotReplicable(
                    f"this role cannot read replication slot {self.slot.name} or write its "
                    f"boundary: {exc}",
                    hint="run as a role with the REPLICATION attribute (ALTER ROLE ... "
                    "REPLICATION), as the chain's full backup was",
                ) from exc
        except BaseException:
            if self.target is not None:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._discard)
            raise
        finally:
            if self.lock is not None:
                self.lock.release()
            if not conn.is_closed():
                conn.terminate()

    async def _run(self, conn: asyncpg.Connection) -> IncrementResult:
        server = await read_server_info(conn)
        self.database = server.database or ""
        check_followable(
            await slot_state(conn, self.slot.name), self.slot, self.start, self.database
        )
        await check_publication(conn, self.slot.publication, server.version_num or 0)
        await check_system(conn, self.slot.system_identifier)
        live = [t for t in await list_tables(conn) if t.is_table]
        tables = await self._tables(conn, live)
        new_tables = await _new_tables(conn, self.o.parent, self.slot.publication, live)
        for qualified in new_tables:
            self.emit(Notice(f"{qualified} is not in this chain (added since its full backup?)"))
        sequences = await list_sequences(conn)
        objects = await count_large_objects(conn)
        if objects.total:
            self.emit(
                Notice(
                    f"the database holds {objects.total:,} large objects: an increment does "
                    "not carry their changes (logical decoding does not), a full backup does"
                )
            )
        boundary = os.urandom(16).hex().encode()
        upto = await emit_mark(conn, boundary)
        await self._claim()
        end, count = await self._read(conn, tables, boundary, upto)
        # The server decoded from where the slot was when the read began: had another
        # run advanced it past our start since the check above, transactions between
        # would be missing from this read (a slot only moves forward, and a read holds
        # it, so a check after the read sees any such move).
        check_followable(
            await slot_state(conn, self.slot.name), self.slot, self.start, self.database
        )
        states = await self._sequences(conn, sequences)
        written = await self._seal(end, count, states)
        with anyio.CancelScope(shield=True):  # complete from here: not undone by a signal
            assert self.target is not None
            path = await anyio.to_thread.run_sync(self.target.commit)
            self.target = None
            state = await self._advance(conn, end)
        totals = written.totals
        assert totals is not None
        return IncrementResult(
            path=path,
            parent=self.o.parent_name,
            start_lsn=format_lsn(self.start),
            end_lsn=format_lsn(end),
            transactions=count,
            changes=totals.rows,
            tables=tuple((t.qualified, t.rows) for t in written.tables if t.files),
            bytes=totals.bytes,
            stored_bytes=totals.stored_bytes,
            files=totals.files,
            sequences=len(written.sequences),
            seconds=time.monotonic() - self.started,
            wal_held_bytes=None if state is None else state.held_bytes,
            new_tables=tuple(new_tables),
            written=written,
        )

    async def _advance(self, conn: asyncpg.Connection, end: int) -> SlotState | None:
        """The slot moved to the increment's end, now that the increment is complete. A
        failure here loses nothing (the next increment starts at this one's end and skips
        what the slot still has before it), so it is said, not raised."""
        try:
            if self.o.advance_slot:
                await advance(conn, self.slot.name, end)
            return await slot_state(conn, self.slot.name)
        except (asyncpg.PostgresError, *CONNECTION_LOST) as exc:
            self.emit(
                Notice(
                    f"the increment is complete, but slot {self.slot.name} was not advanced "
                    f"({exc}): it holds WAL until the next increment advances it"
                )
            )
            return None

    async def _tables(
        self, conn: asyncpg.Connection, tables: list[Table]
    ) -> dict[int, _TableChanges]:
        """The parent's tables as the catalog has them now (``tables``), by oid, each
        checked against the parent's definition."""
        parent = {t.key: t for t in self.o.parent.tables if t.kind != "partitioned"}
        live = {t.key: t for t in tables}
        missing = sorted(parent[k].qualified for k in parent if k not in live)
        if missing:
            raise ChainBroken(
                f"{missing[0]} was dropped or renamed since {self.o.parent_name}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                hint=NEW_FULL_HINT,
            )
        described = await describe_tables(conn, [live[k] for k in parent])
        types = await read_types(conn, [t.oid for t in described])
        found = {}
        for table in described:
            entry = parent[table.key]
            now = [(c.name, c.type) for c in table.columns]
            then = [(c.name, c.type) for c in entry.columns]
            # The primary key too: a restore of the chain finds rows by it.
            if now != then or table.primary_key != entry.primary_key:
                raise _definition_changed(table.qualified, self.o.parent_name)
            found[table.oid] = _TableChanges(table, entry, types)
        return found

    async def _claim(self) -> None:
        assert self.name is not None
        self.target, self.lock = await anyio.to_thread.run_sync(
            claim_target,
            self.o.output,
            self.store,
            self.name,
            list(self.o.recipients) or None,
        )

    async def _read(
        self,
        conn: asyncpg.Connection,
        tables: dict[int, _TableChanges],
        boundary: bytes,
        upto: int,
    ) -> tuple[int, int]:
        """Every transaction from the parent's end to the boundary, written, a change at a
        time; the boundary's end and the number of transactions written."""
        count = 0
        log: list[bytes] = []
        head = (0, 0)  # the transaction being read: xid, commit LSN
        n = 0  # its changes so far
        end: int | None = None
        batches = stream_batches(
            conn, self.slot.name, self.slot.publication, self.start, upto, marks=True
        )
        async with contextlib.aclosing(batches):
            async for batch in batches:
                for item in batch:
                    if isinstance(item, RowChange):  # (the most of a stream, asked first)
                        due = self._add(tables, head, n, item)
                        if due:
                            for changes in due:
                                await self._flush(conn, changes)
                        n += 1
                    elif isinstance(item, TransactionStart):
                        head, n = (item.xid, item.commit_lsn), 0
                    elif isinstance(item, TransactionEnd):
                        if boundary in item.marks:
                            end = item.end_lsn
                            break
                        if item.changes:  # else another run's boundary, or nothing published
                            log.append(_transaction_line(item))
                            count += 1
                        if len(log) >= ENCODE_BATCH:
                            await self._write(TRANSACTIONS_STEM, b"".join(log), len(log))
                            log.clear()
                    else:  # a TRUNCATE: a line a table it names
                        self._add(tables, head, n, item)
                        n += len(item.relations)
                if end is not None:
                    break
        if end is None:
            # Not found: the slot was moved past it (said by the check the caller makes),
            # or something ate it
            check_followable(
                await slot_state(conn, self.slot.name), self.slot, self.start, self.database
            )
            raise DumpFailed(
                "the slot's changes ended before the increment's boundary",
                hint="run the same command again: the slot was not advanced",
            )
        for changes in tables.values():
            await self._flush(conn, changes)
        if log:
            await self._write(TRANSACTIONS_STEM, b"".join(log), len(log))
        return end, count

    def _add(
        self,
        tables: dict[int, _TableChanges],
        head: tuple[int, int],
        n: int,
        change: RowChange | TruncateChange,
    ) -> list[_TableChanges] | None:
        """One change taken into its table's pending lines; the tables whose lines are due
        to be written now (one reached a batch, or all together hold too many), or None."""
        xid, lsn = head
        if isinstance(change, RowChange):
            changes = tables.get(change.relation.oid)
            if changes is None:
                raise _not_in_chain(change.relation, self.o.parent_name)
            changes.check(change.relation, self.o.parent_name)
            changes.add((xid, lsn, n), change)
            self.pending += 1
            if len(changes.pending) >= ENCODE_BATCH:
                self.pending -= len(changes.pending)
                return [changes]
            if self.pending >= PENDING_LIMIT:
                self.pending = 0
                return list(tables.values())
            return None
        for i, relation in enumerate(change.relations):  # a line each, numbered in turn
            changes = tables.get(relation.oid)
            if changes is None:
                raise _not_in_chain(relation, self.o.parent_name)
            changes.check(relation, self.o.parent_name)
            changes.add((xid, lsn, n + i), None)
        return None

    async def _flush(self, conn: asyncpg.Connection, changes: _TableChanges) -> None:
        if changes.pending:
            lines = await changes.lines(conn)
            await self._write(changes.stem, lines, changes.flushed)

    async def _write(self, stem: str, data: bytes, lines: int) -> None:
        writer = self.writers.get(stem)
        if writer is None:
            assert self.target is not None
            writer = self.writers[stem] = self.target.data_writer(stem, self.o.compression)
            writer.fingerprint = None
        await anyio.to_thread.run_sync(writer.write, data, lines)

    async def _sequences(
        self, conn: asyncpg.Connection, sequences: list[Any]
    ) -> list[manifest.BackupSequence]:
        """The parent's sequences' values now (after the boundary): never behind a value
        a row in the increment used, as for a full backup."""
        by_key = {(s.schema, s.name): s for s in sequences}
        wanted = []
        for s in self.o.parent.sequences:
            live = by_key.get((s.schema, s.name))
            if live is None:
                raise ChainBroken(
                    f"sequence {s.qualified} was dropped or renamed since {self.o.parent_name}",
                    hint=NEW_FULL_HINT,
                )
            wanted.append((s, live))
        states = await read_sequence_states(conn, [live for _, live in wanted])
        return [
            replace(s, last_value=states[live.oid][0], is_called=states[live.oid][1])
            for s, live in wanted
        ]

    async def _seal(
        self, end: int, count: int, sequences: list[manifest.BackupSequence]
    ) -> manifest.Manifest:
        target = self.target
        assert target is not None
        stored = {}
        for stem, writer in self.writers.items():
            await anyio.to_thread.run_sync(writer.close_data)
            stored[stem] = file_entry(await anyio.to_thread.run_sync(writer.finish), None)
        self.writers.clear()
        tx_file = stored.pop(TRANSACTIONS_STEM, None)
        # Every table of the chain, as the full backup lists them (a reader of the chain
        # finds them all in its last backup); those without changes with no file.
        tables = [
            replace(t, rows=f.rows, files=(f,))
            if (f := stored.get(file_stem(t.schema, t.name))) is not None
            else replace(t, rows=0, files=())
            for t in self.o.parent.tables
        ]
        files = [*stored.values(), *([tx_file] if tx_file is not None else [])]
        parent = self.o.parent.manifest
        body = manifest.Manifest(
            format_version=INCREMENT_FORMAT_VERSION,
            encryption=tuple(str(r) for r in self.o.recipients),
            tool=manifest.ToolInfo(name="asyncsnap", version=__version__),
            started_at=utc_iso(self.started_at),
            finished_at=utc_iso(datetime.now(UTC)),
            slot=self.slot,
            increment=IncrementInfo(
                parent=self.o.parent_name,
                parent_manifest_sha256=parent.checksum or "",
                start_lsn=format_lsn(self.start),
                end_lsn=format_lsn(end),
                transactions=count,
                transactions_file=tx_file,
            ),
            server=parent.server,
            database=None,
            settings=dict(RENDER_SETTINGS),
            compression=self.o.compression,
            tables=tuple(tables),
            sequences=tuple(sequences),
            restore_order=parent.restore_order,
            totals=manifest.Totals(
                tables=sum(1 for t in tables if t.files),
                files=len(files),
                rows=sum(t.rows for t in tables),
                bytes=sum(f.bytes for f in files),
                stored_bytes=sum(f.stored_bytes for f in files),
            ),
        )
        sums = manifest.sha256sums(sorted((f.path, f.sha256) for f in files))
        await anyio.to_thread.run_sync(target.sync_data)
        await anyio.to_thread.run_sync(target.write_small_file, manifest.SUMS_NAME, sums)
        await anyio.to_thread.run_sync(self._check_parent)
        await anyio.to_thread.run_sync(target.write_manifest, body)
        return body

    def _check_parent(self) -> None:
        """The parent is still there as it was opened, just before the manifest makes this
        increment complete. In an object store a prune waits for no lock of a running
        increment (locally it waits for the directory's, which this run holds), so a prune
        that ran meanwhile may have removed the parent: the increment would be an orphan,
        which no restore can use. (A prune between this check and the manifest's write,
        milliseconds, is not caught.)"""
        parent = self.o.parent
        try:
            now = open_backup(str(parent.path), increments=True)
        except VerificationFailed as exc:
            raise ChainBroken(
                f"{self.o.parent_name} was removed while this increment was written "
                f"(a prune?): {exc}",
                hint=NEW_FULL_HINT,
            ) from exc
        if now.manifest.checksum != parent.manifest.checksum:
            raise ChainBroken(
                f"{self.o.parent_name} was replaced while this increment was written",
                hint=NEW_FULL_HINT,
            )

    def _discard(self) -> None:
        for writer in self.writers.values():
            writer.discard()
        assert self.target is not None
        abandon_target(self.target, False, self.emit)


class _TableChanges:
    """One table's changes waiting to be encoded, and the encoders for the column sets
    they need (a row without its unchanged TOASTed values; a key)."""

    def __init__(self, table: Table, entry: BackupTable, types: dict[int, TypeInfo]) -> None:
        self.table = table
        self.entry = entry
        self.types = types
        self.stem = file_stem(table.schema, table.name)
        # The columns the slot sends (generated columns are not), by name.
        self.sent = tuple(c for c in table.columns if c.generated is None)
        self.checked: Relation | None = None
        self.all_columns = tuple(range(len(self.sent)))
        self.key_columns: tuple[int, ...] = ()  # the replica identity's, once checked
        self.encoders: dict[tuple[int, ...], ChangeRowEncoder] = {}
        self.pending: list[
            tuple[
                bytes,
                tuple[int, ...] | None,
                tuple[Value, ...] | None,
                tuple[int, ...] | None,
                tuple[Value, ...] | None,
                list[str],
            ]
        ] = []
        self.flushed = 0

    def check(self, relation: Relation, parent: str) -> None:
        """The relation as the slot described it is the table as the parent has it."""
        if relation is self.checked:
            return
        if (relation.schema, relation.name) != self.table.key or [
            (c.name, c.type_oid, c.type_modifier) for c in relation.columns
        ] != [(c.name, c.type_oid, c.type_mod) for c in self.sent]:
            raise _definition_changed(self.table.qualified, parent)
        self.checked = relation
        self.key_columns = tuple(i for i, c in enumerate(relation.columns) if c.key)

    def add(self, head: tuple[int, int, int], change: RowChange | None) -> None:
        xid, lsn, n = head
        if change is None:
            prefix = _line_head("truncate", lsn, xid, n)
            self.pending.append((prefix, None, None, None, None, []))
            return
        key_columns: tuple[int, ...] | None = None
        key: tuple[Value, ...] | None = None
        old = change.old
        if old is not None:
            if change.old_is_key:
                key_columns = self.key_columns
            elif UNCHANGED in old:
                key_columns = tuple(i for i, v in enumerate(old) if v != UNCHANGED)
            else:
                key_columns = self.all_columns
            key = old if key_columns is self.all_columns else tuple(old[i] for i in key_columns)
        elif change.kind == "update":
            # The identity did not change: the server sent no old key, and the new row's
            # identity columns are the row to update (written out, so that every update
            # and delete line names its row by itself).
            assert change.new is not None
            key_columns = self.key_columns
            key = tuple(change.new[i] for i in key_columns)
            if UNCHANGED in key:
                raise ChainBroken(
                    f"{self.table.qualified}: an update whose identity columns the server "
                    "did not send (a TOASTed key value left unchanged): its row cannot be named",
                    hint="give the table a replica identity of columns with small values "
                    "(ALTER TABLE ... REPLICA IDENTITY), then a new full backup",
                )
        row_columns: tuple[int, ...] | None = None
        new = change.new
        unchanged: list[str] = []
        if new is not None:
            if UNCHANGED in new:  # TOASTed values the update left alone: not sent
                row_columns = tuple(i for i, v in enumerate(new) if v != UNCHANGED)
                unchanged = [self.sent[i].name for i, v in enumerate(new) if v == UNCHANGED]
                new = tuple(new[i] for i in row_columns)
            else:
                row_columns = self.all_columns
        prefix = _line_head(change.kind, lsn, xid, n)
        self.pending.append((prefix, key_columns, key, row_columns, new, unchanged))

    def _encoder(self, columns: tuple[int, ...]) -> ChangeRowEncoder:
        encoder = self.encoders.get(columns)
        if encoder is None:
            subset = replace(self.table, columns=tuple(self.sent[i] for i in columns))
            encoder = self.encoders[columns] = ChangeRowEncoder(subset, self.types)
        return encoder

    async def lines(self, conn: asyncpg.Connection) -> bytes:
        """The pending changes as lines, in order; the pending list emptied."""
        pending, self.pending = self.pending, []
        groups: dict[tuple[int, ...], list[tuple[int, int, tuple[Value, ...]]]] = {}
        for i, (_, key_columns, key, row_columns, row, _) in enumerate(pending):
            if key_columns is not None and key is not None:
                groups.setdefault(key_columns, []).append((i, 0, key))
            if row_columns is not None and row is not None:
                groups.setdefault(row_columns, []).append((i, 1, row))
        encoded: dict[tuple[int, int], bytes] = {}
        for columns, members in groups.items():
            # (no UNCHANGED left in them: ``add`` took those out)
            rows = cast(list[tuple[bytes | None, ...]], [values for _, _, values in members])
            lines = await self._encoder(columns).encode(conn, rows)
            for (i, which, _), line in zip(members, lines, strict=True):
                encoded[i, which] = line
        out = [
            b'%s,"key":%s,"row":%s,"unchanged":%s}\n'
            % (
                prefix,
                encoded.get((i, 0), b"null"),
                encoded.get((i, 1), b"null"),
                orjson.dumps(unchanged) if unchanged else b"[]",
            )
            for i, (prefix, _, _, _, _, unchanged) in enumerate(pending)
        ]
        self.flushed = len(pending)
        return b"".join(out)


def _line_head(op: str, lsn: int, xid: int, n: int) -> bytes:
    return _line_start(op, lsn, xid) + b"%d" % n


@functools.lru_cache(maxsize=16)
def _line_start(op: str, lsn: int, xid: int) -> bytes:
    """A change line's first members but ``n``'s value: the same for every change of a
    kind in a transaction (formatting it anew was a tenth of an increment's Python)."""
    assert op in CHANGE_OPS
    return b'{"op":"%s","lsn":"%s","xid":%d,"n":' % (op.encode(), format_lsn(lsn).encode(), xid)


def _transaction_line(transaction: TransactionEnd) -> bytes:
    committed = _PG_EPOCH + timedelta(microseconds=transaction.commit_time)
    return (
        orjson.dumps(
            {
                "xid": transaction.xid,
                "lsn": format_lsn(transaction.commit_lsn),
                "end_lsn": format_lsn(transaction.end_lsn),
                "commit_time": utc_iso(committed),
                "changes": transaction.changes,
            }
        )
        + b"\n"
    )


def _definition_changed(qualified: str, parent: str) -> ChainBroken:
    return ChainBroken(
        f"{qualified}'s definition changed since {parent} (ALTER TABLE, or a table "
        "dropped and made again): its changes no longer fit the chain's rows",
        hint=NEW_FULL_HINT,
    )


def _not_in_chain(relation: Relation, parent: str) -> ChainBroken:
    qualified = f"{relation.schema}.{relation.name}"
    return ChainBroken(
        f"{qualified} has changes in the slot but is not in the chain of {parent} (added "
        "to the publication since?)",
        hint=NEW_FULL_HINT,
    )


async def _new_tables(
    conn: asyncpg.Connection, parent: Backup, publication: str, tables: list[Table]
) -> list[str]:
    """Tables (of the catalog's ``tables``) in the parent's schemas that the chain does
    not hold (made since its full backup, or left out of it); a table the publication has
    and the chain does not fails the increment."""
    held = {t.key for t in parent.tables}
    published = await conn.fetch(
        "SELECT schemaname, tablename FROM pg_catalog.pg_publication_tables WHERE pubname = $1",
        publication,
    )
    for row in published:
        key = (row["schemaname"], row["tablename"])
        if key not in held:
            raise ChainBroken(
                f"{key[0]}.{key[1]} is in publication {publication} but not in the "
                f"chain's backups: it was added since the full backup",
                hint=NEW_FULL_HINT,
            )
    schemas = {t.schema for t in parent.tables}
    return sorted(t.qualified for t in tables if t.schema in schemas and t.key not in held)
