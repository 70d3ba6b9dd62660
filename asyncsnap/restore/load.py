"""Restore's loads: a backup's rows into the target's tables, level by level, parents
before children (``load_rows``, by ``plan.RestorePlan``), and its large objects
(``load_large_objects``).

Each file goes to the server as ``COPY ... FROM STDIN``, converted from NDJSON by the
native converter (``encode.rowcodec``) in a worker thread while the previous block is
sent; a table whose columns the converter does not know goes through ``json_to_recordset``
instead, a block of lines as one ``json`` parameter; a line too long for either goes
through ``encode.bigrows``; a table whose column types changed since the dump goes
through a staging table first (``stage.Stage``).

Every table loads in one transaction (small ones, a run of them in one:
``plan.units``), while its files are hashed and counted: a file that does not match the
manifest rolls its table (its run) back and fails the run. A table split at
dump time loads over several connections, one transaction per file; a failure then
leaves the files already committed (the run fails and says so; rerun with --truncate), and
--single-transaction loads everything in one transaction instead. Order comes from
the *target's* foreign keys (the schema may have moved on since the dump); cycles and
self-references are planned explicitly (see ``plan.CyclePlan``) and reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import anyio
import anyio.to_thread
import asyncpg

from .. import _rows, largeobjects
from ..catalog import current_user, foreign_key_definitions, quote_ident, role_names, sql_name
from ..encode import bigrows
from ..encode.rowcodec import BINARY_HEADER, BINARY_TRAILER, LoadShape
from ..errors import (
    RestoreFailed,
    TargetNotEmpty,
    VerificationFailed,
    most_telling,
    some_names,
)
from ..events import (
    ChunkFinished,
    ChunkProgress,
    ChunkStarted,
    EventCallback,
    Notice,
)
from ..format import Backup
from ..plan import CyclePlan, TableKey
from ..session import Session
from ..storage.backup import DataFileReader
from .options import Mode
from .plan import RestorePlan, TableLoad, Unit, cast_target, connections_needed, units
from .replay import TableReplay
from .result import RestoredTable
from .stage import Stage
from .target import hold_empty

# NDJSON bytes read, checked and converted at a time: each block exists several times at
# once (the read, the converted COPY data, asyncpg's message, the socket's buffer, and the
# next block converted meanwhile), per connection. 512 KiB against 1 MiB (2026-12-05,
# whole restores of pgbench scale 50 and the 2 M-row mixed table, -j 2, 5 alternating
# pairs): wall 1.01 and 0.97 times, client CPU 0.92 and 0.96, peak RSS 56 against 59 MiB
# and 58 against 62; 256 KiB took 0.2 s more user CPU for 3 MiB less.
BATCH_BYTES = 512 << 10


async def loading_connection(session: Session) -> asyncpg.Connection:
    """A connection whose ``json`` parameters go out in binary format as the bytes given.

    json's binary form is its text, so a batch goes from the file to the server without a
    decode in Python or a ``convert_from(bytea)`` copy on the server (which also had to be
    validated again by ``json_in``): measured 5-9% less time per batch for pgbench rows
    (1 M rows in 126 one-MiB batches, alternating, 7 rounds: 1.55 s against 1.71 s).
    """
    conn = await session.connect()
    try:
        await conn.set_type_codec(
            "json", schema="pg_catalog", encoder=bytes, decoder=bytes, format="binary"
        )
    except BaseException:
        conn.terminate()
        raise
    return conn


async def load_rows(
    plan: RestorePlan,
    conn: asyncpg.Connection,
    session: Session,
    backup: Backup,
    emit: EventCallback,
    results: list[RestoredTable],
    *,
    jobs: int,
    mode: Mode,
    single: bool,
    replays: Mapping[TableKey, TableReplay] | None = None,
) -> None:
    """Load the plan's tables, level by level, adding each table (or file of a split
    table) to ``results`` as it is committed. With ``single``, everything on ``conn`` in
    the caller's transaction; else on up to ``jobs`` connections (``conn`` and more of
    ``session``), a transaction per unit. ``replays``: the tables whose chain's changes
    are replayed as they load (``replay``)."""
    replays = replays or {}
    if single:
        await _load_levels(
            plan, [conn], backup, emit, results, single=True, mode=mode, replays=replays
        )
        return
    size = connections_needed(plan, jobs)
    others = [await loading_connection(session) for _ in range(size - 1)]
    try:
        await _load_levels(
            plan,
            [conn, *others],
            backup,
            emit,
            results,
            single=False,
            mode=mode,
            replays=replays,
        )
    finally:
        for other in others:
            other.terminate()


async def _load_levels(
    plan: RestorePlan,
    conns: list[asyncpg.Connection],
    backup: Backup,
    emit: EventCallback,
    results: list[RestoredTable],
    *,
    single: bool,
    mode: Mode,
    replays: Mapping[TableKey, TableReplay],
) -> None:
    main = conns[0]
    loads = plan.loads
    if mode == "truncate" and loads:  # a backup may hold no table (only large objects)
        await _truncate(main, loads)
    if mode == "refuse" and single and loads:
        # One transaction loads everything: every table is held and checked up front.
        await hold_empty(main, loads)
    for level in plan.levels:
        level_units = units(
            plan, level, split_files=not single, checks=mode == "refuse" and not single
        )
        if single:
            for unit in level_units:
                results += await _load_unit(
                    main, unit, backup, emit, own_transaction=False, replays=replays
                )
            continue
        queue = iter(level_units)  # shared: each connection takes the next unit
        try:
            async with anyio.create_task_group() as tg:
                for conn in conns[: len(level_units)]:
                    tg.start_soon(_worker, conn, queue, results, backup, emit, replays)
        except BaseExceptionGroup as group:
            raise most_telling(group) from None


async def _truncate(conn: asyncpg.Connection, loads: list[TableLoad]) -> None:
    names = ", ".join(sql_name(ld.target.schema, ld.target.name) for ld in loads)
    try:
        await conn.execute(f"TRUNCATE ONLY {names}")
    except asyncpg.FeatureNotSupportedError as exc:
        raise RestoreFailed(
            f"cannot truncate: {exc}",
            hint="another table references one being restored; include it with -t or "
            "empty it yourself (asyncsnap never truncates tables you did not select)",
        ) from exc


async def _worker(
    conn: asyncpg.Connection,
    queue: Iterator[Unit],
    results: list[RestoredTable],
    backup: Backup,
    emit: EventCallback,
    replays: Mapping[TableKey, TableReplay],
) -> None:
    """Take units from the shared queue until it is empty."""
    for unit in queue:
        if unit.after is not None:
            # A later file of a split table: its table is checked by the first file's
            # transaction, whose lock its COPY then waits for.
            await unit.after.wait()
        results.extend(
            await _load_unit(conn, unit, backup, emit, own_transaction=True, replays=replays)
        )


async def _drop_cycle_constraints(
    conn: asyncpg.Connection, cycle: CyclePlan
) -> list[tuple[TableKey, str, str]]:
    """Drop a cycle's constraints, in the caller's transaction; return their definitions."""
    dropped = []
    for key, name in cycle.constraints:
        defs = await foreign_key_definitions(conn, sql_name(*key))
        await conn.execute(f"ALTER TABLE {sql_name(*key)} DROP CONSTRAINT {quote_ident(name)}")
        dropped.append((key, name, defs[name]))
    return dropped


async def _recreate_constraints(
    conn: asyncpg.Connection, dropped: list[tuple[TableKey, str, str]], emit: EventCallback
) -> None:
    """Add a cycle's constraints back, in the caller's transaction, each checked on its
    own: a failed ADD CONSTRAINT aborts the transaction, so each runs in a savepoint and
    the error names only the constraints the rows really violate (after the first
    failure, every later one used to fail with "current transaction is aborted").

    :raises RestoreFailed: naming each constraint that could not be added and why.
    """
    failures = []
    for key, name, definition in dropped:
        statement = f"ALTER TABLE {sql_name(*key)} ADD CONSTRAINT {quote_ident(name)} {definition}"
        try:
            async with conn.transaction():  # a savepoint: the caller's transaction goes on
                await conn.execute(statement)
            emit(Notice(f"re-created and validated constraint {name} on {key[0]}.{key[1]}"))
        except asyncpg.PostgresError as exc:
            failures.append(f"{statement}; -- {exc}")
    if failures:
        raise RestoreFailed(
            "could not re-create foreign keys dropped for a cycle: " + " | ".join(failures),
            hint="the data violates them; fix it and run the statements shown",
        )


async def _load_unit(
    conn: asyncpg.Connection,
    unit: Unit,
    backup: Backup,
    emit: EventCallback,
    *,
    own_transaction: bool,
    before_commit: Callable[[], None] | None = None,
    replays: Mapping[TableKey, TableReplay] | None = None,
) -> list[RestoredTable]:
    """Load a unit in one transaction. Everything it changes besides rows (a cycle's
    constraints dropped and re-created, triggers and rules switched off and back) is
    DDL in that same transaction: a failure or a SIGKILL at any moment rolls all of it
    back, and nothing stays dropped or switched off. ``before_commit`` runs last inside
    the transaction; raising there rolls the unit back (a cluster's cancelled task)."""
    strategy = unit.cycle.strategy if unit.cycle is not None else None
    async with _transaction(conn, own=own_transaction):
        if unit.checks:
            await hold_empty(conn, unit.loads)
            if unit.checked is not None:
                unit.checked.set()
        dropped: list[tuple[TableKey, str, str]] = []
        if strategy == "defer":
            assert unit.cycle is not None
            names = ", ".join(
                f"{quote_ident(key[0])}.{quote_ident(name)}" for key, name in unit.cycle.constraints
            )
            await conn.execute(f"SET CONSTRAINTS {names} DEFERRED")
        elif strategy == "drop-and-recreate":
            assert unit.cycle is not None
            dropped = await _drop_cycle_constraints(conn, unit.cycle)
        results = []
        all_off = strategy == "disable-triggers"
        for load in unit.loads:
            target = sql_name(load.target.schema, load.target.name)
            # With --disable-triggers a cycle's tables have every trigger off (foreign-key
            # checks too); rules are never triggers and are switched one by one.
            own = [sw for sw in load.switches if not (all_off and sw.kind == "trigger")]
            if all_off:
                await conn.execute(f"ALTER TABLE {target} DISABLE TRIGGER ALL")
            for switch in own:
                if switch.state != "D":
                    await conn.execute(switch.off(target))
            together = [] if unit.cycle is not None else unit.loads  # a run's tables
            replay = replays.get(load.source.key) if replays else None
            results.append(
                await _load_table(
                    conn, load, backup, emit, unit.file_index, together=together, replay=replay
                )
            )
            if all_off:
                await conn.execute(f"ALTER TABLE {target} ENABLE TRIGGER ALL")
                # ENABLE ALL also turned on disabled triggers and made ALWAYS and REPLICA
                # ones ORIGIN: each user trigger goes back to its own state.
                for switch in load.switches:
                    if switch.kind == "trigger" and switch.state != "O":
                        await conn.execute(switch.back(target))
            for switch in own:
                if switch.state != "D":
                    await conn.execute(switch.back(target))
        if dropped:
            await _recreate_constraints(conn, dropped, emit)
        if before_commit is not None:
            before_commit()
    return results


@contextlib.asynccontextmanager
async def _transaction(conn: asyncpg.Connection, *, own: bool) -> AsyncIterator[None]:
    """A transaction of its own on ``conn`` (``own``), or none: the caller's, with
    --single-transaction. The rollback is shielded, so a cancelled restore still leaves
    nothing half-loaded, and skipped when the connection is already gone."""
    if not own:
        yield
        return
    tx = conn.transaction()
    await tx.start()
    try:
        yield
    except BaseException:
        with anyio.CancelScope(shield=True):
            if not conn.is_closed():
                await tx.rollback()
        raise
    # Awaited to its end even when the restore is being cancelled (another unit failed,
    # a signal): a COMMIT once sent completes on the server whether or not anyone waits
    # (a deferred constraint's checks can make it last seconds), and a unit committed
    # after its restore stopped waiting would be missing from what the failure says was
    # committed. Its table is then counted; the cancellation comes right after.
    with anyio.CancelScope(shield=True):
        await tx.commit()


def file_label(load: TableLoad, file_index: int) -> str:
    """How one file of a split table is named in events and messages: ``schema.table
    [2/12]``."""
    return f"{load.source.qualified} [{file_index + 1}/{len(load.source.files)}]"


async def _load_table(
    conn: asyncpg.Connection,
    load: TableLoad,
    backup: Backup,
    emit: EventCallback,
    file_index: int | None = None,
    *,
    together: Sequence[TableLoad] = (),
    replay: TableReplay | None = None,
) -> RestoredTable:
    """Load a table's files (or only file ``file_index``) on ``conn``, in its transaction;
    ``together``: the tables that share it (a run of small tables), which a failure here
    rolls back too. ``replay``: its chain's changes, replayed on the lines they name
    (those lines are set aside as the files load; after its last file, what they become
    is loaded in that file's transaction)."""
    files = load.source.files
    label = load.source.qualified
    if file_index is not None:
        files = (files[file_index],)
        label = file_label(load, file_index)
    others = [ld.source.qualified for ld in together if ld is not load]
    rolled_back = f"{label} was rolled back" + (
        f", and with it the tables of its transaction, none of them loaded: {some_names(others)}"
        if others
        else ""
    )
    emit(ChunkStarted(label=label, est_rows=sum(f.rows for f in files), verb="loading"))
    started = time.monotonic()
    # Where the types are the backup's, the rows go straight in; else through a stage.
    stage = Stage(load) if load.retyped else None
    into = stage.staged if stage is not None else load
    shape = LoadShape.of(into.source, into.target, into.columns)
    progress = _Progress(label, emit)
    if replay is not None:
        assert stage is None and shape is not None  # as ``replay.plan_replays`` chose
    for entry in files:
        reader = DataFileReader(backup, entry, block_size=BATCH_BYTES)
        checked = False  # the file matched the manifest (a staged table: before the INSERT)
        try:
            if stage is not None:
                await stage.create(conn)
            if shape is not None:
                keep = replay.part if replay is not None else None
                await _copy_file(conn, into, shape, reader, progress, keep)
            else:
                await _insert_file(conn, into, reader, progress)
            if stage is not None:
                # the file is whole before its values are judged
                await anyio.to_thread.run_sync(reader.finish)
                checked = True
                await stage.check_and_move(conn, entry, reader.rows)
        except (asyncpg.PostgresError, ValueError) as exc:
            if not checked:
                await anyio.to_thread.run_sync(reader.drain)
            if not checked and reader.damaged():
                raise VerificationFailed(
                    f"{entry.path} does not match its SHA-256 in the manifest",
                    hint=f"the backup is damaged; {rolled_back}",
                ) from exc
            if isinstance(exc, ValueError):  # the converter: a line not as the format says
                raise RestoreFailed(
                    f"loading {label}: {entry.path}, {exc}",
                    hint=f"the file is not what docs/format.md describes; {rolled_back}",
                ) from exc
            raise RestoreFailed(
                f"loading {label} from {entry.path}: {exc}{_suspects(load, exc)}",
                hint=getattr(exc, "hint", None) or rolled_back,
            ) from exc
        finally:
            reader.close()
        # size, SHA-256 and rows; raising rolls the table back
        await anyio.to_thread.run_sync(reader.finish)
        if replay is not None and replay.file_loaded():
            assert shape is not None
            replayed = await anyio.to_thread.run_sync(replay.replay)
            try:
                await _copy_file(conn, into, shape, _Lines(replayed), progress)
            except (asyncpg.PostgresError, ValueError) as exc:
                raise RestoreFailed(
                    f"loading {label}: its rows as its chain's changes leave them: {exc}",
                    hint=getattr(exc, "hint", None) or rolled_back,
                ) from exc
    rows, raw = progress.rows, progress.bytes
    seconds = time.monotonic() - started
    emit(
        ChunkFinished(
            label=label, rows=rows, bytes=raw, stored_bytes=0, seconds=seconds, verb="loaded"
        )
    )
    return RestoredTable(
        schema=load.target.schema,
        name=load.target.name,
        rows=rows,
        seconds=seconds,
        bytes=raw,
        files=len(files),
    )


# Errors of a value that does not fit its column: the server does not say which column.
_DOES_NOT_FIT = (
    asyncpg.StringDataRightTruncationError,
    asyncpg.NumericValueOutOfRangeError,
    asyncpg.DatetimeFieldOverflowError,
    asyncpg.InvalidTextRepresentationError,
    asyncpg.InvalidDatetimeFormatError,
)


def _suspects(load: TableLoad, exc: BaseException) -> str:
    """For a value that does not fit: the columns whose target type differs from the
    backup's, which are where it can come from (as COPY's CONTEXT would name one)."""
    if not isinstance(exc, _DOES_NOT_FIT):
        return ""
    target = {c.name: c.type for c in load.target.columns}
    differ = [
        f"{c.name} ({c.type} in the backup, {target[c.name]} here)"
        for c in load.source.columns
        if c.name in load.columns and target.get(c.name) != c.type
    ]
    return f"; columns whose type changed: {', '.join(differ)}" if differ else ""


# A line longer than this is loaded on its own through a staging table (``bigrows``):
# one json parameter cannot exceed 1 GiB, and staging holds fewer copies of the row.
LONG_LINE = 256 << 20


@dataclass
class _Progress:
    """Rows and bytes loaded so far for one table (or file of one), reported as they go."""

    label: str
    emit: EventCallback
    rows: int = 0
    bytes: int = 0

    def add(self, rows: int, raw: int) -> None:
        self.rows += rows
        self.bytes += raw
        self.emit(ChunkProgress(label=self.label, rows=self.rows, bytes=self.bytes))


@dataclass(frozen=True)
class _Segment:
    """A piece of a data file on its way to the server: COPY text converted from a block of
    lines, or one line too long for that (``long``), loaded through ``bigrows``."""

    copy: bytes = b""
    rows: int = 0
    raw: int = 0
    long: memoryview | None = None


def _segments(block: bytes | bytearray, shape: LoadShape, first_line: int) -> list[_Segment]:
    """A block of whole NDJSON lines, the first of them line ``first_line`` of its file, as
    segments (in a worker thread: the converter releases the GIL, so reading, checking and
    converting overlap the COPY)."""
    encode = shape.encode if shape.binary is None else shape.encode_binary
    if len(block) <= LONG_LINE:
        out, rows = encode(block, first_line)
        return [_Segment(copy=out, rows=rows, raw=len(block))]
    view = memoryview(block)
    segments = []
    start = run_start = 0
    line = run_line = first_line
    while start < len(block):
        end = block.index(b"\n", start) + 1
        if end - start > LONG_LINE:
            if run_start < start:
                run = bytes(view[run_start:start])
                out, rows = encode(run, run_line)
                segments.append(_Segment(copy=out, rows=rows, raw=len(run)))
            segments.append(_Segment(rows=1, raw=end - start, long=view[start : end - 1]))
            run_start, run_line = end, line + 1
        start, line = end, line + 1
    if run_start < len(block):
        run = bytes(view[run_start:])
        out, rows = encode(run, run_line)
        segments.append(_Segment(copy=out, rows=rows, raw=len(run)))
    return segments


class _Lines:
    """Lines made here (a table's rows as its chain's changes leave them), blocks of whole
    lines given as a file's reader gives them."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self._blocks = blocks
        self.rows = 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> bytes:
        block = next(self._blocks)
        self.rows += _rows.count_lines(block)
        return block


async def _converted(
    reader: DataFileReader | _Lines,
    shape: LoadShape,
    keep: Callable[[bytes | bytearray], bytes | bytearray] | None = None,
) -> AsyncGenerator[_Segment, None]:
    """A file's segments in order (``reader``: opened by ``iter()``): the next block is
    read, checked and converted in a worker thread while the caller sends this one.
    ``keep``: the lines of a block to load (a chain's restore sets some aside)."""
    loop = asyncio.get_running_loop()

    def produce() -> list[_Segment] | None:
        first_line = reader.rows + 1  # the reader counts the lines of each block it gives
        block = next(reader, None)
        if block is None:
            return None
        if keep is None:
            return _segments(block, shape, first_line)
        kept = keep(block)
        try:
            return _segments(kept, shape, first_line) if kept else []
        except ValueError:
            # said as the whole block's lines are numbered (the same line fails there)
            _segments(block, shape, first_line)
            raise

    ahead = loop.run_in_executor(None, produce)
    try:
        while True:
            # Shielded: a cancelled wait leaves ``ahead`` to finish with its thread,
            # which the clean-up below then waits for (a cancelled future does not
            # stop the thread, which went on reading the file being closed).
            segments = await asyncio.shield(ahead)
            if segments is None:
                return
            ahead = loop.run_in_executor(None, produce)
            for segment in segments:
                yield segment
    finally:
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await ahead  # its thread reads the file this function's caller closes


async def _copy_file(
    conn: asyncpg.Connection,
    load: TableLoad,
    shape: LoadShape,
    reader: DataFileReader | _Lines,
    progress: _Progress,
    keep: Callable[[bytes | bytearray], bytes | bytearray] | None = None,
) -> None:
    """Load one file with ``COPY ... FROM STDIN`` (text), converted by ``rowcodec``: the
    next block is read, checked and converted in a worker thread while this one is sent.
    A line longer than ``LONG_LINE`` ends the COPY, goes through ``bigrows``, and a new
    COPY takes the lines after it. ``keep``: as ``_converted``'s."""
    opened = reader.__iter__()  # a file's reader opens its file here
    source = _converted(opened, shape, keep)
    waiting: _Segment | None = None  # a segment that ended the previous COPY
    finished = False
    try:
        while not finished:
            segment = waiting or await anext(source, None)
            waiting = None
            if segment is None:
                break
            if segment.long is not None:
                await _load_long_line(conn, load, segment.long)
                progress.add(1, segment.raw)
                continue
            sent = 0

            async def copy_data(current: _Segment | None) -> AsyncIterator[bytes]:
                nonlocal waiting, finished, sent
                if shape.binary is not None:
                    yield BINARY_HEADER
                while current is not None:
                    if current.long is not None:
                        waiting = current
                        break
                    yield current.copy
                    sent += current.rows
                    progress.add(current.rows, current.raw)
                    current = await anext(source, None)
                else:
                    finished = True
                if shape.binary is not None:
                    yield BINARY_TRAILER

            status = await conn.copy_to_table(
                load.target.name,
                schema_name=load.target.schema,
                columns=list(shape.columns),
                source=copy_data(segment),
                format="binary" if shape.binary is not None else None,
            )
            if _copied(status) != sent:
                raise RestoreFailed(
                    f"loading {load.source.qualified}: the server took {_copied(status)} rows "
                    f"of {sent}",
                    hint="please report this as a bug; the table was rolled back",
                )
    finally:
        await source.aclose()


async def _load_long_line(conn: asyncpg.Connection, load: TableLoad, line: memoryview) -> None:
    await bigrows.load_row(
        conn,
        line=line,
        target=sql_name(load.target.schema, load.target.name),
        columns=load.columns,
        text_columns=load.text_columns,
        types={c.name: c.type for c in load.target.columns},
        bare_types={c.name: cast_target(c.bare_type or c.type) for c in load.target.columns},
        overriding=load.overriding,
    )


def _copied(status: str) -> int:
    word, _, count = status.partition(" ")
    return int(count) if word == "COPY" and count.isdigit() else -1


async def _insert_file(
    conn: asyncpg.Connection, load: TableLoad, reader: DataFileReader, progress: _Progress
) -> None:
    """Load one file through ``json_to_recordset`` in blocks: for a table whose columns
    the converter does not know (``LoadShape.of`` gave None)."""
    sql = load.insert_sql()
    blocks = iter(reader)
    while True:
        block = await anyio.to_thread.run_sync(next, blocks, None)
        if block is None:
            break
        await _load_block(conn, load, sql, block)
        progress.add(_rows.count_lines(block), len(block))
        del block


async def _load_block(
    conn: asyncpg.Connection, load: TableLoad, sql: str, block: bytes | bytearray
) -> None:
    """Insert a block of lines: as one JSON array, or, when it holds a long line, the
    long lines one by one and the runs of short lines between them as arrays."""
    if len(block) <= LONG_LINE:
        await conn.execute(sql, _json_array(block, _rows.count_lines(block)))
        return
    view = memoryview(block)
    start = run_start = 0
    while start < len(block):
        end = block.index(b"\n", start) + 1
        if end - start > LONG_LINE:
            if run_start < start:
                run = view[run_start:start]
                await conn.execute(sql, _json_array(run, _rows.count_lines(run)))
            await _load_long_line(conn, load, view[start : end - 1])
            run_start = end
        start = end
    if run_start < len(block):
        run = view[run_start:]
        await conn.execute(sql, _json_array(run, _rows.count_lines(run)))


def _json_array(block: bytes | bytearray | memoryview, lines: int) -> bytes:
    """NDJSON lines as one JSON array: ``[line,line,...]``. A block of one line (a row of
    hundreds of MB) costs one copy; others two (newlines to commas, then the brackets)."""
    if lines == 1:
        return b"".join((b"[", memoryview(block)[:-1], b"]"))
    body = (bytes(block) if isinstance(block, memoryview) else block).replace(b"\n", b",")
    return b"".join((b"[", memoryview(body)[:-1], b"]"))


async def load_large_objects(
    conn: asyncpg.Connection,
    plan: RestorePlan,
    backup: Backup,
    emit: EventCallback,
    *,
    mode: Mode,
    single: bool,
) -> int:
    """The backup's large objects the plan takes, in a transaction of their own (or,
    ``single``, the caller's); how many."""
    if not plan.large_objects:
        return 0
    assert backup.large_objects is not None
    async with _transaction(conn, own=not single):
        return await _load_large_objects(
            conn, backup, emit, replace=mode == "truncate" or plan.replace_large_objects
        )


# Lines of large-object files sent per round of statements (bounded by bytes too).
_LO_BATCH_LINES = 512
_LO_BATCH_BYTES = 8 << 20


async def _load_large_objects(
    conn: asyncpg.Connection, backup: Backup, emit: EventCallback, *, replace: bool
) -> int:
    """Create every large object of the backup with its OID, bytes, owner and privileges,
    in the caller's transaction. An OID that already exists is refused, or with
    ``replace`` replaced (only those the backup holds); memory is one batch of lines."""
    assert backup.large_objects is not None
    roles = await role_names(conn)
    current = await current_user(conn)
    label = "large objects"
    emit(ChunkStarted(label=label, est_rows=backup.large_objects.objects, verb="loading"))
    started = time.monotonic()
    objects = 0
    problems: list[str] = []

    async def flush(lines: list[largeobjects.LargeObjectLine]) -> None:
        nonlocal objects
        firsts = [ln for ln in lines if ln.offset == 0]
        taken = await largeobjects.existing_large_objects(conn, [ln.oid for ln in firsts])
        if taken and not replace:
            raise TargetNotEmpty(
                f"the target already has large objects {some_names([str(o) for o in taken])}",
                hint="pass --truncate to replace the ones the backup holds",
            )
        if taken:
            await largeobjects.unlink(conn, taken)
        await largeobjects.write_pieces(conn, lines)
        for line in firsts:
            if line.owner != current or line.acl is not None:
                problems.extend(
                    f"large object {line.oid}: {p}"
                    for p in await largeobjects.set_owner_and_privileges(conn, line, roles)
                )
        objects += len(firsts)
        emit(ChunkProgress(label=label, rows=objects, bytes=0))

    for entry in backup.large_objects.files:
        reader = DataFileReader(backup, entry, block_size=BATCH_BYTES)
        batch: list[largeobjects.LargeObjectLine] = []
        size = 0
        blocks = iter(reader)
        try:
            # Reading, decompressing, hashing (and decrypting) a block runs in a thread:
            # the event loop only sends the pieces.
            while (block := await anyio.to_thread.run_sync(next, blocks, None)) is not None:
                for raw in block.splitlines():
                    try:
                        line = largeobjects.parse_line(raw)
                    except ValueError as exc:
                        raise VerificationFailed(
                            f"{entry.path} has a line that is not a large-object piece: {exc}",
                            hint="the backup is damaged; no large object was kept",
                        ) from exc
                    batch.append(line)
                    size += len(line.data)
                    if len(batch) >= _LO_BATCH_LINES or size >= _LO_BATCH_BYTES:
                        await flush(batch)
                        batch, size = [], 0
            if batch:
                await flush(batch)
        finally:
            reader.close()
        await anyio.to_thread.run_sync(reader.finish)
    for problem in problems[:5]:
        emit(Notice(problem))
    if len(problems) > 5:
        emit(Notice(f"... and {len(problems) - 5} more owner or privilege problems"))
    emit(
        ChunkFinished(
            label=label,
            rows=objects,
            bytes=0,
            stored_bytes=0,
            seconds=time.monotonic() - started,
            verb="loaded",
        )
    )
    return objects
