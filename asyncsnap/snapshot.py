"""One moment in time for the whole dump.

The coordinator opens a REPEATABLE READ, READ ONLY transaction, exports its snapshot,
reads the catalog in it and takes ACCESS SHARE locks on the selected tables (as pg_dump
does, so nobody can drop or rewrite them mid-dump). It stays open, idle in transaction,
until every file is written: the exported snapshot only exists while that transaction
does. ``idle_in_transaction_session_timeout`` is set to 0 on its session for that reason.

Each worker transaction imports the snapshot with ``SET TRANSACTION SNAPSHOT`` as its
first statement; asyncpg's pool ``setup``/``init`` hooks run outside the transaction,
so they are the wrong place for it.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import TypeVar

import anyio
import asyncpg
import asyncpg.transaction

from .batches import batched
from .catalog import Table, describe_change, read_signatures, sql_name
from .errors import DumpFailed, LockTimeout, PermissionDenied, SnapshotLost, some_names
from .events import EventCallback, Notice
from .session import HEALTH_CHECK_TIMEOUT

# A table whose definition or storage changed between the snapshot and its lock (a
# migration that held the table when the dump started) makes the dump start over on a
# new snapshot, at most this many snapshots in all.
SNAPSHOT_ATTEMPTS = 3

Planned = TypeVar("Planned")

# pg_export_snapshot() returns e.g. 00000003-0000001B-1; checked before we put it in SQL.
_SNAPSHOT_ID = re.compile(r"[0-9A-F]+-[0-9A-F]+(-[0-9]+)?")


# Tables locked by one LOCK statement: one round trip per this many instead of per table
# (pg_dump 18 batches its locks too).
LOCK_BATCH = 100


async def lock_together(conn: asyncpg.Connection, tables: Sequence[Table], *, nowait: bool) -> bool:
    """ACCESS SHARE on ``tables`` in one statement, inside a savepoint; False, with the
    statement taken back (the transaction goes on), when any of them failed: the caller
    then locks each alone, so that an error names its table."""
    names = ", ".join(f"ONLY {sql_name(t.schema, t.name)}" for t in tables)
    mode = "ACCESS SHARE MODE NOWAIT" if nowait else "ACCESS SHARE MODE"
    try:
        await conn.execute(
            f"SAVEPOINT asyncsnap_lock; LOCK TABLE {names} IN {mode}; RELEASE asyncsnap_lock"
        )
    except asyncpg.PostgresError:
        await conn.execute("ROLLBACK TO SAVEPOINT asyncsnap_lock; RELEASE asyncsnap_lock")
        return False
    return True


class Coordinator:
    """The connection that holds the exported snapshot (see the module docstring)."""

    def __init__(self, conn: asyncpg.Connection, snapshot_id: str, taken_at: datetime) -> None:
        self.conn = conn
        self.snapshot_id = snapshot_id
        self.taken_at = taken_at
        self.began = time.monotonic()  # for "snapshot held for N s"

    @classmethod
    async def begin(cls, conn: asyncpg.Connection, *, imported: str | None = None) -> Coordinator:
        """Start the snapshot transaction on ``conn`` and export it; with ``imported``, in
        that snapshot (a replication slot's start, exported by the connection that created
        the slot): exported again, the workers import it from this transaction, which
        outlives the slot's connection."""
        await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        if imported is not None:
            if not _SNAPSHOT_ID.fullmatch(imported):
                raise DumpFailed(f"unexpected snapshot identifier {imported!r} from the server")
            await conn.execute(f"SET TRANSACTION SNAPSHOT '{imported}'")
        row = await conn.fetchrow(
            "SELECT pg_catalog.pg_export_snapshot() AS id, pg_catalog.now() AS taken_at"
        )
        assert row is not None
        snapshot_id = row["id"]
        if not _SNAPSHOT_ID.fullmatch(snapshot_id):
            raise DumpFailed(f"unexpected snapshot identifier {snapshot_id!r} from the server")
        return cls(conn, snapshot_id, row["taken_at"])

    async def lock(self, tables: Sequence[Table], *, lock_timeout: float) -> None:
        """ACCESS SHARE on every table, ``LOCK_BATCH`` tables a statement (one round trip
        each, in a savepoint); when a batch fails, one at a time, so that the failure
        names its table (a lock that timed out is then waited for once more).

        ``lock_timeout`` (seconds, 0 = wait forever) bounds the wait for each lock, e.g. behind
        a migration's ACCESS EXCLUSIVE.
        """
        await self.conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout * 1000)}")
        for batch in batched(tables, LOCK_BATCH):
            if not await lock_together(self.conn, batch, nowait=False):
                await self._lock_each(batch, lock_timeout)
        # Later statements in this transaction must not inherit the timeout.
        await self.conn.execute("SET LOCAL lock_timeout = 0")

    async def _lock_each(self, tables: Sequence[Table], lock_timeout: float) -> None:
        for table in tables:
            try:
                await self.conn.execute(
                    f"LOCK TABLE ONLY {sql_name(table.schema, table.name)} IN ACCESS SHARE MODE"
                )
            except asyncpg.LockNotAvailableError as exc:
                raise LockTimeout(
                    f"could not lock table {table.qualified} within {lock_timeout:g}s",
                    hint="another session holds a conflicting lock (a migration?); "
                    "retry later or raise --lock-timeout",
                ) from exc
            except asyncpg.InsufficientPrivilegeError as exc:
                raise PermissionDenied(
                    f"permission denied for table {table.qualified}",
                    hint="GRANT SELECT on it to this role, or leave it out with -T",
                ) from exc
            except asyncpg.UndefinedTableError as exc:
                raise DumpFailed(
                    f"table {table.qualified} was dropped while the dump started",
                    hint="run the dump again",
                ) from exc

    async def ensure_alive(self) -> None:
        """Raise ``SnapshotLost`` unless the snapshot transaction is still open.

        Bounded by ``HEALTH_CHECK_TIMEOUT``: a network that went silent fails the check
        instead of hanging the dump.
        """
        try:
            await self.conn.fetchval("SELECT 1", timeout=HEALTH_CHECK_TIMEOUT)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise snapshot_lost() from exc


def snapshot_lost() -> SnapshotLost:
    return SnapshotLost(
        "the connection holding the dump's snapshot was lost; the data could no longer be "
        "read at one moment",
        hint="nothing was kept; check the server log (terminated backend? restart?) and "
        "run the dump again",
    )


@asynccontextmanager
async def snapshot_transaction(conn: asyncpg.Connection, snapshot_id: str) -> AsyncIterator[None]:
    """A read-only transaction on ``conn`` that sees exactly the exported snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await _import(conn, snapshot_id)
        yield


async def _import(conn: asyncpg.Connection, snapshot_id: str) -> None:
    try:
        await conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot_id}'")
    except (asyncpg.InvalidParameterValueError, asyncpg.ObjectNotInPrerequisiteStateError) as e:
        # "invalid snapshot identifier": the exporting transaction has ended.
        raise snapshot_lost() from e


# How many chunks one worker transaction copies before it ends and the next begins: each
# chunk's LOCK holds its table until the transaction ends, and the server's lock table
# (max_locks_per_transaction x max_connections for all sessions) must not fill up with a
# worker's thousands of small tables.
CHUNKS_PER_TRANSACTION = 50


def locks_fit_together(*, tables: int, indexes: int, jobs: int, capacity: int) -> bool:
    """Whether the server's lock table (``capacity``: ``catalog.read_lock_capacity``) holds
    at once the snapshot's locks (every table), pg_dump's (every table again, and the
    indexes its catalog functions open) and the workers' (a table and an index for each
    chunk of an open transaction). When it does not, the dump takes the schema first and
    locks after pg_dump has ended (``dump._DumpRun.take_snapshot``): pg_dump alone
    needs as many locks as it does without asyncsnap. Estimated high on purpose: a wrong
    "no" costs the overlap of schema and data, a wrong "yes" fails the dump."""
    workers = jobs * CHUNKS_PER_TRANSACTION * 2
    return 2 * tables + indexes + workers <= capacity


class SnapshotReader:
    """A connection's read-only transaction in the snapshot, kept open from one chunk to
    the next for up to ``CHUNKS_PER_TRANSACTION`` chunks (pg_dump's workers import the
    snapshot once each): a small table pays its LOCK and its COPY, not also a BEGIN, a
    SET TRANSACTION SNAPSHOT and a COMMIT (measured: 3,000 tables of 20 rows, -j 2).
    The rows read are the same either way: every transaction sees the one snapshot, and
    it is read-only. A chunk that fails ends the transaction (it may be aborted); the
    next chunk begins a new one. ``end`` before the connection goes back to a pool."""

    def __init__(self, conn: asyncpg.Connection, snapshot_id: str) -> None:
        self.conn, self.snapshot_id = conn, snapshot_id
        self._tx: asyncpg.transaction.Transaction | None = None
        self._chunks = 0
        self._locked: set[tuple[str, str]] = set()  # by this transaction
        self._planned: list[Table] = []  # what this connection copies next (``plan``)
        self._plan_at: dict[tuple[str, str], int] = {}

    def plan(self, tables: Sequence[Table]) -> None:
        """The tables this connection copies next, in order: ``lock`` of the first takes
        the others with it, one statement for a worker's run of small tables."""
        self._planned = list(tables)
        self._plan_at = {(t.schema, t.name): i for i, t in enumerate(self._planned)}

    async def lock(self, table: Table) -> None:
        """ACCESS SHARE on ``table`` in this transaction, NOWAIT: pg_dump's guard (if
        someone queued an ACCESS EXCLUSIVE lock behind the coordinator's ACCESS SHARE,
        waiting here would deadlock undetected: we wait for them, they wait for the
        coordinator, which waits for us); ``asyncpg.LockNotAvailableError`` then.

        The planned tables after it that this transaction still copies are locked in the
        same statement (a round trip per table less: docs/benchmarks.md); if any of them
        fails, a savepoint takes the statement back and ``table`` is locked alone, so
        that a failure always names the table being copied."""
        key = (table.schema, table.name)
        if key in self._locked:
            return
        at = self._plan_at.get(key)
        if at is not None:
            room = max(0, CHUNKS_PER_TRANSACTION - self._chunks)  # the lock table's bound
            group = [table] + [
                t
                for t in self._planned[at + 1 : at + 1 + room]
                if (t.schema, t.name) not in self._locked
            ]
            if len(group) > 1:
                if await lock_together(self.conn, group, nowait=True):
                    self._locked.update((t.schema, t.name) for t in group)
                    return
                self.plan([])  # from here each table alone, its failure its own
        await self.conn.execute(
            f"LOCK TABLE ONLY {sql_name(table.schema, table.name)} IN ACCESS SHARE MODE NOWAIT"
        )
        self._locked.add(key)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """The open transaction in the snapshot (a new one when none is open or this one
        has read its share of chunks); ended if the block fails."""
        if self._tx is not None and self._chunks >= CHUNKS_PER_TRANSACTION:
            await self.end()
        if self._tx is None:
            self._tx = self.conn.transaction(isolation="repeatable_read", readonly=True)
            self._chunks = 0
            self._locked.clear()
            try:
                await self._tx.start()
                await _import(self.conn, self.snapshot_id)
            except BaseException:
                await self.end()
                raise
        self._chunks += 1
        try:
            yield
        except BaseException:
            await self.end()
            raise

    async def end(self) -> None:
        """Roll the open transaction back (it only read); a connection that is gone or
        broken is left to its owner, which terminates it."""
        tx, self._tx = self._tx, None
        self._locked.clear()
        if tx is None:
            return
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                if not self.conn.is_closed():
                    await tx.rollback()


async def until_unchanged(
    conn: asyncpg.Connection,
    plan: Callable[[], Awaitable[Planned]],
    changed: Callable[[Planned], Awaitable[list[str]]],
    emit: EventCallback,
) -> tuple[Planned, int]:
    """``plan`` in a new snapshot on ``conn`` (it begins one, reads the catalog and locks)
    until ``changed`` finds nothing changed between that snapshot and its locks; the plan
    and how many snapshots it took. After ``SNAPSHOT_ATTEMPTS`` snapshots, ``DumpFailed``.

    The snapshot then describes what the tables hold now: reading one that does not
    would write keys the manifest does not list, or lose rows.
    """
    for attempt in range(1, SNAPSHOT_ATTEMPTS + 1):
        planned = await plan()
        found = await changed(planned)
        if not found:
            return planned, attempt
        await conn.execute("ROLLBACK")
        listing = some_names(found, limit=3, sep="; ")
        if attempt == SNAPSHOT_ATTEMPTS:
            raise DumpFailed(
                f"tables kept changing between the snapshot and their lock: {listing}",
                hint="a migration is running; run the dump when it is done",
            )
        emit(
            Notice(
                f"changed between the snapshot and its lock: {listing}; starting "
                f"over on a new snapshot ({attempt + 1}/{SNAPSHOT_ATTEMPTS})"
            )
        )
    raise AssertionError("unreachable")


async def changed_since_snapshot(
    coordinator: asyncpg.Connection,
    present: AbstractAsyncContextManager[asyncpg.Connection],
    tables: Sequence[Table],
) -> list[str]:
    """The tables whose name, columns or storage differ between the snapshot and now.

    The locks are granted, so nothing can change them from here on; but a migration that
    held a table when the snapshot was taken may have renamed or added a column,
    truncated or rewritten it, and committed before our lock: the snapshot's catalog then
    no longer describes the rows a COPY would read. ``present`` is a connection outside
    any snapshot (one of the pool's).
    """
    oids = [t.oid for t in tables]
    before = await read_signatures(coordinator, oids)
    async with present as now:
        after = await read_signatures(now, oids)
    return [
        f"{sig.schema}.{sig.name} ({describe_change(sig, after.get(oid))})"
        for oid, sig in before.items()
        if after.get(oid) != sig
    ]
